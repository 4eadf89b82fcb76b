"""Benchmark adapters: each turns a file or folder in a public format into QA-schema records.

A record is a plain dict with the corpora QA columns (id, images, question, options, answer, kind, solution,
subset, reasoning); ``images`` are absolute paths that exist. Accepted fields per suite (documented here
because the public releases differ between mirrors):

* ``pathmmu``  PathMMU ``data.json``: ``{subset: {split: [record, ...]}}`` (also ``{subset: [...]}`` or a flat
  list). Record: ``question``, ``options`` (``["A) text", ...]`` or plain texts), ``answer`` (``"B) text"``,
  ``"B"`` or the option text), image in ``img`` | ``image`` | ``source_img`` | ``images``. Subset = top key.
* ``omnimed``  OmniMedVQA QA json (``question``, ``option_A``..``option_D``, ``gt_answer`` = option text,
  ``image_path``, ``modality_type``, ``question_type``) or a Med-R1 split json (``image``,
  ``problem`` = ``"question? A)x, B)y, ..."``, ``solution`` = ``"<answer> C </answer>"``; subset = file name
  without ``_test``/``_train``). A folder means every ``*.json`` under it.
* ``pmcvqa``   PMC-VQA CSV with ``Figure_path, Question, Answer, Choice A..D, Answer_label``.
* ``pathvqa``  PathVQA closed questions: parquet (HF ``image`` = ``{bytes, path}`` struct or a path) or
  JSON/JSONL with ``image, question, answer``; only yes/no answers are kept.
* ``open``     open-ended VQA: the same PathVQA files (non yes/no rows) or QA-schema JSONL with ``kind: open``.
* ``vqarad``, ``slake``, ``quiltvqa``, ``medxpertqa``, ``mmmu-med``  the medical VQA benchmarks in their
  published formats: see ``evaluation/medical.py``.
* ``vlmeval``  any VLMEvalKit TSV (``--data FILE.tsv``): see ``evaluation/vlmeval.py``.
* ``demo-mcq``, ``demo-yesno``  the demo corpus's held-out splits (QA-schema JSONL, read by corpora).

Images are looked up under ``image_root`` when given, else next to the data file and up to two folders
above it (public releases keep images beside or above their question files).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from corpora.grading import LETTERS
from corpora.records import RecordError, first_field, normalize_qa, resolve_image, split_inline_options

_OPTION_PREFIX = re.compile(r"^\s*\(?([A-J])\s*[\)\.:]\s*")
_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)


class SuiteError(ValueError):
    """Bad benchmark data or an unknown suite; the message names the file and record."""


@dataclass(frozen=True)
class Suite:
    name: str
    load: Callable[..., list[dict]]
    default_data: Callable[[dict | None], Path]  # given the evaluated checkpoint's manifest (or None)
    description: str
    layout: tuple[str, ...] | None = None  # where its data sits under a --data-root folder
    source: str = ""  # where the data comes from (README's suites table)
    grading: str = ""


# ---------------------------------------------------------------------------------------------- helpers


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


class _ImageFinder:
    """Resolves relative image paths against the candidate roots; errors name the record."""

    def __init__(self, data: Path, image_root: str | Path | None):
        base = data if data.is_dir() else data.parent
        self.roots = [Path(image_root)] if image_root else [base, base.parent, base.parent.parent]
        self.boundary = self.roots[-1]  # no image outside the outermost folder searched (corpora's escape check)

    def __call__(self, rel: str, where: str) -> str:
        rel = str(rel).removeprefix("file://")
        candidates = [Path(rel)] if Path(rel).is_absolute() else [r / rel for r in self.roots]
        candidates += [r / "images" / rel for r in self.roots[:1] if not Path(rel).is_absolute()]
        for c in candidates:
            try:
                resolved = resolve_image(self.boundary, str(c))
            except RecordError as e:
                raise SuiteError(f"{where}: {e.message}") from None
            if Path(resolved).is_file():
                return resolved
        raise SuiteError(f"{where}: image not found: {rel!r} (looked in {', '.join(str(c.parent) for c in candidates)})")


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


def _read_json_records(path: Path) -> list:
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


def _files(data: Path, patterns: tuple[str, ...]) -> list[Path]:
    if not data.exists():
        raise SuiteError(f"{data}: no such file or folder")
    if data.is_file():
        return [data]
    found = sorted(p for pat in patterns for p in data.rglob(pat))
    if not found:
        raise SuiteError(f"{data}: no {' / '.join(patterns)} files in this folder")
    return found


def _first(rec: dict, keys: tuple[str, ...], where: str):
    try:
        return first_field(rec, keys, keys[0], skip_empty=True)
    except RecordError as e:
        raise SuiteError(f"{where}: {e.message}") from None


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ---------------------------------------------------------------------------------------------- adapters


def load_pathmmu(data: Path, *, split: str = "test", image_root=None, **_) -> list[dict]:
    raw = _read_json_records(data)
    find = _ImageFinder(data, image_root)
    groups = {"": raw} if isinstance(raw, list) else raw
    out, seen_splits = [], set()
    for subset, content in groups.items():
        if isinstance(content, dict):
            seen_splits.update(content)
            content = content.get(split, [])
        for i, rec in enumerate(content):
            where = f"{data}: {subset or 'record'}[{split}][{i}]"
            options = strip_option_letters(_as_list(_first(rec, ("options",), where)))
            answer = _first(rec, ("answer",), where)
            images = [find(p, where) for p in _as_list(_first(rec, ("img", "image", "source_img", "images"), where))]
            rid = rec.get("id") or rec.get("No") or f"{subset}-{split}-{i}"
            out.append(to_record({"id": f"pathmmu-{rid}", "question": rec.get("question"), "options": options,
                                  "answer": answer, "kind": "mcq", "subset": subset or rec.get("subset", "")},
                                 None, where, images=images))
    if not out and seen_splits:
        raise SuiteError(f"{data}: no records for split {split!r}; available splits: {sorted(seen_splits)}")
    return out


def load_omnimed(data: Path, *, image_root=None, subset_by: str = "modality", **_) -> list[dict]:
    out = []
    for path in _files(data, ("*.json",)):
        find = _ImageFinder(path, image_root)
        file_subset = re.sub(r"(_filtered)?_(test|train|val)$", "", path.stem)
        for i, rec in enumerate(_read_json_records(path)):
            where = f"{path}: record {i}"
            if "problem" in rec:  # Med-R1 split
                question, options = inline_options(rec["problem"], where)
                tag = _ANSWER_TAG.search(str(rec.get("solution", "")))
                answer = tag.group(1) if tag else rec.get("solution", "")
                image = _first(rec, ("image", "image_path"), where)
                subset = file_subset
            else:  # OmniMedVQA QA_information
                options = [rec[f"option_{c}"] for c in LETTERS if rec.get(f"option_{c}") not in (None, "")]
                question, answer = rec["question"], _first(rec, ("gt_answer", "answer"), where)
                image = _first(rec, ("image_path", "image"), where)
                key = "question_type" if subset_by == "question_type" else "modality_type"
                subset = rec.get(key) or rec.get("modality") or file_subset
            rid = rec.get("question_id") or f"{file_subset}-{i}"
            out.append(to_record({"id": f"omnimed-{rid}", "question": question, "options": options, "answer": answer,
                                  "kind": "mcq", "subset": subset}, None, where, images=[find(image, where)]))
    return out


def load_pmcvqa(data: Path, *, image_root=None, **_) -> list[dict]:
    out = []
    for path in _files(data, ("*.csv",)):
        find = _ImageFinder(path, image_root)
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"Figure_path", "Question", "Choice A"} - set(reader.fieldnames or ())
            if missing:
                raise SuiteError(f"{path}:1: missing PMC-VQA columns {sorted(missing)}")
            for line, row in enumerate(reader, 2):
                where = f"{path}:{line}"
                raw = [row[f"Choice {c}"] for c in LETTERS if row.get(f"Choice {c}") not in (None, "")]
                options = strip_option_letters(raw)
                label = (row.get("Answer_label") or "").strip() or row.get("Answer", "")
                out.append(to_record({"id": f"pmcvqa-{line - 1}", "question": row["Question"], "options": options,
                                      "answer": label, "kind": "mcq", "subset": row.get("subset", "")},
                                     None, where, images=[find(row["Figure_path"].strip(), where)]))
    return out


def _image_cache_dir() -> Path:
    from stages import registry

    d = registry.cache_dir("images")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _image_to_path(value, find: _ImageFinder, where: str) -> str:
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


def _vqa_rows(data: Path) -> list[tuple[Path, str, dict]]:
    rows = []
    for path in _files(data, ("*.parquet", "*.jsonl", "*.json")):
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows += [(path, f"{path}: row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
        else:
            recs = _read_json_records(path)
            line = (lambda i: f"{path}:{i + 1}") if path.suffix == ".jsonl" else (lambda i: f"{path}: record {i}")
            rows += [(path, line(i), r) for i, r in enumerate(recs)]
    return rows


def _is_yesno(answer) -> bool:
    return str(answer).strip().lower() in {"yes", "no"}


def load_pathvqa(data: Path, *, image_root=None, **_) -> list[dict]:
    out = []
    for path, where, rec in _vqa_rows(data):
        if not _is_yesno(rec.get("answer", "")):
            continue  # open-ended rows belong to the `open` suite
        find = _ImageFinder(path, image_root)
        images = [_image_to_path(v, find, where) for v in _as_list(_first(rec, ("image", "images"), where))]
        out.append(to_record({"id": rec.get("id") or f"pathvqa-{len(out)}", "question": rec.get("question"),
                              "options": [], "answer": str(rec["answer"]), "kind": "yesno",
                              "subset": rec.get("subset", "")}, None, where, images=images))
    return out


def load_open(data: Path, *, image_root=None, **_) -> list[dict]:
    out = []
    for path, where, rec in _vqa_rows(data):
        kind = rec.get("kind")
        if (kind and kind != "open") or (not kind and _is_yesno(rec.get("answer", ""))):
            continue
        find = _ImageFinder(path, image_root)
        images = [_image_to_path(v, find, where) for v in _as_list(_first(rec, ("images", "image"), where))]
        out.append(to_record({"id": rec.get("id") or f"open-{len(out)}", "question": rec.get("question"),
                              "options": [], "answer": str(_first(rec, ("answer",), where)), "kind": "open",
                              "subset": rec.get("subset", "")}, None, where, images=images))
    return out


def _load_corpora_qa(data: Path, **_) -> list[dict]:
    from corpora.readers import load_qa

    return [dict(r) for r in load_qa(data)]


def trained_demo_corpus(checkpoint: dict | None):
    """The demo corpus a checkpoint was trained on, from the data file its manifest's config names (every stage
    config has ``data``; a recipe fills in its corpus's file), or None when it was not trained on one."""
    from corpora.demo import demo_corpus_of

    data = ((checkpoint or {}).get("config") or {}).get("data")
    return demo_corpus_of(data) if data else None


