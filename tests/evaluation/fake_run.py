"""A tiny evaluated run without training: registry entries base -> pretrain -> sft -> rl, each with the
``predictions.jsonl`` / ``metrics.json`` that ``evaluation.run`` writes (``write_results``, ``summarize``, the
default output folder ``default_out_dir``), RL TensorBoard reward scalars, real PNG images (some small enough to be
inlined), and optionally slide rows with a thumbnail and viewed regions. Used by the browser tests and
``benchmarks/browse_page.py``."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.metrics import summarize
from evaluation.run import default_out_dir, write_results
from stages.registry import Registry, home, logs_dir

CLASSES = ["tumor", "stroma", "normal", "lymphocytes"]
STAGES = ("base", "pretrain", "sft", "rl")
ACCURACY = {"base": 0.25, "pretrain": 0.45, "sft": 0.7, "rl": 0.8}
RL_CONFIG = {"algorithm": "dapo", "lr": 1e-4, "max_steps": 120, "rewards": ["format", "accuracy", "consistency"],
             "reward_weights": [0.1, 0.9, 0.5], "temperature": 0.5, "num_generations": 8}


def _images(folder: Path, n: int, seed: int, large_px: int = 256) -> list[str]:
    """``n`` PNGs: even ones 8x8 (a few hundred bytes: inlined), odd ones ``large_px`` square noise (256: ~160 KB,
    112 as the demo corpus: ~30 KB; copied)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        side = 8 if i % 2 == 0 else large_px
        tint = np.array([200, 120 + 20 * (i % 4), 180], dtype=np.uint8)
        pixels = (rng.integers(0, 60, (side, side, 3)) + tint - 30).clip(0, 255).astype(np.uint8)
        p = folder / f"patch{i:05d}.png"
        Image.fromarray(pixels).save(p)
        paths.append(str(p))
    return paths


def _prediction(rng: random.Random, gold: int, right: bool, stage: str) -> tuple[str, str]:
    said = gold if right else rng.choice([k for k in range(4) if k != gold])
    letter = "ABCD"[said]
    reasoning = (f"[{stage}] The patch shows {rng.choice(['dense', 'loose', 'scattered'])} nuclei with "
                 f"{rng.choice(['pink', 'purple', 'pale'])} stroma; this looks like {CLASSES[said]}.")
    return f"<think>{reasoning}</think><answer>{letter}</answer>", letter


def rows_for(stage: str, images: list[str], n: int, seed: int = 0, slides: int = 0, slide_thumb: str | None = None):
    """The prediction rows ``grade_rows`` would write for ``stage`` (a fixed share right, the rest wrong)."""
    rng = random.Random(f"{seed}-{stage}")
    rows = []
    for i in range(n):
        gold = i % 4
        right = rng.random() < ACCURACY[stage]
        text, letter = _prediction(rng, gold, right, stage)
        row = {"id": f"q{i:05d}", "subset": ["he", "ihc"][i % 2], "kind": "mcq",
               "question": f"Which tissue class does patch {i} show?", "options": CLASSES, "answer": "ABCD"[gold],
               "images": [images[i % len(images)]], "prediction": text, "extracted": letter, "correct": right,
               "score": float(right), "format_ok": True, "n_tokens": 20 + i % 7}
        if i < slides and slide_thumb:
            row["meta"] = {"slide": {"thumbnail": slide_thumb, "width": 40000, "height": 30000},
                           "regions": [[4000 + 1000 * i, 5000, 8000, 6000], {"x": 20000, "y": 12000, "w": 4000, "h": 3000}]}
        rows.append(row)
    return rows


def make_run(root: Path, n: int = 12, *, n_images: int | None = None, seed: int = 0, slides: int = 0,
             rewards: bool = True, large_px: int = 256) -> dict:
    """Write the run under ``$PATHOR1_HOME`` (images under ``root``); returns ``{stage: checkpoint folder}``."""
    images = _images(root / "images", n_images or n, seed, large_px)
    slide_thumb = None
    if slides:
        slide_thumb = str(root / "slide_thumb.png")
        Image.fromarray(np.full((300, 400, 3), (230, 190, 220), dtype=np.uint8)).save(slide_thumb)
    base = root / "tiny-base"
    base.mkdir(parents=True, exist_ok=True)
    reg = Registry()
    folders, parent = {"base": base}, str(base)
    for step, stage in enumerate(STAGES[1:], start=1):
        with reg.writer(stage, "demo", step, parent=parent, config=RL_CONFIG if stage == "rl" else
                        {"lr": 1e-3, "epochs": 3, "batch_size": 8}) as w:
            (w.path / "weights.txt").write_text(stage)
        folders[stage], parent = w.path, f"{stage}:demo"
    for stage, folder in folders.items():
        manifest = reg.manifest(folder) if stage != "base" else {}
        rows = rows_for(stage, images, n, seed, slides, slide_thumb)
        metrics = {"suite": "demo-mcq", "model": str(folder), "model_path": str(folder), "template": "cot",
                   "max_new_tokens": 64, "evaluated": f"2026-01-0{STAGES.index(stage) + 1}T00:00:00",
                   "checkpoint": {k: manifest.get(k) for k in ("stage", "run", "step", "parent", "created")},
                   "settings": {"n": n, "template": "cot", "decoding": {"greedy": {"max_new_tokens": 64}}},
                   **summarize(rows)}
        write_results(default_out_dir(Path(folder), manifest, "demo-mcq"), rows, metrics)
    if rewards:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(logs_dir("rl", "demo") / "runs" / "Jan01_00-00-00_host"))
        noise = random.Random(seed)
        for step in range(1, 41):
            tb.add_scalar("train/reward", 0.6 + 0.008 * step + noise.uniform(-0.08, 0.08), step)
            tb.add_scalar("train/rewards/accuracy_reward/mean", 0.4 + 0.01 * step + noise.uniform(-0.1, 0.1), step)
            tb.add_scalar("train/rewards/format_reward/mean", min(1.0, 0.8 + 0.005 * step), step)
        tb.close()
    assert home().is_dir()
    return folders


def add_rl_run(root: Path, run: str, n: int, *, seed: int) -> Path:
    """A second RL run from the fake run's SFT checkpoint (``rl:<run>``), evaluated on the same questions."""
    with Registry().writer("rl", run, 7, parent="sft:demo", config=RL_CONFIG) as w:
        (w.path / "weights.txt").write_text(run)
    evaluate_again(root, w.path, n, seed=seed, evaluated="2026-02-01T00:00:00")
    return w.path


def evaluate_again(root: Path, folder: Path, n: int, *, seed: int, evaluated: str, out: Path | None = None) -> None:
    """Another evaluation of the RL checkpoint ``folder`` (answers drawn with ``seed``); ``out`` puts it where a
    recipe would (``reports/<recipe>/<run>/eval/<name>``) instead of evaluation.run's default folder."""
    images = sorted(str(p) for p in (root / "images").glob("*.png"))
    rows = rows_for("rl", images, n, seed)
    manifest = Registry().manifest(folder)
    metrics = {"suite": "demo-mcq", "model": str(folder), "model_path": str(folder), "template": "cot",
               "max_new_tokens": 64, "evaluated": evaluated, "settings": {"n": n},
               "checkpoint": {k: manifest.get(k) for k in ("stage", "run", "step", "parent", "created")},
               **summarize(rows)}
    write_results(out or default_out_dir(folder, manifest, "demo-mcq"), rows, metrics)
