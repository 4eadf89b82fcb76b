"""Corpus rows -> what open_clip_train reads: a tab-separated CSV or WebDataset shards (corpora's writer).

Files are written to a private temporary name and renamed into place, so several torchrun ranks preparing
the same data, or a resumed run, never see a half-written file.
"""
from __future__ import annotations

import csv
import os
import random
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


def phase_rows(n: int, fraction: float, seed: int) -> dict[str, list[int]]:
    """Row indices per phase: A a seeded random subset, B every row."""
    rows = list(range(n))
    subset = sorted(random.Random(seed).sample(rows, max(1, round(n * fraction)))) if fraction else []
    return {"a": subset, "b": rows} if subset else {"b": rows}


@contextmanager
def _atomic_path(final: Path):
    """Yield a private temporary path; move it to ``final`` on success (safe with several ranks writing)."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError:  # another rank already put an identical folder in place
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def prepare_data(dataset, rows: list[int], out: Path, fmt: str, shard_size: int) -> list[str]:
    """open_clip_train arguments for these rows: a tab-separated CSV or WebDataset shards (one image per pair)."""
    subset = dataset.select(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        path = out.with_suffix(".csv")
        if not path.is_file():
            with _atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.writer(f, delimiter="\t")
                writer.writerow(["filepath", "title"])
                writer.writerows((images[0], caption) for images, caption in zip(subset["images"], subset["caption"]))
        return ["--train-data", str(path), "--dataset-type", "csv", "--csv-separator", "\t",
                "--csv-img-key", "filepath", "--csv-caption-key", "title"]
    from corpora.readers import write_webdataset

    if not out.is_dir():
        with _atomic_path(out) as tmp:
            write_webdataset(subset, tmp, shard_size=shard_size)
    shards = sorted(out.glob("*.tar"))
    return ["--train-data", "::".join(map(str, shards)), "--dataset-type", "webdataset",
            "--train-num-samples", str(len(rows))]