def _demo_path(name: str) -> Callable[[dict | None], Path]:
    def default(checkpoint: dict | None = None) -> Path:
        # The held-out split of the corpus the checkpoint trained on: `make demo` at any size and then `make eval`
        # score the recipe's own held-out questions. A checkpoint that records no demo corpus (a user's data, a
        # hub model) gets the default demo corpus, the one `make pretrain` with no data trains on.
        from corpora.demo import demo_corpus
        from stages import registry

        corpus = trained_demo_corpus(checkpoint) or demo_corpus(registry.home())
        return corpus.root / "eval" / name

    return default


def _home_data(*parts: str) -> Callable[[dict | None], Path]:
    def default(checkpoint: dict | None = None) -> Path:
        from stages import registry

        return registry.data_dir(*parts)

    return default


def _lazy(module: str, function: str) -> Callable[..., list[dict]]:
    """A loader from another module of this package, imported on first use (those modules import this one)."""
    def load(data: Path, **options) -> list[dict]:
        import importlib

        return getattr(importlib.import_module(module), function)(data, **options)

    return load


_MED, _VLM = "evaluation.medical", "evaluation.vlmeval"
SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("pathmmu", load_pathmmu, _home_data("PathMMU", "data.json"), "PathMMU data.json (mcq)",
          ("PathMMU", "data.json"), "PathMMU release (jamessyx/PathMMU)", "mcq letter"),
    Suite("omnimed", load_omnimed, _home_data("OmniMedVQA", "splits"), "OmniMedVQA / Med-R1 split json (mcq)",
          ("OmniMedVQA", "splits"), "OmniMedVQA QA_information, or Med-R1 modality / question-type splits",
          "mcq letter"),
    Suite("pmcvqa", load_pmcvqa, _home_data("PMC-VQA", "test_clean.csv"), "PMC-VQA csv (mcq)",
          ("PMC-VQA", "test_clean.csv"), "PMC-VQA test_clean.csv (xmcmic/PMC-VQA)", "mcq letter"),
    Suite("pathvqa", load_pathvqa, _home_data("PathVQA"), "PathVQA closed yes/no (parquet/jsonl)",
          ("PathVQA",), "HF flaviagiammarino/path-vqa parquet, or JSONL", "yes/no"),
    Suite("open", load_open, _home_data("PathVQA"), "open-ended VQA: token F1 / exact, optional LLM judge",
          ("PathVQA",), "PathVQA non-yes/no rows, or QA-schema JSONL with kind open",
          "exact match + token F1 (or judge)"),
    Suite("vqarad", _lazy(_MED, "load_vqarad"), _home_data("VQA-RAD"), "VQA-RAD public json (closed + open)",
          ("VQA-RAD",), "VQA_RAD Dataset Public.json + VQA_RAD Image Folder (OSF release)",
          "yes/no; other answers exact match + token F1"),
    Suite("slake", _lazy(_MED, "load_slake"), _home_data("SLAKE"), "SLAKE English test.json (closed + open)",
          ("SLAKE",), "SLAKE test.json + imgs/ (BoKelvin/SLAKE), q_lang en",
          "yes/no; other answers exact match + token F1"),
    Suite("quiltvqa", _lazy(_MED, "load_quiltvqa"), _home_data("Quilt-VQA"), "Quilt-VQA parquet/jsonl",
          ("Quilt-VQA",), "HF wisdomik/Quilt_VQA parquet", "yes/no; open exact match + token F1"),
    Suite("medxpertqa", _lazy(_MED, "load_medxpertqa"), _home_data("MedXpertQA", "MM"), "MedXpertQA-MM jsonl (mcq)",
          ("MedXpertQA", "MM"), "MedXpertQA MM/test.jsonl + images/ (TsinghuaC3I/MedXpertQA)", "mcq letter (A-E)"),
    Suite("mmmu-med", _lazy(_MED, "load_mmmu_med"), _home_data("MMMU"), "MMMU Health & Medicine (mcq, several images)",
          ("MMMU",), "HF MMMU/MMMU parquet, the five Health & Medicine subjects", "mcq letter; open exact + F1"),
    Suite("vlmeval", _lazy(_VLM, "load_vlmeval"), _home_data("vlmeval.tsv"), "any VLMEvalKit MCQ / yes-no / VQA TSV",
          None, "VLMEvalKit TSV (base64 images), e.g. PathMMU / PathVQA / OmniMedVQA as the toolkit ships them",
          "mcq letter, yes/no, or exact + token F1"),
    Suite("demo-mcq", _load_corpora_qa, _demo_path("mcq.jsonl"), "demo corpus held-out mcq", None,
          "built by corpora.demo", "mcq letter"),
    Suite("demo-yesno", _load_corpora_qa, _demo_path("yesno.jsonl"), "demo corpus held-out yes/no", None,
          "built by corpora.demo", "yes/no"),
]}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise SuiteError(f"unknown suite {name!r}; known suites: {', '.join(SUITES)}")
    return SUITES[name]


