"""Readers for the medical VQA benchmarks, pointed at each release exactly as it is downloaded.

Each reader accepts the release root (and the documented sub-paths: a split file, a subject folder), reads by
default the split papers report, and counts what it leaves out (``evaluation.releases.Skips``). One published
record becomes the raw QA columns handed to ``corpora.records.normalize_qa`` (the normalisation training uses),
so an answer is read the same way everywhere. Errors name the file and line (JSON / JSONL) or row (parquet).

* ``vqarad``     VQA-RAD OSF release: ``VQA_RAD Dataset Public.json`` (list; ``qid``, ``image_name``, ``question``,
  ``answer``, ``answer_type`` CLOSED/OPEN, ``phrase_type`` test_freeform / test_para = the test split,
  freeform / para = train), images in ``VQA_RAD Image Folder/``; or the HF mirror ``flaviagiammarino/vqa-rad``
  (``data/{train,test}-*.parquet``, lmms-eval's source). Default ``test``.
* ``slake``      SLAKE (HF ``BoKelvin/SLAKE``): ``train.json``, ``validation.json``, ``test.json`` (lists; ``qid``,
  ``img_name``, ``question``, ``answer``, ``q_lang`` en/zh, ``answer_type``), images in ``imgs/`` or ``imgs.zip``.
  Default ``test``, English questions only (the Chinese half is counted as skipped).
* ``medxpertqa`` MedXpertQA (HF ``TsinghuaC3I/MedXpertQA``): ``MM/{dev,test}.jsonl``, ``Text/{dev,test}.jsonl``,
  ``images.zip`` (unpacks to ``images/`` beside ``MM/``). Default MM ``test``; ``Text`` (no images) is never read.
  The question ends in an ``Answer Choices:`` block, dropped (our prompt lists ``options``); ``label`` is the
  letter; ``question_type`` (Reasoning / Understanding) is the subset.
* ``mmmu-med``   MMMU (HF ``MMMU/MMMU``): ``<Subject>/{dev,validation,test}-00000-of-00001.parquet``. Default the
  ``validation`` split of the five Health & Medicine subjects (papers report it: test answers are withheld, ``?``,
  so ``--split test`` is refused). ``options`` is a Python list literal, images are ``image_1`` … ``image_7``
  structs, ``<image n>`` stays in the text so the model knows which image is which; open questions are ``open``.

Closed questions are graded by ``corpora.grading`` (letters, yes/no). Closed questions with other answers
(SLAKE "Left", VQA-RAD "CT") and open ones have ``kind: open``: ``correct`` is the normalised exact match,
``score`` the token F1 (or the judge's score).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from evaluation.reading import ImageFinder, as_list, count_rows, image_to_path, json_array_lines, split_rows, table_rows, \
    to_record
from evaluation.releases import Skips, SuiteError, choose_split, image_folder, shard_split

MMMU_HEALTH_MEDICINE = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                        "Pharmacy", "Public_Health")
_IMAGE_REF = re.compile(r"<image (\d+)>")
_ANSWER_CHOICES = re.compile(r"\s*Answer Choices:.*\Z", re.S)


def _split_files(folder: Path, pattern: str) -> dict[str, Path]:
    return {shard_split(p): p for p in sorted(folder.glob(pattern))}


def _skip_other_splits(skips: Skips, files: dict[str, Path], chosen: list[str], what: str = "") -> None:
    for name, path in files.items():
        if name not in chosen:
            skips.add(f"split {name!r}{what} (reading {', '.join(chosen)})", count_rows(path))


# ---------------------------------------------------------------------------------------------- VQA-RAD


def _vqarad_parquet(data: Path, split, skips: Skips, image_root) -> list[dict]:
    """The HF mirror (flaviagiammarino/vqa-rad: data/{train,test}-*.parquet; image struct, question, answer). It
    has no answer_type: yes/no answers are the closed subset here, every other answer is graded open."""
    out = []
    for s, n, path, where, rec in split_rows(data, split, skips):
        find = ImageFinder(path, image_root)
        yesno = str(rec.get("answer", "")).strip().lower() in ("yes", "no")
        out.append(to_record({"id": f"vqarad-{s}-{n}", "question": rec.get("question"), "answer": rec.get("answer"),
                              "subset": "closed" if yesno else "open"}, None, where,
                             images=[image_to_path(rec.get("image"), find, where)]))
    return out


def load_vqarad(data: Path, *, split: str | None = None, skips: Skips | None = None, image_root=None,
                **_) -> list[dict]:
    skips = skips or Skips()
    if data.is_dir() and not (data / "VQA_RAD Dataset Public.json").is_file() and \
            any(p.suffix == ".parquet" for sub in (data, data / "data") for p in sub.glob("*.parquet")):
        return _vqarad_parquet(data, split, skips, image_root)
    if data.is_file() and data.suffix == ".parquet":
        return _vqarad_parquet(data, split, skips, image_root)
    path = data / "VQA_RAD Dataset Public.json" if data.is_dir() else data
    if not path.is_file():
        raise SuiteError(f"{data}: expected 'VQA_RAD Dataset Public.json' (the OSF release), found no such file; "
                         "fix: pass the release folder or the JSON file")
    records = json_array_lines(path)
    by_split = {"test": [], "train": []}
    for line, rec in records:
        by_split["test" if str(rec.get("phrase_type", "")).startswith("test") else "train"].append((line, rec))
    chosen = choose_split([s for s in by_split if by_split[s]], split, "test", str(path), strict=True)
    for s, rows in by_split.items():
        if s not in chosen:
            skips.add(f"split {s!r} (phrase_type {'test_*' if s == 'test' else 'freeform/para'})", len(rows))
    out = []
    for line, rec in (r for s in chosen for r in by_split[s]):
        where = f"{path}:{line}"
        if "image_name" not in rec:
            raise SuiteError(f"{where}: missing field 'image_name'")
        closed = str(rec.get("answer_type", "")).upper().startswith("CLOSED")
        out.append(to_record({"id": f"vqarad-{rec.get('qid', line)}", "images": [
            f"VQA_RAD Image Folder/{rec['image_name']}"], "question": rec.get("question"), "answer": rec.get("answer"),
            "subset": "closed" if closed else "open"}, path.parent, where))
    return out


# ---------------------------------------------------------------------------------------------- SLAKE


def load_slake(data: Path, *, split: str | None = None, skips: Skips | None = None, image_root=None,
               **_) -> list[dict]:
    skips = skips or Skips()
    if data.is_dir():
        files = {n: data / f"{n}.json" for n in ("train", "validation", "test") if (data / f"{n}.json").is_file()}
        if not files:
            raise SuiteError(f"{data}: expected SLAKE's train.json / validation.json / test.json, found none; "
                             "fix: pass the SLAKE release folder")
        root = data
    else:
        files, root = {data.stem: data}, data.parent
    chosen = choose_split(files, split, "test" if "test" in files else next(iter(files)), str(data))
    _skip_other_splits(skips, files, chosen)
    imgs = Path(image_root) if image_root else image_folder(root, "imgs", "imgs.zip")
    out = []
    for s in chosen:
        for line, rec in json_array_lines(files[s]):
            if rec.get("q_lang", "en") != "en":
                skips.add(f"q_lang {rec.get('q_lang')!r} (the English benchmark)")
                continue
            where = f"{files[s]}:{line}"
            if "img_name" not in rec:
                raise SuiteError(f"{where}: missing field 'img_name'")
            closed = str(rec.get("answer_type", "")).upper() == "CLOSED"
            out.append(to_record({"id": f"slake-{s}-{rec.get('qid', line)}", "images": [str(rec["img_name"])],
                                  "question": rec.get("question"), "answer": rec.get("answer"),
                                  "subset": "closed" if closed else "open"}, imgs, where))
    return out


# ---------------------------------------------------------------------------------------------- MedXpertQA


def _medxpertqa_layout(data: Path, skips: Skips) -> tuple[Path, dict[str, Path]]:
    """(folder of the MM files, split -> MM file) for the release root, the ``MM`` folder or one split file."""
    text_only = SuiteError(f"{data}: expected MedXpertQA's MM subset, found the text-only subset (no images); "
                           f"fix: pass the release root or its MM/ folder")
    if data.is_file():
        if data.parent.name == "Text":
            raise text_only
        return data.parent, {shard_split(data): data}
    if data.name == "Text":
        raise text_only
    mm = data / "MM" if (data / "MM").is_dir() else data
    for text_file in sorted((data / "Text").glob("*.jsonl")):
        skips.add("MedXpertQA Text subset (text-only questions; this suite is MM)", count_rows(text_file))
    files = _split_files(mm, "*.jsonl")
    if not files:
        raise SuiteError(f"{data}: expected MedXpertQA's MM/test.jsonl, found no .jsonl file; fix: pass the "
                         "release root (MM/, Text/, images.zip)")
    return mm, files


def _medxpertqa_images(mm: Path) -> Path:
    """``images/`` beside ``MM/`` (images.zip unpacked at the root, as released), or inside ``MM/``."""
    for folder in (mm / "images", mm.parent / "images"):
        if folder.is_dir():
            return folder
    return image_folder(mm.parent, "images", "images.zip")


def load_medxpertqa(data: Path, *, split: str | None = None, skips: Skips | None = None, image_root=None,
                    **_) -> list[dict]:
    skips = skips or Skips()
    mm, files = _medxpertqa_layout(data, skips)
    chosen = choose_split(files, split, "test" if "test" in files else next(iter(files)), str(data))
    _skip_other_splits(skips, files, chosen)
    images = Path(image_root) if image_root else _medxpertqa_images(mm)
    out = []
    for s in chosen:
        for where, rec in table_rows(files[s]):
            if not isinstance(rec.get("options"), dict):
                raise SuiteError(f"{where}: expected 'options' as a mapping {{\"A\": text, ...}}, found "
                                 f"{type(rec.get('options')).__name__}")
            question = _ANSWER_CHOICES.sub("", str(rec.get("question", ""))).strip()
            out.append(to_record({"id": f"medxpertqa-{s}-{rec.get('id')}",
                                  "images": [str(n) for n in as_list(rec.get("images") or [])],
                                  "question": question, "options": rec["options"], "answer": rec.get("label"),
                                  "subset": str(rec.get("question_type") or "")}, images, where))
    return out


# ---------------------------------------------------------------------------------------------- MMMU


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


_MMMU_TEST = "MMMU's test answers are withheld (every answer is '?'); fix: use --split validation (the split papers report)"


def _mmmu_files(data: Path, subjects: tuple[str, ...], skips: Skips) -> list[Path]:
    if data.is_file():
        return [data]
    pattern = ("*.parquet", "*.jsonl")
    if data.name in subjects or not any(p.is_dir() for p in data.iterdir()):
        return sorted(p for pat in pattern for p in data.glob(pat))
    files = []
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        found = sorted(p for pat in pattern for p in folder.glob(pat))
        if folder.name in subjects:
            files += found
        elif found:
            skips.add("other MMMU subjects (not Health & Medicine)", sum(count_rows(f) for f in found))
    if not files:
        raise SuiteError(f"{data}: expected MMMU subject folders {', '.join(subjects)}, found none; fix: pass the "
                         "MMMU release root (one folder per subject)")
    return files


def load_mmmu_med(data: Path, *, split: str | None = None, skips: Skips | None = None, image_root=None,
                  subjects: tuple[str, ...] = MMMU_HEALTH_MEDICINE, **_) -> list[dict]:
    skips = skips or Skips()
    files = _mmmu_files(data, subjects, skips)
    splits = [shard_split(f) for f in files]
    chosen = choose_split(splits, split, "validation" if "validation" in splits else splits[0], str(data),
                          refused={"test": _MMMU_TEST})
    for f, s in zip(files, splits):
        if s not in chosen:
            skips.add(f"split {s!r} ({'answers withheld' if s == 'test' else 'reading ' + ', '.join(chosen)})",
                      count_rows(f))
    out = []
    for path in (f for f, s in zip(files, splits) if s in chosen):
        find = ImageFinder(path, image_root)
        for where, rec in table_rows(path):
            if str(rec.get("answer", "")).strip() == "?":
                raise SuiteError(f"{where}: expected an answer, found '?': {_MMMU_TEST}")
            images = {n: rec[f"image_{n}"] for n in range(1, 8) if rec.get(f"image_{n}") not in (None, "")}
            options = _literal_list(rec.get("options"), where)
            text = " ".join([str(rec.get("question", "")), *options])
            missing = sorted({int(n) for n in _IMAGE_REF.findall(text)} - set(images))
            if missing:
                raise SuiteError(f"{where}: the text refers to <image {missing[0]}> but image_{missing[0]} is empty")
            paths = [image_to_path(images[n], find, where) for n in sorted(images)]
            mcq = str(rec.get("question_type", "multiple-choice")) == "multiple-choice"
            subject = re.sub(r"^(validation|dev|test)_|_\d+$", "", str(rec.get("id", "")))
            raw = {"id": rec.get("id"), "question": rec.get("question"),
                   "options": options if mcq else [], "answer": rec.get("answer"),
                   "kind": "mcq" if mcq else "open", "subset": subject}
            out.append(to_record(raw, None, where, images=paths))  # found (escape-checked) or cached by now
    return out
