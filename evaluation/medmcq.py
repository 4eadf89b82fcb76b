"""Readers for the multiple-choice medical VQA releases: OmniMedVQA, the Med-R1 splits of it, PMC-VQA.

* ``omnimed``  OmniMedVQA release root (``OmniMedVQA/``): ``QA_information/Open-access/<dataset>.json`` and
  ``QA_information/Restricted-access/<dataset>.json`` (lists; ``dataset``, ``question_id``, ``question_type``,
  ``question``, ``gt_answer`` = the option text, ``option_A`` .. ``option_D`` (2 to 4 of them), ``image_path``
  relative to the root, e.g. ``Images/Chest CT Scan/test/adenocarcinoma/000108 (3).png``, ``modality_type`` --
  one file writes ``modality`` instead) and ``Images/``. Default ``open`` (Open-access): the Restricted-access
  images are not in the release, so those items are counted as skipped; ``--split restricted|all`` reads them
  from your own copy. Or Med-R1 split files (``image``, ``problem`` = ``"question? A)x, B)y"``, ``solution`` =
  ``"<answer> C </answer>"``), as given: one file or a folder (``*_test.json`` by default; subset = file name).
* ``pmcvqa``   PMC-VQA (HF ``xmcmic/PMC-VQA``): ``train.csv``, ``test.csv``, ``test_clean.csv`` (+ ``*_2.csv`` of
  v2), ``images.zip`` (unpacks to ``images/``). Columns ``Figure_path, Question, Answer, Choice A..D`` (``"A:CT"``),
  ``Answer_label``. Default ``test_clean`` (the cleaned test set papers report).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from corpora.grading import LETTERS
from evaluation.reading import (ANSWER_TAG, ImageFinder, count_rows, first_value, inline_options, json_array_lines,
                                strip_option_letters, to_record)
from evaluation.releases import Skips, SuiteError, choose_split, extract_once

_ACCESS = {"open": "Open-access", "restricted": "Restricted-access"}
_MEDR1_SPLIT = re.compile(r"_(test|train|val)$")


def _omnimed_files(data: Path, split: str | None, skips: Skips) -> tuple[list[tuple[str, Path]], Path | None]:
    """``[(split, file)]`` and the release root (None for Med-R1 split files)."""
    qa = data / "QA_information" if (data / "QA_information").is_dir() else data if data.name == "QA_information" \
        else None
    if qa is None and data.is_dir() and data.name in _ACCESS.values():
        qa = data.parent
        split = split or next(k for k, v in _ACCESS.items() if v == data.name)
    if qa is not None:
        folders = {k: qa / v for k, v in _ACCESS.items() if (qa / v).is_dir()}
        chosen = choose_split(folders, split, "open", str(qa))
        for s, folder in folders.items():
            if s not in chosen:
                why = "images are not in the release" if s == "restricted" else f"reading {', '.join(chosen)}"
                skips.add(f"{_ACCESS[s]} items ({why})", sum(count_rows(f) for f in folder.glob("*.json")))
        return [(s, f) for s in chosen for f in sorted(folders[s].glob("*.json"))], qa.parent
    if data.is_file() and data.parent.name in _ACCESS.values():  # one OmniMedVQA dataset file
        return [(next(k for k, v in _ACCESS.items() if v == data.parent.name), data)], data.parent.parent.parent
    if data.is_file():
        return [(_MEDR1_SPLIT.search(data.stem).group(1) if _MEDR1_SPLIT.search(data.stem) else "test", data)], None
    if not data.is_dir():
        raise SuiteError(f"{data}: no such file or folder")
    files = sorted(data.rglob("*.json"))
    groups: dict[str, list[Path]] = {}
    for f in files:
        m = _MEDR1_SPLIT.search(f.stem)
        groups.setdefault(m.group(1) if m else "test", []).append(f)
    if not groups:
        raise SuiteError(f"{data}: expected OmniMedVQA's QA_information/ or Med-R1 split *.json files, found none")
    chosen = choose_split(groups, split, "test", str(data))
    for s, fs in groups.items():
        if s not in chosen:
            skips.add(f"Med-R1 {s} split files (reading {', '.join(chosen)})", sum(count_rows(f) for f in fs))
    return [(s, f) for s in chosen for f in groups[s]], None


def load_omnimed(data: Path, *, split: str | None = None, skips: Skips | None = None, image_root=None,
                 subset_by: str = "modality", **_) -> list[dict]:
    skips = skips or Skips()
    files, root = _omnimed_files(data, split, skips)
    out = []
    for s, path in files:
        find = ImageFinder(None, roots=[Path(image_root)]) if image_root else \
            ImageFinder(None, roots=[root]) if root else ImageFinder(path, None)
        file_subset = re.sub(r"(_filtered)?_(test|train|val)$", "", path.stem)
        for i, (line, rec) in enumerate(json_array_lines(path)):  # ids count records: one-line files exist
            where = f"{path}:{line}"
            if "problem" in rec:  # Med-R1 split
                question, options = inline_options(rec["problem"], where)
                tag = ANSWER_TAG.search(str(rec.get("solution", "")))
                answer = tag.group(1) if tag else rec.get("solution", "")
                image, subset = first_value(rec, ("image", "image_path"), where), file_subset
                rid = f"omnimed-{file_subset}-{s}-{i}"
            else:  # OmniMedVQA QA_information
                options = [rec[f"option_{c}"] for c in LETTERS if rec.get(f"option_{c}") not in (None, "")]
                question, answer = first_value(rec, ("question",), where), first_value(rec, ("gt_answer", "answer"), where)
                image = first_value(rec, ("image_path", "image"), where)
                subset = rec.get("question_type") if subset_by == "question_type" else \
                    rec.get("modality_type") or rec.get("modality")  # one release file writes `modality`
                rid = f"omnimed-{s}-{file_subset}-{rec.get('question_id', i)}"
            try:
                found = find(image, where)
            except SuiteError as e:
                if root or image_root:
                    raise
                raise SuiteError(f"{e}; fix: --image-root the OmniMedVQA folder (Med-R1's image paths, "
                                 "'Images/...', start there)") from None
            out.append(to_record({"id": rid, "question": question, "options": options, "answer": answer,
                                  "kind": "mcq", "subset": subset or file_subset}, None, where, images=[found]))
    return out


def _pmcvqa_images(root: Path, image_root) -> ImageFinder:
    if image_root:
        return ImageFinder(None, roots=[Path(image_root)])
    folders = [root / n for n in ("images", "figures", "images_2") if (root / n).is_dir()]
    for archive in ("images.zip", "images_2.zip"):
        if (root / archive).is_file() and not folders:
            unpacked = extract_once(root / archive)
            folders += [p for p in (unpacked / "images", unpacked / "figures", unpacked) if p.is_dir()]
    return ImageFinder(None, roots=folders + [root])


def load_pmcvqa(data: Path, *, split: str | None = None, skips: Skips | None = None, image_root=None,
                **_) -> list[dict]:
    skips = skips or Skips()
    files = {p.stem: p for p in sorted(data.glob("*.csv"))} if data.is_dir() else {data.stem: data}
    if not files:
        raise SuiteError(f"{data}: expected PMC-VQA's test_clean.csv / test.csv / train.csv, found no .csv file")
    chosen = choose_split(files, split, "test_clean", str(data))
    for s, f in files.items():
        if s not in chosen:
            with f.open(newline="", encoding="utf-8", errors="replace") as fh:
                skips.add(f"split {s!r} (reading {', '.join(chosen)})", max(0, sum(1 for _ in csv.reader(fh)) - 1))
    find = _pmcvqa_images(data if data.is_dir() else data.parent, image_root)
    out = []
    for s in chosen:
        path = files[s]
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"Figure_path", "Question", "Choice A"} - set(reader.fieldnames or ())
            if missing:
                raise SuiteError(f"{path}:1: expected PMC-VQA columns {sorted(missing)}, found "
                                 f"{reader.fieldnames}; fix: pass test_clean.csv from the release")
            for line, row in enumerate(reader, 2):
                where = f"{path}:{line}"
                raw = [row[f"Choice {c}"] for c in LETTERS if row.get(f"Choice {c}") not in (None, "")]
                label = (row.get("Answer_label") or "").strip() or row.get("Answer", "")
                rid = (row.get("index") or "").strip() or str(line - 1)
                out.append(to_record({"id": f"pmcvqa-{s}-{rid}", "question": row["Question"],
                                      "options": strip_option_letters(raw), "answer": label, "kind": "mcq",
                                      "subset": row.get("subset", "")}, None, where,
                                     images=[find(row["Figure_path"].strip(), where)]))
    return out
