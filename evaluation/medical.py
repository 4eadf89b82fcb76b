"""Readers for the medical VQA benchmarks in the formats their authors publish them in.

Each reader maps one published record onto the raw QA columns and hands it to ``corpora.records.normalize_qa``
(the normalisation training uses: option mapping via ``corpora.grading.match_option``, yes/no answers, the
check that an image path cannot escape the dataset root), so an answer is read the same way everywhere. Errors
name the file and line (JSON / JSONL / TSV) or row (parquet).

* ``vqarad``     VQA-RAD ``VQA_RAD Dataset Public.json`` (list; ``qid``, ``image_name``, ``question``, ``answer``,
  ``answer_type`` CLOSED/OPEN, ``phrase_type`` test_freeform / test_para / freeform / para, ``image_organ``);
  images in ``VQA_RAD Image Folder/`` beside it. ``split="test"`` (default) keeps ``phrase_type`` ``test_*``.
* ``slake``      SLAKE ``test.json`` (list; ``qid``, ``img_name``, ``question``, ``answer``, ``q_lang``,
  ``answer_type`` CLOSED/OPEN, ``modality``); images in ``imgs/``. English (``q_lang == "en"``) only.
* ``quiltvqa``   Quilt-VQA (HF ``wisdomik/Quilt_VQA``): parquet or JSONL with ``image`` (``{bytes, path}`` or a
  path), ``question``, ``answer``, ``answer_type`` (open / closed).
* ``medxpertqa`` MedXpertQA ``MM/test.jsonl``: ``id``, ``question`` (ending in an ``Answer Choices:`` block that is
  dropped: our prompt lists the options), ``options`` ``{"A": …}``, ``label``, ``images`` (names in ``images/``),
  ``medical_task``, ``body_system``, ``question_type`` (the subset).
* ``mmmu-med``   MMMU Health & Medicine (HF ``MMMU/MMMU``): ``<Subject>/*.parquet`` (or JSONL) with ``id``,
  ``question`` and ``options`` (a Python-literal list) that refer to images as ``<image n>``, ``image_1`` …
  ``image_7``, ``answer``, ``question_type`` (multiple-choice / open), ``subfield``. Images are passed in
  ``image_n`` order and the placeholders stay in the text, so the model knows which image is which.

Closed questions are graded by ``corpora.grading`` (letters, yes/no). Closed questions with other answers
(SLAKE "Left", VQA-RAD "CT") and open ones have ``kind: open``: ``correct`` is the normalised exact match,
``score`` the token F1 (or the judge's score).
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from evaluation.suites import SuiteError, _as_list, _files, _image_to_path, _ImageFinder, to_record

MMMU_HEALTH_MEDICINE = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                        "Pharmacy", "Public_Health")
_IMAGE_REF = re.compile(r"<image (\d+)>")
_ANSWER_CHOICES = re.compile(r"\s*Answer Choices:.*\Z", re.S)


def json_array_lines(path: Path) -> list[tuple[int, dict]]:
    """``(line, record)`` for each element of a JSON array file, so errors can say ``file:line``."""
    text = path.read_text(encoding="utf-8")
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

        return [(f"{path}: row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise SuiteError(f"{path}:{n}: invalid JSON: {e.msg}") from None
    return rows


def _json_list_file(data: Path, names: tuple[str, ...]) -> Path:
    if data.is_dir():
        found = [data / n for n in names if (data / n).is_file()]
        if not found:
            raise SuiteError(f"{data}: none of {', '.join(names)} in this folder")
        return found[0]
    return data


def load_vqarad(data: Path, *, split: str = "test", **_) -> list[dict]:
    path = _json_list_file(data, ("VQA_RAD Dataset Public.json", "testset.json", "test.json"))
    out = []
    for line, rec in json_array_lines(path):
        phrase = str(rec.get("phrase_type", ""))
        if split != "all" and phrase and phrase.startswith("test") != (split == "test"):
            continue
        where = f"{path}:{line}"
        if "image_name" not in rec:
            raise SuiteError(f"{where}: missing field 'image_name'")
        closed = str(rec.get("answer_type", "")).upper().startswith("CLOSED")
        out.append(to_record({"id": f"vqarad-{rec.get('qid', line)}", "images": [
            f"VQA_RAD Image Folder/{rec['image_name']}"], "question": rec.get("question"), "answer": rec.get("answer"),
            "subset": "closed" if closed else "open"}, path.parent, where))
    return out


def load_slake(data: Path, **_) -> list[dict]:
    path = _json_list_file(data, ("test.json",))
    out = []
    for line, rec in json_array_lines(path):
        if rec.get("q_lang", "en") != "en":
            continue
        where = f"{path}:{line}"
        if "img_name" not in rec:
            raise SuiteError(f"{where}: missing field 'img_name'")
        closed = str(rec.get("answer_type", "")).upper() == "CLOSED"
        out.append(to_record({"id": f"slake-{rec.get('qid', line)}", "images": [f"imgs/{rec['img_name']}"],
                              "question": rec.get("question"), "answer": rec.get("answer"),
                              "subset": "closed" if closed else "open"}, path.parent, where))
    return out


def load_quiltvqa(data: Path, *, image_root=None, **_) -> list[dict]:
    out = []
    for path in _files(data, ("*.parquet", "*.jsonl")):
        find = _ImageFinder(path, image_root)
        for i, (where, rec) in enumerate(table_rows(path)):
            if rec.get("image") in (None, ""):
                raise SuiteError(f"{where}: missing field 'image'")
            image = _image_to_path(rec["image"], find, where)
            out.append(to_record({"id": rec.get("id") or f"quiltvqa-{path.stem}-{i}", "images": [image],
                                  "question": rec.get("question"), "answer": rec.get("answer"),
                                  "subset": str(rec.get("answer_type") or "")}, Path(image).parent, where))
    return out


def load_medxpertqa(data: Path, **_) -> list[dict]:
    path = data / "test.jsonl" if data.is_dir() else data
    out = []
    for where, rec in table_rows(path):
        if not isinstance(rec.get("options"), dict):
            raise SuiteError(f"{where}: 'options' must be a mapping {{\"A\": text, ...}}")
        question = _ANSWER_CHOICES.sub("", str(rec.get("question", ""))).strip()
        out.append(to_record({"id": rec.get("id"), "images": [f"images/{n}" for n in _as_list(rec.get("images") or [])],
                              "question": question, "options": rec["options"], "answer": rec.get("label"),
                              "subset": str(rec.get("question_type") or "")}, path.parent, where))
    return out


def _literal_list(value, where: str) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    try:
        parsed = ast.literal_eval(str(value)) if value not in (None, "") else []
    except (ValueError, SyntaxError):
        raise SuiteError(f"{where}: 'options' is not a list literal: {value!r:.200}") from None
    if not isinstance(parsed, list):
        raise SuiteError(f"{where}: 'options' is not a list: {value!r:.200}")
    return [str(v) for v in parsed]


def load_mmmu_med(data: Path, *, image_root=None, subjects: tuple[str, ...] = MMMU_HEALTH_MEDICINE, **_) -> list[dict]:
    files = _files(data, ("*.parquet", "*.jsonl"))
    if data.is_dir() and data.name not in subjects:  # the HF layout: one folder per subject; keep Health & Medicine
        files = [f for f in files if set(f.relative_to(data).parts[:-1]) & set(subjects)]
        if not files:
            raise SuiteError(f"{data}: no subject folder of {', '.join(subjects)}")
    out = []
    for path in files:
        find = _ImageFinder(path, image_root)
        for where, rec in table_rows(path):
            images = {n: rec[f"image_{n}"] for n in range(1, 8) if rec.get(f"image_{n}") not in (None, "")}
            options = _literal_list(rec.get("options"), where)
            text = " ".join([str(rec.get("question", "")), *options])
            missing = sorted({int(n) for n in _IMAGE_REF.findall(text)} - set(images))
            if missing:
                raise SuiteError(f"{where}: the text refers to <image {missing[0]}> but image_{missing[0]} is empty")
            paths = [_image_to_path(images[n], find, where) for n in sorted(images)]
            mcq = str(rec.get("question_type", "multiple-choice")) == "multiple-choice"
            subject = re.sub(r"^(validation|dev|test)_|_\d+$", "", str(rec.get("id", "")))
            raw = {"id": rec.get("id"), "question": rec.get("question"),
                   "options": options if mcq else [], "answer": rec.get("answer"),
                   "kind": "mcq" if mcq else "open", "subset": subject}
            out.append(to_record(raw, None, where, images=paths))  # found (escape-checked) or cached by now
    return out
