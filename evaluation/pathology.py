"""Readers for the pathology benchmarks, pointed at each release exactly as it is downloaded.

* ``pathmmu``  PathMMU (HF ``jamessyx/PathMMU``; loader: PathMMU-Benchmark/PathMMU ``eval/utils/data_utils.py``):
  ``data.json`` = ``{subset: {"val"|"test"|"test_tiny": [record]}}``, records ``No`` (restarts in every list),
  ``img`` (a name in ``images/``, or ``images.zip``), ``question``, ``options`` (``"A) text"``), ``answer``
  (``"B) text"``). Default ``test``. Records whose image the release does not ship (SocialPath: fetched from
  Twitter; PathCLS: from other datasets) are skipped and counted, as the official loader does.
* ``pathvqa`` / ``open``  PathVQA (HF ``flaviagiammarino/path-vqa``): ``data/{train,validation,test}-*-of-*.parquet``
  (sharded), ``image`` = ``{bytes, path}``, ``question``, ``answer``. Default ``test``; ``pathvqa`` keeps the yes/no
  rows, ``open`` the others (or QA-schema JSONL with ``kind: open``).
* ``quiltvqa`` Quilt-VQA (HF ``wisdomik/Quilt_VQA``; scorer: Quilt-LLaVA ``llava/eval/quilt_eval.py``): the release
  root holds ``quiltvqa_test_w_ans.json`` (list; ``id``, ``image``, ``question``, ``answer``, ``answer_type``
  OPEN/CLOSED, ``yes_no_answer`` on CLOSED rows), ``quiltvqa_test_wo_ans.jsonl`` (the same questions without
  answers: never read as questions), ``quilt_vqa.zip`` (the images, unpacked once into the cache) and
  ``data/train-*.parquet`` (the HF export: ``image`` struct, ``question``, ``answer``, ``answer_type``,
  ``context``), read only when the answered JSON is absent. CLOSED rows are yes/no questions graded by
  ``yes_no_answer``, else by the answer's leading word ("Yes, there are signs of ..." -> yes).
"""
from __future__ import annotations

import re
from pathlib import Path

from evaluation.reading import (ImageFinder, as_list, count_rows, first_value, image_to_path, is_yesno, json_array_lines,
                                read_json_records, split_rows, strip_option_letters, table_rows, to_record)
from evaluation.releases import Skips, SuiteError, choose_split, extract_once, image_folder

_LEADING_YES_NO = re.compile(r"^\W*(yes|no)\b", re.I)


# ---------------------------------------------------------------------------------------------- PathMMU


def _pathmmu_images(root: Path, image_root) -> ImageFinder:
    if image_root:
        return ImageFinder(None, roots=[Path(image_root)])
    folder = image_folder(root, "images", "images.zip", required=False)
    return ImageFinder(None, roots=([folder] if folder else []) + [root])  # eva's mirror: source_img relative to the root


def load_pathmmu(data: Path, *, split: str | None = None, skips: Skips | None = None, image_root=None,
                 **_) -> list[dict]:
    skips = skips or Skips()
    path = data / "data.json" if data.is_dir() else data
    if not path.is_file():
        raise SuiteError(f"{data}: expected PathMMU's data.json, found no such file; fix: pass the release folder "
                         "(data.json, images/ or images.zip)")
    raw = read_json_records(path)
    groups = {"": {"test": raw}} if isinstance(raw, list) else \
        {k: (v if isinstance(v, dict) else {"test": v}) for k, v in raw.items()}
    available = sorted({s for content in groups.values() for s in content})
    chosen = choose_split(available, split, "test", str(path))
    find = _pathmmu_images(path.parent, image_root)
    out = []
    for subset, content in groups.items():
        for s, rows in content.items():
            if s not in chosen:
                skips.add(f"split {s!r} (reading {', '.join(chosen)})", len(rows))
                continue
            for i, rec in enumerate(rows):
                where = f"{path}: {subset or 'record'}[{s}][{i}]"
                names = as_list(first_value(rec, ("img", "image", "source_img", "images"), where))
                images = [find(n, where, optional=True) for n in names]
                if None in images:
                    skips.add(f"image not in the release ({subset or 'PathMMU'}; the official loader skips it too)")
                    continue
                options = strip_option_letters(as_list(first_value(rec, ("options",), where)))
                rid = rec.get("No", rec.get("id", i))
                out.append(to_record({"id": f"pathmmu-{subset or 'all'}-{s}-{rid}", "question": rec.get("question"),
                                      "options": options, "answer": first_value(rec, ("answer",), where), "kind": "mcq",
                                      "subset": subset or rec.get("subset", "")}, None, where, images=images))
    return out


# ---------------------------------------------------------------------------------------------- PathVQA


def _load_vqa(data: Path, keep_yesno: bool, prefix: str, split, skips, image_root) -> list[dict]:
    out = []
    for s, n, path, where, rec in split_rows(data, split, skips):
        kind = rec.get("kind")  # QA-schema JSONL says; a release's row is yes/no by its answer
        keep = kind == ("yesno" if keep_yesno else "open") if kind else is_yesno(rec.get("answer", "")) == keep_yesno
        if not keep:
            skips.add(f"rows of kind {kind!r}" if kind else "open-ended rows (the `open` suite grades them)"
                      if keep_yesno else "yes/no rows (the `pathvqa` suite grades them)")
            continue
        find = ImageFinder(path, image_root)
        images = [image_to_path(v, find, where) for v in as_list(first_value(rec, ("image", "images"), where))]
        out.append(to_record({"id": rec.get("id") or f"{prefix}-{s}-{n}", "question": rec.get("question"),
                              "options": [], "answer": str(first_value(rec, ("answer",), where)),
                              "kind": "yesno" if keep_yesno else "open", "subset": rec.get("subset", "")},
                             None, where, images=images))
    return out


