"""CLIP training throughput: `python -m pathoclip.train` vs the plain open_clip_train CLI, one run.

Same tiny model config, same demo pairs (the CSV pathoclip writes, handed to both), same argv for the
training loop (batch, epochs, lr, seed, fp32, CPU). Both run as fresh subprocesses, so each pays interpreter
start and imports; ours additionally reads the corpus through corpora, runs the phase in a process of its own
(pathoclip.launch: a second interpreter start and torch / open_clip imports) and exports the result into the
registry (hf-hub layout). The baseline is `open_clip_train.main` started from `python -c` only because the
plain `-m` entry point cannot be told about a model config outside open_clip's own folder.
Runs alternate (baseline, ours, baseline, ...) to spread machine noise. Last line: one JSON object;
"speedup" = baseline seconds / our seconds (median over repeats).

    python benchmarks/clip_throughput.py --n-train 256 --epochs 2 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import stages.compat  # noqa: E402

stages.compat.install()

BOOT = ("import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
        "from open_clip_train.main import main; sys.exit(main(sys.argv[1:]) or 0)")


def parse(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/clip_throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=256, help="demo training pairs")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each side (alternating); a median of 3 resists one noisy run")
    return p.parse_args(argv)


def timed(cmd, env) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds


def loop_samples_per_s(tensorboard_dir: Path) -> float:
    """open_clip_train's own in-loop figure (mean over logged steps, first step excluded as warm-up)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    events.Reload()
    values = [e.value for e in events.Scalars("train/samples_per_second")][1:]
    return round(statistics.mean(values), 1) if values else float("nan")


def main(argv=None) -> dict:
    a = parse(argv)
    from corpora.demo import build_demo
    from stages.config import load_config

    from pathoclip.export import CONFIG_DIR
    from pathoclip.data import PreparedCorpus
    from pathoclip.train import CLIPTrainConfig, open_clip_argv

    tmp = Path(tempfile.mkdtemp(prefix="clip_bench_"))
    demo = build_demo(tmp / "demo", n_train=a.n_train, n_eval=4, image_size=56)
    common = [f"data={demo.pairs}", "subset_fraction=0", f"epochs_b={a.epochs}", f"batch_size={a.batch}",
              "logging_steps=1", "resume=never", "device=cpu"]
    cfg = load_config(CLIPTrainConfig, common)
    corpus = PreparedCorpus(demo.pairs, tmp / "baseline_data")
    n_pairs = len(corpus)
    data_args = corpus.open_clip_args("b", list(range(n_pairs)), "csv", cfg.shard_size, tmp / "baseline_data")
    env = {**os.environ, "PATHOR1_HOME": str(tmp / "home"), "HF_HUB_OFFLINE": "1"}
    samples = a.epochs * (n_pairs // a.batch) * a.batch  # CSV loader drops the last partial batch
    times = {"baseline": [], "ours": []}
    loop = {"baseline": [], "ours": []}
    for i in range(a.repeats):
        logs = tmp / "baseline_logs"
        argv = open_clip_argv(cfg, logs, f"run{i}", data_args, a.epochs, cfg.model, None)
        times["baseline"].append(timed([sys.executable, "-c", BOOT, str(CONFIG_DIR), *argv], env))
        loop["baseline"].append(loop_samples_per_s(logs / f"run{i}" / "tensorboard"))
        times["ours"].append(timed([sys.executable, "-m", "pathoclip.train", *common, f"run=bench{i}"], env))
        loop["ours"].append(loop_samples_per_s(tmp / "home" / "logs" / "pathoclip" / f"bench{i}" / "b" / "tensorboard"))
    baseline_s, ours_s = statistics.median(times["baseline"]), statistics.median(times["ours"])
    result = {
        "benchmark": "clip_throughput", "model": cfg.model, "pairs": n_pairs, "epochs": a.epochs,
        "batch": a.batch, "samples_trained": samples, "repeats": a.repeats,
        "baseline_seconds": [round(t, 2) for t in times["baseline"]], "ours_seconds": [round(t, 2) for t in times["ours"]],
        "baseline_samples_per_s": round(samples / baseline_s, 2), "ours_samples_per_s": round(samples / ours_s, 2),
        "baseline_loop_samples_per_s": loop["baseline"], "ours_loop_samples_per_s": loop["ours"],
        "speedup": round(baseline_s / ours_s, 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
