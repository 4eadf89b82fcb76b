"""Host memory per rank: DDP vs DeepSpeed ZeRO-3 loading whole vs ZeRO-3 loading partitioned (zero3_init_flag).

Three 2-rank gloo SFT jobs (one optimizer step each) on the same Qwen2.5-VL built from config, its language model
widened so the weights dominate (133 M parameters, 509 MiB in fp32, with the defaults): `accelerate launch` with the shipped CPU
DDP config, the shipped CPU ZeRO-3 config (`zero3_init_flag: false`: every rank loads the whole model, DeepSpeed
partitions it in the Trainer), and the same with `zero3_init_flag: true` (the model is built partitioned inside
`from_pretrained`: stages.distributed.model_loading). Each rank reports, through the `PATHOR1_PROBE_MEMORY` probe
of tests/reliability/launch.py, its peak resident memory right after loading and after the step. The last line
is one JSON object with the raw figures and "ratio" = DDP's peak after loading / ZeRO-3-init's (above 1: less
memory per rank).

    OMP_NUM_THREADS=1 python benchmarks/zero3_memory.py            # 133 M parameters
    OMP_NUM_THREADS=1 python benchmarks/zero3_memory.py --layers 16 # larger
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import stages  # noqa: E402,F401  (torchvision fix first)

CONFIGS = REPO / "recipes" / "configs" / "accelerate"


def parse(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/zero3_memory.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=1024, help="language model width")
    p.add_argument("--layers", type=int, default=12, help="language model layers")
    return p.parse_args(argv)


def build_model(work: Path, hidden: int, layers: int) -> tuple[Path, int]:
    """The tiny preset's folder (tokenizer, processor) with a wider, deeper language model, random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from stages.model import build_tiny

    tiny = build_tiny("qwen2_5_vl", work / "tiny")
    folder = work / "wide"
    shutil.copytree(tiny, folder)
    config = AutoConfig.from_pretrained(folder)
    # head_dim stays 32: the preset's rope sections (mrope_section) add up to half of it
    config.text_config.update(dict(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
                                   num_attention_heads=hidden // 32, num_key_value_heads=2,
                                   layer_types=["full_attention"] * layers, max_window_layers=layers))
    config.vision_config.out_hidden_size = hidden
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    for f in folder.glob("model*.safetensors*"):
        f.unlink()
    model.save_pretrained(folder)
    return folder, sum(p.numel() for p in model.parameters())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(name: str, config: Path, data: Path, model: Path, work: Path) -> dict:
    probe = work / f"memory-{name}"
    env = dict(os.environ, PYTHONPATH=str(REPO), PATHOR1_HOME=str(work / f"home-{name}"),
               PATHOR1_PROBE_MEMORY=str(probe), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2",
            "--main_process_port", str(free_port()), "-m", "tests.reliability.launch", "recipes.sft",
            f"data={data}", f"init={model}", "max_steps=1", "batch_size=1", "save_every=0", "run=memory"]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    ranks = {}
    for rank in (0, 1):
        lines = [json.loads(x) for x in (probe / f"memory-{rank}.jsonl").read_text().splitlines()]
        loaded, trained = lines[0], lines[-1]
        ranks[rank] = {"partitioned_at_load": loaded["partitioned"], "local_numel": loaded["local_numel"],
                       "peak_rss_after_load_mib": round(loaded["peak_rss_mib"]),
                       "peak_rss_mib": round(trained["peak_rss_mib"])}
    return ranks


def main(argv=None) -> int:
    a = parse(argv)
    from corpora.demo import build_demo

    work = Path(tempfile.mkdtemp(prefix="zero3_memory_"))
    model, n_params = build_model(work, a.hidden, a.layers)
    data = build_demo(work / "demo", n_train=8, n_eval=4, image_size=56).root
    zero3_init = work / "zero3_init.yaml"
    zero3_init.write_text((CONFIGS / "cpu_zero3.yaml").read_text().replace("zero3_init_flag: false",
                                                                        "zero3_init_flag: true"))
    results = {"ddp": run("ddp", CONFIGS / "cpu_ddp2.yaml", data, model, work),
               "zero3": run("zero3", CONFIGS / "cpu_zero3.yaml", data, model, work),
               "zero3_init": run("zero3_init", zero3_init, data, model, work)}
    for name, ranks in results.items():
        for rank, r in ranks.items():
            print(f"{name:10s} rank {rank}: peak RSS after loading {r['peak_rss_after_load_mib']} MiB, "
                  f"after one step {r['peak_rss_mib']} MiB (partitioned at load: {r['partitioned_at_load']})")
    worst = {name: max(r["peak_rss_after_load_mib"] for r in ranks.values()) for name, ranks in results.items()}
    print(json.dumps({"benchmark": "zero3_memory", "parameters": n_params,
                      "fp32_weights_mib": round(n_params * 4 / 2**20),
                      "ranks": results, "ratio": round(worst["ddp"] / worst["zero3_init"], 3)}))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
