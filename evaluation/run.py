"""Evaluate one checkpoint on one suite: ``python -m evaluation.run --model REF --suite NAME``.

REF is a registry reference (``rl:latest``, ``sft:<run>/<step>``) or any HF model folder. Writes
``predictions.jsonl``, ``metrics.json`` and ``summary.md`` to ``<checkpoint>/eval/<suite>/`` for our own
(manifest-carrying, writable) checkpoints, else to ``$PATHOR1_HOME/reports/<model>/<suite>/``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from evaluation.metrics import markdown_summary, summarize
from evaluation.suites import SUITES, load_suite

log = logging.getLogger("evaluation")
DEFAULT_TEMPLATE = "cot"


def resolve_model(model_ref: str | Path) -> tuple[Path, dict]:
    """(folder, manifest) for a registry ref, folder or hub id (``Registry.resolve_model``: then the "folder" is
    the id, which the Auto classes load); the manifest is {} for models we did not write."""
    from stages import registry

    path = Path(registry.Registry().resolve_model(str(model_ref)))
    manifest_file = path / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    return path, manifest


def pick_template(manifest: dict, template: str | None) -> str:
    trained_with = (manifest.get("extra") or {}).get("template")
    if template and trained_with and template != trained_with:
        log.warning("template %r overrides %r, the template this checkpoint was trained with", template, trained_with)
    return template or trained_with or DEFAULT_TEMPLATE


def default_out_dir(model_path: Path, manifest: dict, suite: str) -> Path:
    if manifest and os.access(model_path, os.W_OK):
        return model_path / "eval" / suite
    from stages import registry

    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model_path.name) or "model"
    return registry.home() / "reports" / name / suite


def load_callable(dotted: str) -> Callable:
    """``pkg.mod:func`` or ``pkg.mod.func`` -> the function (custom judges are given by dotted path)."""
    module, _, attr = dotted.partition(":") if ":" in dotted else dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot load callable {dotted!r}: {e}") from None


def grade_rows(samples: list[dict], completions, template: str, judge: Callable | None = None) -> list[dict]:
    """One prediction row per sample, graded by the shared corpora scorer (the RL reward uses it too).
    A judge ``judge(question, prediction, reference) -> float`` replaces token F1 for open questions."""
    from corpora.grading import grade

    rows = []
    for s, c in zip(samples, completions):
        g = grade(c.text, s["answer"], s["kind"], s.get("options") or (), template=template)
        score, correct = float(g.score), bool(g.correct)
        if judge is not None and s["kind"] == "open":
            score = float(judge(s["question"], g.extracted if g.extracted is not None else c.text, s["answer"]))
            correct = score >= 0.5
        rows.append({
            "id": s["id"], "subset": s.get("subset", ""), "kind": s["kind"], "question": s["question"],
            "options": list(s.get("options") or []), "answer": s["answer"], "images": list(s["images"]),
            "prediction": c.text, "extracted": g.extracted, "correct": correct, "score": score,
            "format_ok": g.format_ok, "n_tokens": c.n_tokens,
        })
    return rows


def write_results(out_dir: Path, rows: list[dict], metrics: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "predictions.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "summary.md").write_text(markdown_summary(metrics))


def evaluate(model_ref: str | Path, suite: str, data: str | Path | None = None, limit: int | None = None,
             batch_size: int = 8, *, template: str | None = None, max_new_tokens: int = 256,
             out: str | Path | None = None, judge: str | Callable | None = None, device: str | None = None,
             dtype: str = "auto", progress: bool = True, **suite_options) -> dict:
    """Evaluate ``model_ref`` on ``suite`` and return the metrics dict (also written to disk, see module doc).

    ``suite_options``: ``image_root``, ``split`` (pathmmu), ``subset_by`` (omnimed).
    """
    from evaluation.generate import generate, load_model

    samples = load_suite(suite, data, limit=limit, **suite_options)
    model_path, manifest = resolve_model(model_ref)
    template = pick_template(manifest, template)
    judge_fn = load_callable(judge) if isinstance(judge, str) else judge
    model, processor = load_model(model_path, device=device, dtype=dtype)
    t0 = time.perf_counter()
    completions = generate(model, processor, samples, template=template, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, progress=progress)
    seconds = time.perf_counter() - t0
    rows = grade_rows(samples, completions, template, judge_fn)
    out_dir = Path(out) if out else default_out_dir(model_path, manifest, suite)
    metrics = {
        "suite": suite, "model": str(model_ref), "model_path": str(model_path), "template": template,
        "data": str(data) if data else None, "limit": limit, "max_new_tokens": max_new_tokens,
        "batch_size": batch_size, "judge": judge if isinstance(judge, str) else None,
        "checkpoint": {k: manifest.get(k) for k in ("stage", "run", "step", "parent", "created")},
        **summarize(rows), "seconds": seconds, "samples_per_s": len(rows) / seconds if seconds else None,
        "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "out_dir": str(out_dir),
    }
    write_results(out_dir, rows, metrics)
    return metrics


def add_eval_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that evaluates (run, matrix)."""
    p.add_argument("--data", help="file or folder in the suite's format (default: the suite's default location)")
    p.add_argument("--limit", type=int, help="evaluate only the first N samples")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--template", help="prompt template (default: the checkpoint's training template, else cot)")
    p.add_argument("--judge", help="dotted path of judge(question, prediction, reference) -> float for open questions")
    p.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--image-root", help="folder the data file's relative image paths start from")
    p.add_argument("--split", help="PathMMU split (default test)")
    p.add_argument("--subset-by", choices=["modality", "question_type"], help="OmniMedVQA subset field")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def eval_kwargs(args: argparse.Namespace) -> dict:
    return dict(limit=args.limit, batch_size=args.batch_size, template=args.template,
                max_new_tokens=args.max_new_tokens, judge=args.judge, device=args.device, dtype=args.dtype,
                progress=not args.no_progress, image_root=args.image_root, split=args.split,
                subset_by=args.subset_by)


def run_cli(call: Callable[[], dict], render: Callable[[dict], str]) -> int:
    """Run a command; bad input (data, suite, registry ref) is one clear line on stderr and exit code 2."""
    from evaluation.suites import SuiteError

    try:
        result = call()
    except (SuiteError, LookupError, ValueError) as e:  # LookupError: unknown registry ref
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(result))
    print(f"written to {result['out_dir']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registry ref (rl:latest, sft:<run>/<step>) or a model folder")
    p.add_argument("--suite", required=True, help=f"one of: {', '.join(SUITES)}")
    p.add_argument("--out", help="output folder (default: <checkpoint>/eval/<suite> or $PATHOR1_HOME/reports/...)")
    add_eval_options(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(lambda: evaluate(args.model, args.suite, args.data, out=args.out, **eval_kwargs(args)),
                   markdown_summary)


if __name__ == "__main__":
    sys.exit(main())
