"""Turning the files of a public release into QA records: the helpers every benchmark reader shares.

Files: ``read_json_records`` (a JSON list or JSONL), ``json_array_lines`` (a JSON array with each record's line,
for ``file:line`` errors), ``table_rows`` (parquet or JSONL), ``count_rows`` (for the skip log) and ``split_rows``
(a release's rows of the chosen split(s), HF shards or one file). Records: ``to_record`` (one published record
through corpora's normalisation), ``ImageFinder`` (a relative image path against the release's folders),
``image_to_path`` (parquet image bytes written once to the image cache), ``first_value``, ``as_list``,
``is_yesno``, ``strip_option_letters``, ``inline_options`` and ``ANSWER_TAG``. Every error is a ``SuiteError``
naming the file and record.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

from corpora.grading import LETTERS
from corpora.records import RecordError, first_field, normalize_qa, resolve_image, split_inline_options
from evaluation.releases import Skips, SuiteError, choose_split, shard_split

_OPTION_PREFIX = re.compile(r"^\s*\(?([A-J])\s*[\)\.:]\s*")
ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)


# ---------------------------------------------------------------------------------------------- files


def read_json_records(path: Path) -> list:
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SuiteError(f"{path}:{n}: invalid JSON: {e.msg}") from None
        return rows
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SuiteError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def json_array_lines(path: Path) -> list[tuple[int, dict]]:
    """``(line, record)`` for each element of a JSON array file, so errors can say ``file:line``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SuiteError(f"{path}: expected UTF-8 JSON, found undecodable byte at offset {e.start}; "
                         "fix: download the file again") from None
    decoder, pos = json.JSONDecoder(), 0
    skip = lambda i: len(text) - len(text[i:].lstrip())  # noqa: E731  (index of the next non-blank)
    pos = skip(pos)
    if not text.startswith("[", pos):
        raise SuiteError(f"{path}:1: expected a JSON list of records")
    pos, out = skip(pos + 1), []
    while not text.startswith("]", pos):
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise SuiteError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(value, dict):
            raise SuiteError(f"{path}:{line}: expected a record (JSON object), got {type(value).__name__}")
        out.append((line, value))
        pos = skip(pos)
        if text.startswith(",", pos):
            pos = skip(pos + 1)
        elif not text.startswith("]", pos):
            raise SuiteError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected ',' or ']' between records")
    return out


def table_rows(path: Path) -> list[tuple[str, dict]]:
    """``(where, row)`` for a parquet (``file: row i``) or JSONL (``file:line``) file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a truncated or foreign file
            raise SuiteError(f"{path}: expected a parquet file, found {type(e).__name__}: {e}; "
                             "fix: download the file again") from None
        return [(f"{path}: row {i}", r) for i, r in enumerate(table.to_pylist())]
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise SuiteError(f"{path}:{n}: invalid JSON: {e.msg}") from None
    return rows


def count_rows(path: Path) -> int:
    """Records in a file that is not read (for the skip log): parquet metadata, JSONL lines, JSON list length."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".jsonl":
        return sum(1 for line in text.splitlines() if line.strip())
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return 0
    return len(value) if isinstance(value, list) else 0


def _split_groups(data: Path, patterns: tuple[str, ...]) -> dict[str, list[Path]]:
    if not data.exists():
        raise SuiteError(f"{data}: no such file or folder")
    if data.is_file():
        return {shard_split(data): [data]}
    folder = data / "data" if (data / "data").is_dir() else data  # the HF layout keeps the shards in data/
    groups: dict[str, list[Path]] = {}
    for f in sorted(p for pat in patterns for p in folder.glob(pat)):
        groups.setdefault(shard_split(f), []).append(f)
    if not groups:
        raise SuiteError(f"{data}: expected {' / '.join(patterns)} files (HF data/<split>-*.parquet), found none")
    return groups


def _file_rows(path: Path) -> list[tuple[str, dict]]:
    if path.suffix == ".json":
        return [(f"{path}:{line}", rec) for line, rec in json_array_lines(path)]
    return table_rows(path)


def split_rows(data: Path, split: str | None, skips: Skips):
    """``(split, n, path, where, row)`` of the chosen split(s); ``n`` counts every row of the split in file order,
    so an id built from it does not move when a suite keeps only some rows."""
    groups = _split_groups(data, ("*.parquet", "*.jsonl", "*.json"))
    chosen = choose_split(groups, split, "test", str(data))
    for s, files in groups.items():
        if s not in chosen:
            skips.add(f"split {s!r} (reading {', '.join(chosen)})", sum(count_rows(f) for f in files))
    for s in chosen:
        n = 0
        for path in groups[s]:
            for where, rec in _file_rows(path):
                yield s, n, path, where, rec
                n += 1


