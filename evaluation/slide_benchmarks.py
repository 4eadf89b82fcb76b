"""Readers for the slide-level benchmarks, pointed at each release as it is downloaded, plus the TCGA slides
(from the GDC: ``<slide barcode>.<uuid>.svs``) under a slide folder (``--image-root``, default: the data file's
folder, searched recursively). Each question becomes a QA record whose images are the tiles of its slide
(corpora.slides.sampling, with the evaluated checkpoint's ``slides.*`` settings).

* ``slidebench`` SlideBench-VQA (TCGA) (SlideChat, HF ``General-Medical-AI/SlideChat``; its evaluation reads the
  CSV with columns ``ID, Slide, Tumor, Broad Category, Narrow Category, Question, A, B, C, D, Answer``, the answer a
  letter, ``Slide`` a TCGA slide barcode such as ``TCGA-05-4244-01Z-00-DX1``). Subset: ``Broad Category``.
* ``wsivqa`` WSI-VQA (cpystan/WSI-VQA ``dataset/WSI_captions/WsiVQA_{train,val,test}.json``): a JSON list of
  ``{"Id": TCGA case (12 characters), "Question", "Choice": [4 option texts] (closed questions only), "Answer"}``
  (the option's text for closed questions, free text -- a receptor status, a survival time in days -- for open
  ones). Its loader pairs a case with the case's diagnostic slide (a name holding ``DX1``, case = name[:12]).
  Default file ``WsiVQA_test.json``; a closed answer that is none of its choices is skipped and counted.
* ``wsibench`` WSI-Bench (WSI-LLaVA, ``dataset/WSI-Bench_test.json``): LLaVA records ``{"id", "image":
  "TCGA-LUSC/<slide name>.pt" (its features), "conversations": [{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": ...}]}``; closed questions carry their options in the question on one line
  (``... A) x. B) y. C) z. D) w.``) and a letter answer, report questions a free-text answer. The slide is
  ``<slide name>.svs`` (any slide suffix) anywhere under the slide folder. Subset: the TCGA project.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from evaluation.reading import is_yesno, read_json_records, to_record
from evaluation.releases import Skips, SuiteError

_INLINE_OPTION = re.compile(r"(?:^|\s)\(?([A-J])\)\s+")
_IMAGE_TAG = re.compile(r"^\s*<image>\s*")


def slide_sampling(checkpoint):
    """The evaluated checkpoint's ``slides.*`` settings (what it trained on), else corpora's defaults."""
    from corpora.slides.sampling import SlideSampling
    from stages.registry import Registry

    trained = ((checkpoint or {}).get("config") or {}).get("slides")
    return SlideSampling(**trained).resolved(Registry().resolve) if isinstance(trained, dict) else SlideSampling()


class SlideFolder:
    """Every slide file under ``root`` (recursive), found by full name, name without suffix, barcode prefix
    (``<barcode>.<uuid>``) or TCGA case (``DX`` slides first, as WSI-VQA's loader does)."""

    def __init__(self, root: Path):
        from corpora.slides import SLIDE_SUFFIXES

        self.root = Path(root)
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file())

    def by_name(self, name: str) -> Path | None:
        stem = Path(name).name
        stem = stem[: -len(Path(stem).suffix)] if Path(stem).suffix in (".pt", ".h5", ".npy") else stem
        for f in self.files:
            if f.name == stem or f.stem == stem or f.name.startswith(stem + "."):
                return f
        return None

    def by_case(self, case: str) -> Path | None:
        hits = [f for f in self.files if f.name[:12] == case]
        return next((f for f in hits if "DX1" in f.name), next((f for f in hits if "DX" in f.name), None))


class _Builder:
    """QA records whose images are their slide's tiles; a slide that is missing is skipped and counted, one that
    cannot be read is an error naming the record."""

    def __init__(self, data: Path, image_root, checkpoint, skips: Skips | None):
        self.slides = SlideFolder(Path(image_root) if image_root else (data if data.is_dir() else data.parent))
        self.sampling = slide_sampling(checkpoint)
        self.skips = skips or Skips()
        self.records: list[dict] = []

    def add(self, where: str, slide: Path | None, raw: dict) -> None:
        from corpora.slides import SlideError
        from corpora.slides.sampling import slide_images

        if slide is None:
            self.skips.add(f"slide not under {self.slides.root}")
            return
        try:
            images = slide_images(slide, self.sampling, text=str(raw.get("question", "")))
        except SlideError as e:
            raise SuiteError(f"{where}: {e}") from None
        self.records.append(to_record(raw, None, where, images=images))


def _file(data: Path, names: tuple[str, ...]) -> Path:
    if data.is_file():
        return data
    for name in names:
        if (data / name).is_file():
            return data / name
    raise SuiteError(f"{data}: expected one of {', '.join(names)}, found none; fix: pass the file with --data")


