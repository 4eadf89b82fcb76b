"""Corpus -> what open_clip_train reads: a tab-separated CSV or WebDataset shards (corpora's writer).

The corpus is read once per version: its validated pairs are streamed (``corpora.readers.iter_samples``, no
Arrow dataset, so a run does not pay for importing ``datasets``) into ``cache/pathoclip/<fingerprint>-slides<settings hash>/pairs.csv``.
Every later run on the same corpus file (same size and mtime, ``corpora.sources.fingerprint``) reads that CSV
instead of the corpus, and phase A's subset CSV is cut from it. Only paths and captions are cached: open_clip
reads the images themselves at training time. WebDataset shards hold image bytes, so they are written per run.

A pair naming a whole-slide image (``"slide": PATH``, CSV ``slide_path``) stands for its ``slides.k`` tiles
(corpora.slides.sampling, by the run's ``slides.*`` settings, the thumbnail too with ``slides.thumbnail``): each
becomes one (tile, caption) row, read by open_clip from the slide tile cache, so no epoch opens a slide. The
cache folder is keyed by those settings as well: other tiles are other rows. Rows, phase A's subset and
``samples`` count these image rows. Before the CSV is written the corpus is validated as a stage validates it
(corpora.validate, strict, images not decoded): an unreadable slide, or one with fewer than ``slides.k`` tiles,
is a DataError naming file:line, raised before open_clip_train is imported.

Files are written to a private temporary name and renamed into place, so several torchrun ranks preparing
the same data, or a resumed run, never see a half-written file.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

CSV_ARGS = ["--dataset-type", "csv", "--csv-separator", "\t", "--csv-img-key", "filepath", "--csv-caption-key", "title"]


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


def _write_csv(path: Path, rows) -> None:
    with _atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)


def _read_csv(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        yield from reader


class PreparedCorpus:
    """One pairs corpus as open_clip_train input, cached by the corpus's fingerprint."""

    def __init__(self, data, cache_root: Path, slides=None):
        from corpora.sources import fingerprint

        self.data = Path(data).resolve()
        if not self.data.exists():
            raise FileNotFoundError(f"data not found: {self.data}")
        self.slides = slides  # corpora.slides.SlideSampling; None = its defaults
        key = fingerprint(self.data)
        if slides is not None:
            settings = json.dumps(slides.to_dict(), sort_keys=True).encode()
            key += f"-slides{hashlib.sha1(settings).hexdigest()[:12]}"
        self.folder = Path(cache_root) / key
        self.pairs_csv = self.folder / "pairs.csv"
        self._n: int | None = None

    def _samples(self):
        """One sample per image row: a slide pair as one sample per tile (the caption repeated), any other pair
        as its first image (open_clip pairs one image with one caption)."""
        from corpora.readers import iter_samples  # validates every record, DataError naming file:line
        from corpora.slides.tiling import slide_of_image

        for sample in iter_samples(self.data, "pairs", slides=self.slides):
            images = sample["images"] if slide_of_image(sample["images"][-1]) else sample["images"][:1]
            for i, image in enumerate(images):
                yield {**sample, "id": sample["id"] if len(images) == 1 else f"{sample['id']}/{i}", "images": [image]}

    def _validate(self) -> None:
        from corpora.validate import validate

        validate(self.data, "pairs", "strict", check_images=False, slides=self.slides).raise_if_errors()

    def __len__(self) -> int:
        if self._n is None:
            if not self.pairs_csv.is_file():  # first run on this corpus version: read and validate it once
                self._validate()
                self.folder.mkdir(parents=True, exist_ok=True)
                _write_csv(self.pairs_csv, ((s["images"][0], s["caption"]) for s in self._samples()))
            self._n = sum(1 for _ in _read_csv(self.pairs_csv))
        return self._n

    def open_clip_args(self, phase: str, rows: list[int], fmt: str, shard_size: int, run_data: Path) -> list[str]:
        """open_clip_train's data arguments for these rows (``rows`` index the corpus in file order)."""
        if fmt == "csv":
            return ["--train-data", str(self._subset_csv(rows)), *CSV_ARGS]
        from corpora.readers import write_webdataset

        out = run_data / phase
        if not out.is_dir():
            out.parent.mkdir(parents=True, exist_ok=True)
            wanted = set(rows)
            with _atomic_path(out) as tmp:
                write_webdataset((s for i, s in enumerate(self._samples()) if i in wanted), tmp, shard_size=shard_size)
        shards = sorted(out.glob("*.tar"))
        return ["--train-data", "::".join(map(str, shards)), "--dataset-type", "webdataset",
                "--train-num-samples", str(len(rows))]

    def _subset_csv(self, rows: list[int]) -> Path:
        n = len(self)
        if rows == list(range(n)):
            return self.pairs_csv
        path = self.folder / f"subset-{hashlib.sha1(repr(rows).encode()).hexdigest()[:16]}.csv"
        if not path.is_file():
            wanted = set(rows)
            _write_csv(path, (row for i, row in enumerate(_read_csv(self.pairs_csv)) if i in wanted))
        return path
