"""Evaluation throughput: pathor1's batched greedy generation vs a batch-size-1 loop, same model, same samples,
one process. The tiny model and the demo corpus's held-out MCQ split are built offline.

    python benchmarks/eval_throughput.py [--n 48] [--batch-size 16] [--max-new-tokens 32] [--family qwen2_5_vl]

Last line: one JSON object with the raw figures and "speedup" = baseline seconds / our seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import stages.compat  # noqa: E402,F401  (torchvision fix before transformers)
from corpora.demo import build_demo  # noqa: E402
from evaluation.generate import generate, load_model  # noqa: E402
from evaluation.suites import load_suite  # noqa: E402
from stages.model import build_tiny  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=48, help="number of held-out samples")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
    p.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = build_demo(tmp / "demo", n_eval=max(args.n, 8), image_size=56)
        samples = load_suite("demo-mcq", corpus.root / "eval" / "mcq.jsonl", limit=args.n)
        model, processor = load_model(build_tiny(args.family, tmp / "model"), device=args.device)
        kw = dict(template="cot", max_new_tokens=args.max_new_tokens, progress=False)
        generate(model, processor, samples[:2], batch_size=2, **kw)  # warm-up: lazy init, allocator
        baseline, t_base = timed(lambda: generate(model, processor, samples, batch_size=1, **kw))
        ours, t_ours = timed(lambda: generate(model, processor, samples, batch_size=args.batch_size, **kw))

    result = {
        "benchmark": "eval_throughput", "family": args.family, "device": str(model.device), "n_samples": len(samples),
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "baseline_s": round(t_base, 3), "ours_s": round(t_ours, 3),
        "baseline_samples_per_s": round(len(samples) / t_base, 2), "ours_samples_per_s": round(len(samples) / t_ours, 2),
        "generated_tokens": sum(c.n_tokens for c in ours),
        "same_predictions": [c.text for c in ours] == [c.text for c in baseline],
        "speedup": round(t_base / t_ours, 3),
    }
    print(f"batch-1 loop: {result['baseline_samples_per_s']} samples/s; "
          f"batched (bs={args.batch_size}): {result['ours_samples_per_s']} samples/s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