def load_pathvqa(data: Path, *, split=None, skips: Skips | None = None, image_root=None, **_) -> list[dict]:
    return _load_vqa(data, True, "pathvqa", split, skips or Skips(), image_root)


def load_open(data: Path, *, split=None, skips: Skips | None = None, image_root=None, **_) -> list[dict]:
    return _load_vqa(data, False, "open", split, skips or Skips(), image_root)


# ---------------------------------------------------------------------------------------------- Quilt-VQA

QUILT_ANSWERED = "quiltvqa_test_w_ans.json"


def _quilt_kind(rec: dict) -> tuple[str, str]:
    """(kind, answer): CLOSED rows are yes/no questions, whose answer is a sentence led by yes or no."""
    answer = str(rec.get("answer") or "")
    if str(rec.get("answer_type", "")).upper() == "CLOSED":
        helper = str(rec.get("yes_no_answer") or "").strip().lower()
        lead = _LEADING_YES_NO.match(answer)
        word = helper if helper in ("yes", "no") else lead.group(1).lower() if lead else ""
        if word:
            return "yesno", word
    return "open", answer


def _quilt_image_folder(root: Path, first_image: str | None, image_root) -> Path:
    if image_root:
        return Path(image_root)
    bases = [root]
    if (root / "quilt_vqa.zip").is_file():
        bases.append(extract_once(root / "quilt_vqa.zip"))
    candidates = [b / sub for b in bases for sub in ("images", "quilt_vqa/images", "quilt_vqa", "")]
    for folder in candidates:
        if first_image and (folder / first_image).is_file():
            return folder
    raise SuiteError(f"{root}: expected the Quilt-VQA images (quilt_vqa.zip or images/), found no "
                     f"{first_image!r} in {', '.join(str(c) for c in candidates)}; fix: download quilt_vqa.zip "
                     "into the release folder or pass --image-root")


def _quilt_answered(path: Path, image_root) -> list[dict]:
    rows = json_array_lines(path)
    folder = _quilt_image_folder(path.parent, str(rows[0][1].get("image", "")) if rows else None, image_root)
    out = []
    for line, rec in rows:
        where = f"{path}:{line}"
        kind, answer = _quilt_kind(rec)
        out.append(to_record({"id": f"quiltvqa-{first_value(rec, ('id', 'question_id'), where)}",
                              "images": [str(first_value(rec, ("image",), where))],
                              "question": first_value(rec, ("question", "text"), where), "answer": answer, "kind": kind,
                              "subset": "closed" if str(rec.get("answer_type", "")).upper() == "CLOSED" else "open"},
                             folder, where))
    return out


def _quilt_rows(files: list[Path], image_root) -> list[dict]:
    out = []
    for path in files:
        find = ImageFinder(path, image_root)
        for where, rec in table_rows(path):
            if rec.get("image") in (None, ""):
                raise SuiteError(f"{where}: missing field 'image'")
            kind, answer = _quilt_kind(rec)
            closed = str(rec.get("answer_type", "")).upper() == "CLOSED"
            out.append(to_record({"id": rec.get("id") or f"quiltvqa-test-{len(out)}",
                                  "question": rec.get("question"), "answer": answer, "kind": kind,
                                  "subset": "closed" if closed else "open"}, None, where,
                                 images=[image_to_path(rec["image"], find, where)]))
    return out


def load_quiltvqa(data: Path, *, split: str | None = None, skips: Skips | None = None, image_root=None,
                  **_) -> list[dict]:
    skips = skips or Skips()
    choose_split(["test"], split, "test", str(data))  # one evaluation split (HF names its parquet "train")
    if data.is_file():
        if "wo_ans" in data.name:
            raise SuiteError(f"{data}: expected questions with answers, found the question file without answers; "
                             f"fix: pass {data.parent / QUILT_ANSWERED} or the release folder")
        return _quilt_answered(data, image_root) if data.suffix == ".json" else _quilt_rows([data], image_root)
    if not data.is_dir():
        raise SuiteError(f"{data}: no such file or folder")
    for helper in sorted(data.glob("*wo_ans*.jsonl")):
        skips.add(f"{helper.name} (the same questions without answers)", count_rows(helper))
    tables = sorted(p for sub in (data / "data", data) for p in sub.glob("*.parquet")) + \
        sorted(p for p in data.glob("*.jsonl") if "wo_ans" not in p.name)
    if (data / QUILT_ANSWERED).is_file():
        for t in tables:
            skips.add(f"{t.name} (the HF export; {QUILT_ANSWERED} is the file the Quilt-LLaVA scorer reads)",
                      count_rows(t))
        return _quilt_answered(data / QUILT_ANSWERED, image_root)
    if not tables:
        raise SuiteError(f"{data}: expected {QUILT_ANSWERED} or data/*.parquet, found neither; fix: pass the "
                         "Quilt_VQA release folder")
    return _quilt_rows(tables, image_root)
