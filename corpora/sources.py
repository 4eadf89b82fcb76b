"""Raw records out of the file formats people have, each with the file and line it came from.

Formats: JSONL, JSON arrays (Med-R1 / PathMMU style), CSV/TSV (Patho-R1 CLIP `image_path,caption`,
Quilt-1M, open_clip `filepath,title`), ARCH (`captions.json` + `images/`) and WebDataset shards
(`{key}.png|jpg` + `{key}.txt` + `{key}.json`). A line that cannot be parsed is yielded with its
error, never skipped silently: the caller (reader or validator) decides what to do with it.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from corpora.records import RecordError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
# A folder holding one of these files is a dataset root: files in its sub-folders (e.g. the demo's
# eval/mcq.jsonl) name images relative to it. Without a marker the root is the data file's folder.
ROOT_MARKERS = ("demo.json", ".dataset-root")
# utf-8-sig: files saved by Excel / Notepad start with a byte-order mark, which is not data.
_ENCODING = "utf-8-sig"
# Bytes that are not UTF-8 decode (errors="surrogateescape") to these code points: reported per line
# instead of one UnicodeDecodeError that stops the whole file.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
# json.loads recurses once per nesting level: `[[[[…` thousands deep raises RecursionError, not a decode error.
TOO_DEEP = "invalid JSON: nested too deeply"


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


def _not_utf8(text: str) -> RecordError | None:
    """An error if `text` (read with errors="surrogateescape") held bytes that are not UTF-8."""
    bad = _UNDECODABLE.search(text)
    if bad is None:
        return None
    byte = ord(bad.group()) - 0xDC00
    return RecordError("malformed-line", f"not valid UTF-8 (byte 0x{byte:02x}): a binary file or another encoding?")


def _jsonl(path: Path, root: Path) -> Iterator[RawRecord]:
    with open(path, encoding=_ENCODING, errors="surrogateescape") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if (error := _not_utf8(line)) is not None:
                yield RawRecord(path, number, None, root, error)
                continue
            data, error = _json_object(line)
            yield RawRecord(path, number, data, root, error)


def _json_object(text: str) -> tuple[dict | None, RecordError | None]:
    """(the JSON object in `text`, None) or (None, why it is not one)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return None, RecordError("malformed-line", f"invalid JSON: {e.msg}")
    except RecursionError:
        return None, RecordError("malformed-line", TOO_DEEP)
    if not isinstance(data, dict):
        return None, RecordError("malformed-line", f"expected a JSON object, got {type(data).__name__}")
    return data, None


def _json(path: Path, root: Path) -> Iterator[RawRecord]:
    text = path.read_text(encoding=_ENCODING, errors="surrogateescape")
    if (error := _not_utf8(text)) is not None:
        yield RawRecord(path, text.count("\n", 0, _UNDECODABLE.search(text).start()) + 1, None, root, error)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        yield RawRecord(path, e.lineno, None, root, RecordError("malformed-line", f"invalid JSON: {e.msg}"))
        return
    except RecursionError:
        yield RawRecord(path, 1, None, root, RecordError("malformed-line", TOO_DEEP))
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
    with open(path, newline="", encoding=_ENCODING, errors="surrogateescape") as f:
        delimiter = "\t" if path.suffix == ".tsv" or "\t" in f.readline() else ","
        f.seek(0)
        # strict: an unbalanced quote is an error, not a field that silently swallows the rest of the file
        reader = csv.DictReader(f, delimiter=delimiter, strict=True)
        reader.fieldnames  # reads the header now, so line_num + 1 below is where each record starts
        rows = iter(reader)
        while True:
            start = reader.line_num + 1
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as e:  # the reader cannot find the next record boundary: stop here
                yield RawRecord(path, start, None, root, RecordError("malformed-line", f"malformed CSV: {e} "
                                                                     "(an unbalanced or stray quote?)"))
                return
            if (error := _not_utf8("".join(map(str, row.values())))) is not None:
                yield RawRecord(path, reader.line_num, None, root, error)
                continue
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
        samples = iter(wds.WebDataset(str(shard), shardshuffle=False))
        for number in itertools.count(1):
            try:
                sample = next(samples)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 -- not a tar, truncated tar...: the rest of the shard is lost
                why = f"unreadable shard ({type(e).__name__}: {e.args[0] if e.args else e})"
                yield RawRecord(shard, number, None, out, RecordError("malformed-line", why))
                break
            key = sample["__key__"].rsplit("/", 1)[-1]
            texts = {ext: sample[ext].decode("utf-8", errors="surrogateescape") for ext in ("json", "txt") if ext in sample}
            meta, error = _json_object(texts["json"]) if "json" in texts else ({}, None)
            error = next(filter(None, map(_not_utf8, texts.values())), None) or error
            if error is not None:
                yield RawRecord(shard, number, None, out, error)
                continue
            images = []
            for ext in sorted(k for k in sample if ("." + k.rsplit(".", 1)[-1]) in IMAGE_EXTENSIONS):
                target = out / f"{key}.{ext}"
                if not target.exists():
                    target.write_bytes(sample[ext])
                images.append(target.name)
            data = {**meta, "images": images or meta.get("images", []), "__key__": key}
            if "txt" in texts:
                data["caption"] = texts["txt"]
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
