"""Corpus alignment check: score every image-caption pair with a reference CLIP, flag the likely misaligned.

    python -m pathoclip.align runs/demo_corpora/n400-e400-s112-seed0/pairs.jsonl --model pathoclip:latest --worst 10
    python -m pathoclip.align pairs.csv --model pathoclip:latest --drop-fraction 0.05 --out pairs.aligned.csv

Prints the score distribution (quantiles) and the worst pairs; with ``--out`` writes the pairs that pass
(score >= --min-score, or all but the lowest --drop-fraction; --out alone drops the lowest 5 %) in the corpus's
own format.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.registry import Registry, RegistryError

from pathoclip.export import load_exported
from pathoclip.metrics import encode_images, encode_texts

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def alignment_scores(model, preprocess, tokenizer, images, captions, *, chunk: int = 512) -> np.ndarray:
    """Cosine similarity of each image with its own caption, computed chunk by chunk (memory stays flat)."""
    scores = []
    for start in tqdm(range(0, len(images), chunk), desc="scoring pairs", disable=len(images) <= chunk):
        image_emb = encode_images(model, preprocess, images[start:start + chunk])
        text_emb = encode_texts(model, tokenizer, captions[start:start + chunk])
        scores.append((image_emb * text_emb).sum(-1).numpy())
    return np.concatenate(scores) if scores else np.empty(0)


def summarize(scores: np.ndarray, ids, images, captions, *, worst: int = 10) -> dict:
    order = np.argsort(scores, kind="stable")[:worst]
    return {"n_pairs": int(len(scores)), "mean": float(scores.mean()),
            "quantiles": {f"{q:g}": float(np.quantile(scores, q)) for q in QUANTILES},
            "worst": [{"id": ids[i], "score": float(scores[i]), "image": images[i], "caption": captions[i]}
                      for i in order]}


DEFAULT_DROP = 0.05  # --out without a threshold: drop the lowest-scoring 5 %


def keep_mask(scores: np.ndarray, *, min_score: float | None = None, keep_quantile: float | None = None):
    """Pairs to keep: score >= min_score, or score above the ``keep_quantile`` quantile (drops that fraction)."""
    if (min_score is None) == (keep_quantile is None):
        raise ValueError("give exactly one of --min-score or --drop-fraction")
    if keep_quantile is not None:
        if not 0 <= keep_quantile < 1:
            raise ValueError(f"--drop-fraction must be in [0, 1), got {keep_quantile}")
        min_score = float(np.quantile(scores, keep_quantile))
    return scores >= min_score


def write_filtered(corpus, keep, out, dataset=None) -> Path:
    """The kept pairs in the corpus's own format: JSONL lines / CSV rows / JSON items copied as they were,
    WebDataset re-sharded. The output must share the corpus's dataset root, or relative image paths break."""
    from corpora.sources import dataset_root, iter_raw

    corpus, out = Path(corpus), Path(out)
    suffix = out.suffix.lower()
    if corpus.is_dir() or corpus.suffix.lower() == ".tar":
        if (corpus / "captions.json").is_file():
            raise ValueError(f"{corpus}: filtering an ARCH corpus (captions.json + images/) is not supported")
        from corpora.readers import write_webdataset

        write_webdataset(dataset.select(np.flatnonzero(keep).tolist()), out)
        return out
    if suffix != corpus.suffix.lower():
        raise ValueError(f"--out {out} must keep the corpus's format ({corpus.suffix})")
    out.parent.mkdir(parents=True, exist_ok=True)
    if dataset_root(out) != dataset_root(corpus):
        raise ValueError(f"--out {out} is outside the corpus's dataset root {dataset_root(corpus)}: its relative "
                         f"image paths would no longer resolve; write it inside that folder")
    records = list(iter_raw(corpus))  # same order as the reader's rows
    kept = [r for r, k in zip(records, keep) if k]
    if suffix in (".jsonl", ".ndjson"):
        lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
        out.write_text("".join(lines[r.line - 1].rstrip("\n") + "\n" for r in kept), encoding="utf-8")
    elif suffix in (".csv", ".tsv"):
        with open(corpus, newline="", encoding="utf-8") as f:
            delimiter = "\t" if suffix == ".tsv" or "\t" in f.readline() else ","
        with open(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0].data), delimiter=delimiter, lineterminator="\n")
            writer.writeheader()
            writer.writerows(r.data for r in kept)
    else:
        out.write_text(json.dumps([r.data for r in kept], indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def check(corpus, model_ref, *, worst=10, out=None, min_score=None, keep_quantile=None, device="cpu") -> dict:
    from corpora.readers import load_pairs

    dataset = load_pairs(corpus)
    model, preprocess, tokenizer = load_exported(Registry().resolve(model_ref), device=device)
    images = [i[0] for i in dataset["images"]]
    scores = alignment_scores(model, preprocess, tokenizer, images, dataset["caption"])
    report = summarize(scores, dataset["id"], images, dataset["caption"], worst=worst)
    if out:
        keep = keep_mask(scores, min_score=min_score, keep_quantile=keep_quantile)
        report["filtered"] = {"path": str(write_filtered(corpus, keep, out, dataset)), "kept": int(keep.sum()),
                              "dropped": int((~keep).sum())}
    return report


def _print(report: dict) -> None:
    print(f"{report['n_pairs']} pairs, mean image-caption cosine {report['mean']:.3f}")
    print("quantiles: " + "  ".join(f"q{q}={v:.3f}" for q, v in report["quantiles"].items()))
    print(f"worst {len(report['worst'])} (likely misaligned):")
    for w in report["worst"]:
        print(f"  {w['score']:+.3f}  {w['id']}  {w['caption'][:100]}")
    if "filtered" in report:
        f = report["filtered"]
        print(f"kept {f['kept']}, dropped {f['dropped']} -> {f['path']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pathoclip.align", description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", help="pairs corpus (JSONL / CSV / JSON / WebDataset shards)")
    parser.add_argument("--model", required=True, help="reference CLIP: registry ref (pathoclip:latest) or folder")
    parser.add_argument("--worst", type=int, default=10, help="how many of the lowest-scoring pairs to list")
    parser.add_argument("--out", help="write the kept pairs here, in the corpus's format")
    parser.add_argument("--min-score", type=float, help="keep pairs with cosine >= this")
    parser.add_argument("--drop-fraction", type=float, help="drop this lowest-scoring fraction, e.g. 0.05 "
                                                            f"(default with --out alone: {DEFAULT_DROP})")
    parser.add_argument("--keep-quantile", type=float, help=argparse.SUPPRESS)  # old name: it dropped that fraction
    parser.add_argument("--json", help="also write the report as JSON here")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.keep_quantile is not None:  # the name said "keep" but it always dropped that fraction
        print("python -m pathoclip.align: warning: --keep-quantile is deprecated (it is the fraction DROPPED); "
              "use --drop-fraction", file=sys.stderr)
        args.drop_fraction = args.keep_quantile if args.drop_fraction is None else args.drop_fraction
    if args.out and args.min_score is None and args.drop_fraction is None:
        args.drop_fraction = DEFAULT_DROP
    try:
        report = check(args.corpus, args.model, worst=args.worst, out=args.out, min_score=args.min_score,
                       keep_quantile=args.drop_fraction, device=args.device)
    except (RegistryError, ValueError, FileNotFoundError) as e:
        print(f"python -m pathoclip.align: error: {e}", file=sys.stderr)
        return 2
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