def suite_data(name: str, data: str | Path | None = None, data_root: str | Path | None = None,
               checkpoint: dict | None = None) -> Path:
    """The data path of suite ``name``: ``data``, else ``data_root``/its layout, else its default location
    (for the demo suites: the corpus the ``checkpoint`` manifest says it trained on)."""
    suite = get_suite(name)
    if data is not None:
        return Path(data)
    if data_root is not None:
        if suite.layout is None:
            raise SuiteError(f"suite {name!r} has no place under --data-root; pass its file with --data {name}=FILE")
        return Path(data_root).joinpath(*suite.layout)
    return suite.default_data(checkpoint)


def load_suite(name: str, data: str | Path | None = None, *, limit: int | None = None, **options) -> list[dict]:
    """Records of suite ``name`` from ``data`` (default: the suite's default location), first ``limit`` only.

    ``options``: ``image_root`` (all suites), ``split`` (pathmmu), ``subset_by`` (omnimed: modality|question_type).
    """
    suite = get_suite(name)
    path = suite_data(name, data)
    if not path.exists():
        raise SuiteError(f"{path}: no such file or folder (data for suite {name!r}; pass --data)")
    records = suite.load(path, **{k: v for k, v in options.items() if v is not None})
    if not records:
        raise SuiteError(f"{path}: no {name} records found")
    return records[:limit] if limit else records
