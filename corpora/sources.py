"""Raw records out of the file formats people have, each with the file and line it came from.

Formats: JSONL, JSON arrays (Med-R1 / PathMMU style), CSV/TSV (Patho-R1 CLIP `image_path,caption`,
Quilt-1M, open_clip `filepath,title`), ARCH (`captions.json` + `images/`) and WebDataset shards
(`{key}.png|jpg` + `{key}.txt` + `{key}.json`). A line that cannot be parsed is yielded with its
error, never skipped silently: the caller (reader or validator) decides what to do with it.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from corpora.records import RecordError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
# A folder holding one of these files is a dataset root: files in its sub-folders (e.g. the demo's
# eval/mcq.jsonl) name images relative to it. Without a marker the root is the data file's folder.
ROOT_MARKERS = ("demo.json", ".dataset-root")


def dataset_root(path) -> Path:
    """The folder relative image paths of `path` resolve against (and may never escape)."""
    path = Path(path).resolve()
    start = path if path.is_dir() else path.parent
    for folder in (start, *start.parents):
        if any((folder / marker).is_file() for marker in ROOT_MARKERS):
            return folder
    return start


@dataclass
class RawRecord:
    file: Path
    line: int  # 1-based line (JSONL, CSV), item (JSON array, ARCH) or sample index (WebDataset shard)
    data: dict | None
    root: Path  # what relative image paths resolve against
    error: RecordError | None = None


def _jsonl(path: Path, root: Path) -> Iterator[RawRecord]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                yield RawRecord(path, number, None, root, RecordError("malformed-line", f"invalid JSON: {e.msg}"))
                continue
            if not isinstance(data, dict):
                error = RecordError("malformed-line", f"expected a JSON object, got {type(data).__name__}")
                yield RawRecord(path, number, None, root, error)
                continue
            yield RawRecord(path, number, data, root)


def _json(path: Path, root: Path) -> Iterator[RawRecord]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        yield RawRecord(path, e.lineno, None, root, RecordError("malformed-line", f"invalid JSON: {e.msg}"))
        return
    items = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(items, list):
        yield RawRecord(path, 1, None, root, RecordError("malformed-line", "expected a JSON list or object"))
        return
    for number, item in enumerate(items, 1):
        if isinstance(item, dict):
            yield RawRecord(path, number, item, root)
        else:
            yield RawRecord(path, number, None, root,
                            RecordError("malformed-line", f"item {number} is not a JSON object"))


def _csv(path: Path, root: Path) -> Iterator[RawRecord]:
    with open(path, newline="", encoding="utf-8") as f:
        delimiter = "\t" if path.suffix == ".tsv" or "\t" in f.readline() else ","
        f.seek(0)
        reader = csv.DictReader(f, delimiter=delimiter)
        for row in reader:
            if None in row or None in row.values():  # too many / too few columns on this row
                error = RecordError("malformed-line", f"expected {len(reader.fieldnames)} columns "
                                                      f"({', '.join(reader.fieldnames)})")
                yield RawRecord(path, reader.line_num, None, root, error)
                continue
            yield RawRecord(path, reader.line_num, dict(row), root)


def _arch(folder: Path, root: Path) -> Iterator[RawRecord]:
    """ARCH (`captions.json` maps an index to {uuid, caption, ...}; the image is images/<uuid>.<ext>)."""
    images = {p.stem: p.name for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    for record in _json(folder / "captions.json", root):
        if record.data is not None:
            uuid = str(record.data.get("uuid", ""))
            image = folder / "images" / images.get(uuid, uuid + ".jpg")
            record.data = {**record.data, "id": uuid, "image": str(image)}
        yield record


def extraction_dir(shard: Path) -> Path:
    """Where the images of a WebDataset shard are unpacked (the schema wants image paths), keyed by the
    shard's path, size and mtime so a changed shard is unpacked again."""
    stat = shard.stat()
    key = hashlib.sha1(f"{shard.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("PATHOR1_HOME", "runs")) / "cache" / "webdataset"
    return (base / f"{shard.stem}-{key}").resolve()


def _webdataset(shards: list[Path]) -> Iterator[RawRecord]:
    import webdataset as wds

    for shard in shards:
        out = extraction_dir(shard)
        out.mkdir(parents=True, exist_ok=True)
        for number, sample in enumerate(wds.WebDataset(str(shard), shardshuffle=False), 1):
            key = sample["__key__"].rsplit("/", 1)[-1]
            meta = json.loads(sample["json"]) if "json" in sample else {}
            images = []
            for ext in sorted(k for k in sample if ("." + k.rsplit(".", 1)[-1]) in IMAGE_EXTENSIONS):
                target = out / f"{key}.{ext}"
                if not target.exists():
                    target.write_bytes(sample[ext])
                images.append(target.name)
            data = {**meta, "images": images or meta.get("images", []), "__key__": key}
            if "txt" in sample:
                data["caption"] = sample["txt"].decode("utf-8")
            yield RawRecord(shard, number, data, out)


def iter_raw(path, root=None) -> Iterator[RawRecord]:
    """Every raw record under `path` (a data file, a WebDataset shard, a folder of shards, or ARCH);
    relative image paths resolve against `root` (default: `dataset_root(path)`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path}")
    root = Path(root).resolve() if root is not None else dataset_root(path)
    if path.is_dir():
        if (path / "captions.json").is_file() and (path / "images").is_dir():
            return _arch(path.resolve(), root)
        shards = sorted(path.glob("*.tar"))
        if shards:
            return _webdataset(shards)
        raise ValueError(f"{path}: no data found (expected *.tar shards or ARCH captions.json + images/)")
    suffix = path.suffix.lower()
    if suffix == ".tar":
        return _webdataset([path])
    if suffix in (".csv", ".tsv"):
        return _csv(path, root)
    if suffix == ".json":
        return _json(path, root)
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl(path, root)
    raise ValueError(f"{path}: unsupported data format {suffix!r} (.jsonl, .json, .csv, .tsv, .tar, or a folder)")


def fingerprint(path) -> str:
    """Changes whenever the data under `path` changes (size/mtime of every file): keys the Arrow cache."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [f"{f}|{f.stat().st_size}|{f.stat().st_mtime_ns}" for f in files]
    return hashlib.sha1("\n".join(stats).encode()).hexdigest()
