"""Measure an exported PathoCLIP model: zero-shot, few-shot linear probe, retrieval (both directions) -> JSON.

The evaluation suite calls this CLI (it may not import pathoclip) and reads the JSON it writes.

    DEMO=runs/demo_corpora/n400-e400-s112-seed0
    python -m pathoclip.evaluate --model pathoclip:latest --zeroshot $DEMO/eval/zeroshot \\
        --prompts $DEMO/eval/zeroshot_prompts.json --fewshot $DEMO/eval/zeroshot \\
        --retrieval $DEMO/eval/retrieval.jsonl --out report.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stages.registry import Registry, RegistryError

from pathoclip import metrics
from pathoclip.export import load_exported


def evaluate(model_ref, *, zeroshot=None, prompts=None, fewshot=None, retrieval=None, shots=(2, 8, 16),
             seeds=(0, 1, 2), device="cpu") -> dict:
    """Every metric whose data is given, for the model a registry ref or folder names."""
    folder = Registry().resolve(model_ref)
    model, preprocess, tokenizer = load_exported(folder, device=device)
    report: dict = {"model": str(folder)}
    if zeroshot:
        if not prompts:
            raise ValueError("zero-shot needs the prompt JSON (--prompts) next to the ImageFolder (--zeroshot)")
        report["zeroshot"] = metrics.zero_shot(model, preprocess, tokenizer, zeroshot, prompts)
    if fewshot:
        report["fewshot"] = metrics.few_shot(model, preprocess, fewshot, shots=shots, seeds=seeds)
    if retrieval:
        from corpora.readers import load_pairs

        pairs = load_pairs(retrieval)
        report["retrieval"] = metrics.retrieval(model, preprocess, tokenizer, [i[0] for i in pairs["images"]],
                                                pairs["caption"])
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pathoclip.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="registry ref (pathoclip:latest, pathoclip:RUN) or folder")
    parser.add_argument("--zeroshot", help="ImageFolder <dir>/<class>/*.png for zero-shot classification")
    parser.add_argument("--prompts", help='prompt JSON {"0": {"classnames": {...}, "templates": [...]}}')
    parser.add_argument("--fewshot", help="ImageFolder for the few-shot linear probe (k shots drawn per class)")
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 8, 16], help="k values (default 2 8 16)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per k (default 0 1 2)")
    parser.add_argument("--retrieval", help="image-caption pairs (any corpora pairs format) for Recall@1/5/10/20")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", help="write the JSON report here (it is always printed)")
    args = parser.parse_args(argv)
    if not (args.zeroshot or args.fewshot or args.retrieval):
        parser.error("nothing to measure: give --zeroshot/--prompts, --fewshot and/or --retrieval")
    try:
        report = evaluate(args.model, zeroshot=args.zeroshot, prompts=args.prompts, fewshot=args.fewshot,
                          retrieval=args.retrieval, shots=args.shots, seeds=args.seeds, device=args.device)
    except (RegistryError, ValueError, FileNotFoundError) as e:
        print(f"python -m pathoclip.evaluate: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