def _json_list(path: Path, what: str) -> list:
    rows = read_json_records(path)
    if not isinstance(rows, list):
        raise SuiteError(f"{path}: expected a JSON list of {what} records, found {type(rows).__name__}")
    return rows


def load_slidebench(data: Path, *, image_root=None, checkpoint=None, skips: Skips | None = None, **_) -> list[dict]:
    path = _file(data, ("SlideBench-VQA (TCGA).csv", "SlideBench-VQA-TCGA.csv"))
    build = _Builder(path, image_root, checkpoint, skips)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"Slide", "Question", "A", "B", "C", "D", "Answer"} - set(reader.fieldnames or ())
        if missing:
            raise SuiteError(f"{path}: expected SlideBench columns ID, Slide, Tumor, Broad Category, Narrow Category, "
                             f"Question, A-D, Answer; missing {', '.join(sorted(missing))}")
        for n, row in enumerate(reader, 2):
            options = [row[k].strip() for k in "ABCD" if (row.get(k) or "").strip()]
            build.add(f"{path}:{n}", build.slides.by_name(row["Slide"].strip()), {
                "id": f"slidebench-{row.get('ID') or n}", "question": row["Question"], "options": options,
                "answer": row["Answer"].strip(), "kind": "mcq", "subset": row.get("Broad Category", "")})
    return build.records


def load_wsivqa(data: Path, *, image_root=None, checkpoint=None, skips: Skips | None = None, **_) -> list[dict]:
    from corpora.grading import match_option

    path = _file(data, ("WsiVQA_test.json", "dataset/WSI_captions/WsiVQA_test.json"))
    build = _Builder(path, image_root, checkpoint, skips)
    for n, rec in enumerate(_json_list(path, "WSI-VQA"), 1):
        where = f"{path}: record {n}"
        if not isinstance(rec, dict) or not {"Id", "Question", "Answer"} <= set(rec):
            raise SuiteError(f"{where}: expected Id, Question, Answer (and Choice), found {rec!r:.120}")
        choices = [str(c).strip() for c in rec.get("Choice") or []]
        answer = str(rec["Answer"]).strip()
        if choices and match_option(answer, choices) is None:
            build.skips.add("closed answer that is none of its choices (a curation error of the release)")
            continue
        kind = "mcq" if choices else "yesno" if is_yesno(answer) else "open"
        build.add(where, build.slides.by_case(str(rec["Id"])[:12]), {
            "id": f"wsivqa-{n}", "question": rec["Question"], "options": choices, "answer": answer, "kind": kind})
    return build.records


def split_wsibench_question(text: str) -> tuple[str, list[str]]:
    """``"Q? A) x. B) y. C) z."`` -> ``("Q?", ["x.", "y.", "z."])``: letters must follow in order (A, B, C...),
    so a ``B)`` inside an option's text does not split it."""
    text = _IMAGE_TAG.sub("", text).strip()
    cuts, expected = [], 0
    for m in _INLINE_OPTION.finditer(text):
        if m.group(1) == "ABCDEFGHIJ"[expected]:
            cuts.append(m)
            expected += 1
    if len(cuts) < 2:
        return text, []
    bounds = [c.end() for c in cuts]
    ends = [c.start() for c in cuts[1:]] + [len(text)]
    return text[: cuts[0].start()].strip(), [text[b:e].strip() for b, e in zip(bounds, ends)]


def load_wsibench(data: Path, *, image_root=None, checkpoint=None, skips: Skips | None = None, **_) -> list[dict]:
    path = _file(data, ("WSI-Bench_test.json", "dataset/WSI-Bench_test.json"))
    build = _Builder(path, image_root, checkpoint, skips)
    for n, rec in enumerate(_json_list(path, "WSI-Bench"), 1):
        where = f"{path}: record {n}"
        turns = rec.get("conversations") if isinstance(rec, dict) else None
        if not (isinstance(turns, list) and len(turns) >= 2 and "image" in rec):
            raise SuiteError(f"{where}: expected id, image and a human/gpt conversation, found {rec!r:.120}")
        question, options = split_wsibench_question(str(turns[0].get("value", "")))
        answer = str(turns[1].get("value", "")).strip()
        kind = "mcq" if options and re.fullmatch(r"[A-J]", answer) else "yesno" if is_yesno(answer) else "open"
        image = str(rec["image"])
        build.add(where, build.slides.by_name(image), {
            "id": str(rec.get("id") or f"wsibench-{n}"), "question": question,
            "options": options if kind == "mcq" else [], "answer": answer, "kind": kind,
            "subset": image.split("/")[0] if "/" in image else ""})
    return build.records