# ---------------------------------------------------------------------------------------------- records


def to_record(raw: dict, root: Path | None, where: str, *, images: list[str] | None = None) -> dict:
    """One published record, mapped to the QA column names, through corpora's normalisation (its options, its
    letter matcher, its image check under ``root``; ``images`` when the caller resolved them); errors name
    ``where``."""
    answer = str(raw.get("answer", "")).strip()
    if "kind" not in raw:
        raw["kind"] = "mcq" if raw.get("options") else "yesno" if answer.lower() in ("yes", "no") else "open"
    try:
        rec = normalize_qa(raw, root, where, images=images)
    except RecordError as e:
        raise SuiteError(f"{where}: {e.message}") from None
    for image in rec["images"]:
        if not Path(image).is_file():
            raise SuiteError(f"{where}: image not found: {image}")
    return rec


class ImageFinder:
    """Resolves relative image paths against the candidate roots; errors name the record.

    Default roots: ``image_root``, else the data file's folder and the two above it (releases keep images beside
    or above their question files), all inside the outermost (corpora's escape check). ``roots``: the folders a
    reader knows (a release's image folder, an unpacked archive), each its own boundary."""

    def __init__(self, data: Path | None, image_root: str | Path | None = None, *, roots: list[Path] | None = None):
        if roots is not None:
            self.pairs = [(Path(r), Path(r)) for r in roots]
        else:
            base = data if data.is_dir() else data.parent
            found = [Path(image_root)] if image_root else [base, base.parent, base.parent.parent]
            self.pairs = [(r, found[-1]) for r in found] + [(found[0] / "images", found[-1])]

    def __call__(self, rel: str, where: str, *, optional: bool = False) -> str | None:
        """The image's resolved path; ``optional``: None when it is not found (an escape is still refused)."""
        rel = str(rel).removeprefix("file://")
        pairs = [(Path(rel), b) for _, b in self.pairs[-1:]] if Path(rel).is_absolute() else \
            [(r / rel, b) for r, b in self.pairs]
        for candidate, boundary in pairs:
            try:
                resolved = resolve_image(boundary, str(candidate))
            except RecordError as e:
                raise SuiteError(f"{where}: {e.message}") from None
            if Path(resolved).is_file():
                return resolved
        if optional:
            return None
        raise SuiteError(f"{where}: image not found: {rel!r} (looked in {', '.join(str(c.parent) for c, _ in pairs)})")


def strip_option_letters(options: list[str]) -> list[str]:
    """``["A) x", "B) y"]`` -> ``["x", "y"]``, only when every option carries its own positional letter."""
    matches = [_OPTION_PREFIX.match(str(o)) for o in options]
    if options and all(m and m.group(1) == LETTERS[i] for i, m in enumerate(matches)):
        return [str(o)[m.end():].strip() for o, m in zip(options, matches)]
    return [str(o).strip() for o in options]


def inline_options(problem: str, where: str) -> tuple[str, list[str]]:
    """corpora's parser of options written into the question text, refusing a problem that has none."""
    question, options = split_inline_options(problem)
    if not options:
        raise SuiteError(f"{where}: no inline options 'A)...' found in problem {problem!r}")
    return question, options


def first_value(rec: dict, keys: tuple[str, ...], where: str):
    try:
        return first_field(rec, keys, keys[0], skip_empty=True)
    except RecordError as e:
        raise SuiteError(f"{where}: {e.message}") from None


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def is_yesno(answer) -> bool:
    return str(answer).strip().lower() in {"yes", "no"}


def _image_cache_dir() -> Path:
    from stages import registry

    d = registry.cache_dir("images")
    d.mkdir(parents=True, exist_ok=True)
    return d


def image_to_path(value, find: ImageFinder, where: str) -> str:
    """Parquet images arrive as ``{"bytes": ..., "path": ...}`` or raw bytes: written once, by content hash,
    to ``$PATHOR1_HOME/cache/images`` because QA records carry image paths."""
    if isinstance(value, dict):
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            return find(value["path"], where)
        else:
            raise SuiteError(f"{where}: image has neither bytes nor path")
    if isinstance(value, (bytes, bytearray)):
        from PIL import Image

        try:
            fmt = (Image.open(io.BytesIO(value)).format or "png").lower()
        except Exception:
            raise SuiteError(f"{where}: image bytes are not a readable image") from None
        target = _image_cache_dir() / f"{hashlib.sha1(value).hexdigest()}.{fmt}"
        if not target.exists():
            target.write_bytes(value)
        return str(target)
    return find(value, where)
