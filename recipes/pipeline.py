"""What the Patho-R1, MedVLM-R1 and Med-R1 recipes share: the corpus, the stage calls, the evaluation table.

Recipes are thin leaves: each step here is one call into corpora, stages, pathoclip or evaluation, wired by
registry paths (a stage's output folder is the next stage's ``init``).
"""
from __future__ import annotations

import copy
import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from corpora.demo import DEMO_IMAGE_SIZE, DEMO_N_EVAL, DEMO_N_TRAIN, demo_corpus
from corpora.files import write_text_atomic
from corpora.validate import validate
from evaluation.config import EvalConfig
from evaluation.generate import Decoding
from stages.config import to_dict
from stages.registry import home


@dataclass
class DemoCorpusConfig:
    n_train: int = field(default=DEMO_N_TRAIN, metadata={"help": "Training images of the built-in demo corpus."})
    n_eval: int = field(default=DEMO_N_EVAL, metadata={"help": "Held-out images (MCQ, yes/no, zero-shot, retrieval)."})
    image_size: int = field(default=DEMO_IMAGE_SIZE, metadata={"help": "Side of the demo images in pixels."})
    seed: int = field(default=0, metadata={"help": "Seed of the demo corpus."})


def recipe_eval(**overrides) -> EvalConfig:
    """The recipes' evaluation: evaluation's own EvalConfig (one class, one set of defaults), with the demo's CPU
    budget -- 96 new tokens hold the tiny models' <think>/<answer> replies and batch 32 keeps `make demo` in
    minutes -- and one template for every checkpoint, so stages are compared on the same prompt. The shipped GPU
    configs (recipes/configs/*.yaml) set their own decoding.max_new_tokens."""
    base = dict(batch_size=32, template="cot", decoding=Decoding(max_new_tokens=96))
    return EvalConfig(**{**base, **overrides})


def corpus_dir(data: str, demo: DemoCorpusConfig) -> Path:
    """``data`` if given, else the demo corpus for these sizes (built once, reused by later runs)."""
    if data:
        return Path(data)
    return demo_corpus(home(), demo.seed, n_train=demo.n_train, n_eval=demo.n_eval, image_size=demo.image_size).root


# The files of the demo layout the recipes train and evaluate on, with their record kinds.
CORPUS_FILES = (("pairs.jsonl", "pairs"), ("sft.jsonl", "sft"), ("rl.jsonl", "qa"), ("eval/mcq.jsonl", "qa"))


def validate_corpus(root: Path, slides=None) -> None:
    """Refuse bad data before any model is built: every stage's file, strict policy; slide records are tiled
    with ``slides`` (the stages' corpora.slides.SlideSampling, or a mapping file name -> the SlideSampling of the
    stage reading it: validation checks each slide yields that stage's slides.k tiles), so the stages then read the
    tile cache."""
    for name, kind in CORPUS_FILES:
        if (root / name).exists():
            settings = slides.get(name) if isinstance(slides, dict) else slides
            validate(root / name, kind, policy="strict", slides=settings).raise_if_errors()
            print(f"validated {root / name}")


def stage_config(cfg, *, run: str, data: Path, init: str, device: str = "auto"):
    """A copy of a stage config with the recipe's run name, data file and input model filled in, and the recipe's
    ``device`` where it names one (the stage process checks CUDA again under its own config)."""
    out = copy.deepcopy(cfg)
    out.run, out.init = run, init
    if device != "auto" and hasattr(out, "device"):
        out.device = device
    if not out.data:
        out.data = str(data)
    return out


def evaluate_checkpoints(checkpoints: dict[str, str], ev: EvalConfig, corpus: Path, out_dir: Path) -> dict:
    """Evaluate every named checkpoint on one suite with the same template; returns name -> summary."""
    from evaluation.run import evaluate

    data = ev.data or (str(corpus / "eval" / "mcq.jsonl") if ev.suite.startswith("demo") else "")
    table = {}
    for name, path in checkpoints.items():
        m = evaluate(path, ev.suite, data=data or None, out=out_dir / "eval" / name, **ev.evaluate_kwargs())
        o = m["overall"]
        table[name] = {"checkpoint": path, "mcq": {
            "suite": ev.suite, "accuracy": o["accuracy"], "n": o["n"], "correct": o["correct"], "ci95": o["ci95"],
            "format_rate": o["format_rate"], "mean_tokens": o["mean_tokens"],
            "by_subset": {k: v["accuracy"] for k, v in m["by_subset"].items()}}}
        print(f"eval {name:9s} accuracy {o['accuracy']:.3f}  95% CI [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}]  "
              f"n={o['n']}  format {o['format_rate']:.2f}")
    table["comparisons"] = compare_stages(list(checkpoints), out_dir / "eval")
    return table


def _correct_by_id(predictions: Path) -> dict[str, bool]:
    with open(predictions, encoding="utf-8") as f:
        return {row["id"]: bool(row["correct"]) for row in map(json.loads, f) if row}


def compare_stages(names: list[str], eval_dir: Path) -> dict:
    """Each stage against the one before it, on the same questions (paired 95% CI + McNemar p):
    ``{"sft_vs_pretrain": {...}, ...}``. This is the test of "each step by a margin the CI supports"."""
    from evaluation.metrics import paired_comparison

    out = {}
    for before, after in zip(names, names[1:]):
        c = paired_comparison(_correct_by_id(eval_dir / before / "predictions.jsonl"),
                              _correct_by_id(eval_dir / after / "predictions.jsonl"))
        out[f"{after}_vs_{before}"] = c
        lo, hi = c["ci95"]
        print(f"paired {after:>8s} - {before:<8s} {c['difference']:+.3f}  95% CI [{lo:+.3f}, {hi:+.3f}]  "
              f"fixed {c['fixed']} broken {c['broken']}  McNemar p={c['mcnemar_p']:.3g}"
              f"{'  (supported)' if c['supported'] else ''}")
    return out


def peak_memory_gib() -> float:
    """Peak resident memory of this process and its finished children (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 2**20


class Timer:
    def __init__(self):
        self.t0, self.marks = time.perf_counter(), {}

    def mark(self, name: str, since: float) -> float:
        self.marks[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self.t0, 1)


def write_metrics(out_dir: Path, metrics: dict, cfg) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, default=str))
    return write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2, default=str))


def subset_file(src: Path, name: str, *, keep=lambda row: True, limit: int | None = None) -> Path:
    """Write the rows of JSONL ``src`` that ``keep`` accepts (at most ``limit``) to ``name`` beside it.

    Beside it, so relative image paths resolve exactly as in ``src``. Written atomically; rewritten each run.
    """
    out = src.parent / name
    rows = []
    with open(src, encoding="utf-8") as f:
        for line in f:
            if line.strip() and keep(json.loads(line)):
                rows.append(line if line.endswith("\n") else line + "\n")
                if limit is not None and len(rows) >= limit:
                    break
    if not rows:
        raise ValueError(f"{src}: no rows left for {name}")
    return write_text_atomic(out, "".join(rows))
