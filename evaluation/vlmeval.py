"""VLMEvalKit TSV files in and out, so scores can be cross-checked with the toolkit most benchmarks ship through.

In (``--suite vlmeval --data FILE.tsv``): one row per question with ``index``, ``image`` (base64, a list literal of
base64 strings, or -- VLMEvalKit's way of not repeating an image -- the ``index`` of another row) or
``image_path``, ``question``, optional ``hint`` (prepended, as VLMEvalKit does), option columns ``A`` ``B`` … (MCQ),
``answer`` (a letter, yes/no, or free text), ``category``, ``l2-category``, ``split``. Images are decoded once, by
content hash, into ``$PATHOR1_HOME/cache/images``. Relative ``image_path`` values start from the TSV's folder
and may not leave it (``corpora.records.resolve_image``).

Out (``--export vlmeval``): ``<model>_<dataset>.tsv``, the layout VLMEvalKit writes after inference with
``PRED_FORMAT=tsv`` (the data columns without ``image``, plus ``prediction``), so ``vlmeval``'s evaluation can
score our predictions. ``image_path`` points at the cached images, so the exported file reads back as a suite.
``prediction`` is the full completion; ``extracted`` is the answer span our grader read.
"""
from __future__ import annotations

import ast
import base64
import binascii
import csv
import sys
from pathlib import Path

from corpora.grading import LETTERS
from evaluation.reading import ImageFinder, image_to_path, to_record
from evaluation.releases import SuiteError

REQUIRED = ("index", "question", "answer")
META_COLUMNS = ("category", "l2-category", "split")
_REFERENCE_MAX_CHARS = 64  # VLMEvalKit: an `image` cell this short is the index of the row holding the image


def _rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    csv.field_size_limit(sys.maxsize)  # base64 images are far longer than csv's 128 KiB default
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header:
            raise SuiteError(f"{path}:1: empty file (expected a VLMEvalKit TSV header)")
        missing = [c for c in REQUIRED if c not in header]
        if missing or not {"image", "image_path"} & set(header):
            need = missing + ([] if {"image", "image_path"} & set(header) else ["image or image_path"])
            raise SuiteError(f"{path}:1: missing VLMEvalKit columns {need}")
        rows, line = [], reader.line_num
        for cells in reader:
            start, line = line + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise SuiteError(f"{path}:{start}: {len(cells)} cells, the header has {len(header)}")
            rows.append((start, dict(zip(header, cells))))
    return header, rows


def _list_cell(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list):
            return [str(v) for v in parsed]
    return [value]


def _decode(b64: str, where: str) -> bytes:
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise SuiteError(f"{where}: 'image' is neither base64 nor the index of another row") from None


def _images(row: dict, by_index: dict, tsv_dir: Path, where: str) -> list[str]:
    from corpora.records import RecordError, resolve_image

    if row.get("image", "").strip():
        cells = _list_cell(row["image"])
        if len(cells) == 1 and len(cells[0]) <= _REFERENCE_MAX_CHARS and cells[0] in by_index:
            cells = _list_cell(by_index[cells[0]])
        finder = ImageFinder(tsv_dir, None)
        return [image_to_path(_decode(c, where), finder, where) for c in cells]
    out = []
    for p in _list_cell(row.get("image_path", "")):
        if not p:
            raise SuiteError(f"{where}: empty 'image' and 'image_path'")
        try:
            path = p if Path(p).is_absolute() else resolve_image(tsv_dir, p)
        except RecordError as e:
            raise SuiteError(f"{where}: {e.message}") from None
        if not Path(path).is_file():
            raise SuiteError(f"{where}: image not found: {p!r}")
        out.append(str(Path(path).resolve()))
    return out


def load_vlmeval(data: Path, **_) -> list[dict]:
    """QA records from a VLMEvalKit TSV (MCQ, yes/no or VQA rows); ``id`` is the row's ``index``."""
    if data.is_dir() or data.suffix != ".tsv":
        raise SuiteError(f"{data}: expected a VLMEvalKit .tsv file")
    header, rows = _rows(data)
    option_cols = [c for c in LETTERS if c in header]
    by_index = {r["index"].strip(): r.get("image", "") for _, r in rows}
    out = []
    for line, row in rows:
        where = f"{data}:{line}"
        options = []
        for c in option_cols:
            value = row[c].strip()
            if not value or value.lower() == "nan":  # pandas writes a missing option as an empty cell or nan
                break
            options.append(value)
        question = row["question"].strip()
        hint = row.get("hint", "").strip()
        if hint and hint.lower() != "nan":
            question = f"Hint: {hint}\n{question}"
        raw = {"id": row["index"].strip(), "images": _images(row, by_index, data.parent, where),
               "question": question, "options": options, "answer": row["answer"].strip(),
               "subset": row.get("category", "").strip()}
        rec = to_record(raw, Path("/"), where)  # image paths are absolute and checked above
        rec["meta"] = {c: row[c] for c in META_COLUMNS if c in row}
        out.append(rec)
    return out


def export_vlmeval(rows: list[dict], path: Path) -> Path:
    """Write prediction ``rows`` (``predictions.jsonl`` rows) as VLMEvalKit's post-inference TSV."""
    n_options = max((len(r.get("options") or []) for r in rows), default=0)
    present = {"category"} | {c for r in rows for c in (r.get("meta") or {})}
    meta_columns = [c for c in META_COLUMNS if c in present]  # the source's columns, no invented empty ones
    header = ["index", "question", *LETTERS[:n_options], "answer", *meta_columns, "image_path", "prediction",
              "extracted"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL)  # VLMEvalKit's dump_tsv quotes every cell
        w.writerow(header)
        for r in rows:
            options = list(r.get("options") or [])
            meta = {"category": r.get("subset", ""), **(r.get("meta") or {})}
            images = r["images"][0] if len(r["images"]) == 1 else repr(list(r["images"]))
            w.writerow([r["id"], r["question"], *options, *[""] * (n_options - len(options)), r["answer"],
                        *[meta.get(c, "") for c in meta_columns], images, r["prediction"], r.get("extracted") or ""])
    return path


def read_vlmeval_predictions(path: Path) -> dict[str, str]:
    """``index -> prediction`` from a VLMEvalKit prediction TSV (ours or the toolkit's)."""
    header, rows = _rows(path)
    if "prediction" not in header:
        raise SuiteError(f"{path}:1: no 'prediction' column")
    return {r["index"].strip(): r["prediction"] for _, r in rows}
