"""The benchmark suites: a registry of readers that turn a public release into QA-schema records.

A record is a plain dict with the corpora QA columns (id, images, question, options, answer, kind, solution,
subset, reasoning); ``images`` are absolute paths that exist; ids are unique in a suite (``load_suite`` checks).
Every field suite accepts the release root exactly as downloaded, reads by default the split papers report, takes
``split=NAME|all`` where the release has splits, and counts what it leaves out (other splits, helper files,
other subjects, restricted items) in a ``Skips`` that ``evaluation.run`` logs and records. The readers and the
release layouts they follow:

* ``evaluation/medical.py``    vqarad, slake, medxpertqa, mmmu-med
* ``evaluation/pathology.py``  pathmmu, pathvqa, open, quiltvqa
* ``evaluation/medmcq.py``     omnimed (OmniMedVQA and the Med-R1 splits), pmcvqa
* ``evaluation/vlmeval.py``    vlmeval: any VLMEvalKit TSV (``--data FILE.tsv``)
* ``demo-mcq``, ``demo-yesno``  the demo corpus's held-out splits (QA-schema JSONL, read by corpora)

Adding a suite is one ``Suite(...)`` line in ``SUITES`` (a reader ``load(path, *, split, skips, image_root,
**options) -> list[dict]``, its default location and its place under ``--data-root``).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from corpora.grading import LETTERS
from corpora.records import RecordError, first_field, normalize_qa, resolve_image, split_inline_options
from evaluation.releases import Skips, check_unique_ids

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
    splits: str = ""  # the splits --split takes, the papers' default first ("" = one split, no --split)


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


def _first(rec: dict, keys: tuple[str, ...], where: str):
    try:
        return first_field(rec, keys, keys[0], skip_empty=True)
    except RecordError as e:
        raise SuiteError(f"{where}: {e.message}") from None


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ---------------------------------------------------------------------------------------------- adapters


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


def _is_yesno(answer) -> bool:
    return str(answer).strip().lower() in {"yes", "no"}


def _load_corpora_qa(data: Path, *, checkpoint: dict | None = None, **_) -> list[dict]:
    """Any corpora QA file (suite ``qa``, the demo suites). Records naming a ``slide`` become the tiles the
    evaluated checkpoint trained on: its manifest's ``slides`` settings (K, selection, µm/px), else the defaults."""
    from corpora.readers import load_qa
    from evaluation.slide_benchmarks import slide_sampling

    return [dict(r) for r in load_qa(data, slides=slide_sampling(checkpoint))]


def _needs_data(name: str) -> Callable[[dict | None], Path]:
    def default(checkpoint: dict | None = None) -> Path:
        raise SuiteError(f"suite {name!r} reads your own file: pass --data FILE")

    return default


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


_MED, _PATH, _MCQ, _VLM = "evaluation.medical", "evaluation.pathology", "evaluation.medmcq", "evaluation.vlmeval"
_SLIDES = "evaluation.slide_benchmarks"
SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("pathmmu", _lazy(_PATH, "load_pathmmu"), _home_data("PathMMU"), "PathMMU (mcq)", ("PathMMU",),
          "HF jamessyx/PathMMU: data.json + images/ (images.zip)", "mcq letter", "test | val | test_tiny | all"),
    Suite("omnimed", _lazy(_MCQ, "load_omnimed"), _home_data("OmniMedVQA"), "OmniMedVQA / Med-R1 split json (mcq)",
          ("OmniMedVQA",), "OmniMedVQA root (QA_information/, Images/), or Med-R1 modality / question-type splits",
          "mcq letter", "open | restricted | all (Med-R1: test | train | all)"),
    Suite("pmcvqa", _lazy(_MCQ, "load_pmcvqa"), _home_data("PMC-VQA"), "PMC-VQA csv (mcq)", ("PMC-VQA",),
          "HF xmcmic/PMC-VQA: test_clean.csv + images/ (images.zip)", "mcq letter", "test_clean | test | train | all"),
    Suite("pathvqa", _lazy(_PATH, "load_pathvqa"), _home_data("PathVQA"), "PathVQA closed yes/no (parquet)",
          ("PathVQA",), "HF flaviagiammarino/path-vqa: data/<split>-*.parquet", "yes/no",
          "test | validation | train | all"),
    Suite("open", _lazy(_PATH, "load_open"), _home_data("PathVQA"), "open-ended VQA: token F1 / exact, optional LLM judge",
          ("PathVQA",), "PathVQA non-yes/no rows, or QA-schema JSONL with kind open",
          "exact match + token F1 (or judge)", "test | validation | train | all"),
    Suite("vqarad", _lazy(_MED, "load_vqarad"), _home_data("VQA-RAD"), "VQA-RAD public json (closed + open)",
          ("VQA-RAD",), "VQA_RAD Dataset Public.json + VQA_RAD Image Folder (OSF release)",
          "yes/no; other answers exact match + token F1", "test | train | all"),
    Suite("slake", _lazy(_MED, "load_slake"), _home_data("SLAKE"), "SLAKE English (closed + open)",
          ("SLAKE",), "HF BoKelvin/SLAKE: test.json + imgs/ (imgs.zip), q_lang en",
          "yes/no; other answers exact match + token F1", "test | validation | train | all"),
    Suite("quiltvqa", _lazy(_PATH, "load_quiltvqa"), _home_data("Quilt-VQA"), "Quilt-VQA (closed yes/no + open)",
          ("Quilt-VQA",), "HF wisdomik/Quilt_VQA: quiltvqa_test_w_ans.json + quilt_vqa.zip (or data/*.parquet)",
          "yes/no; open exact match + token F1", "test"),
    Suite("medxpertqa", _lazy(_MED, "load_medxpertqa"), _home_data("MedXpertQA"), "MedXpertQA MM (mcq A-E)",
          ("MedXpertQA",), "HF TsinghuaC3I/MedXpertQA: MM/test.jsonl + images.zip", "mcq letter (A-E)",
          "test | dev | all"),
    Suite("mmmu-med", _lazy(_MED, "load_mmmu_med"), _home_data("MMMU"), "MMMU Health & Medicine (mcq, several images)",
          ("MMMU",), "HF MMMU/MMMU parquet, the five Health & Medicine subjects", "mcq letter; open exact + F1",
          "validation | dev | all (test answers are withheld)"),
    Suite("vlmeval", _lazy(_VLM, "load_vlmeval"), _home_data("vlmeval.tsv"), "any VLMEvalKit MCQ / yes-no / VQA TSV",
          None, "VLMEvalKit TSV (base64 images), e.g. PathMMU / PathVQA / OmniMedVQA as the toolkit ships them",
          "mcq letter, yes/no, or exact + token F1"),
    Suite("qa", _load_corpora_qa, _needs_data("qa"), "any corpora QA file; records may name a whole slide",
          None, "your own data in the corpora QA schema (JSONL / JSON / CSV; \"slide\": PATH or slide_path)",
          "mcq letter, yes/no, or exact + token F1"),
    Suite("slidebench", _lazy(_SLIDES, "load_slidebench"), _home_data("SlideBench", "SlideBench-VQA (TCGA).csv"),
          "SlideBench-VQA (TCGA) csv (mcq, whole slides)", ("SlideBench", "SlideBench-VQA (TCGA).csv"),
          "HF General-Medical-AI/SlideChat + the TCGA slides (GDC), --image-root SLIDES", "mcq letter"),
    Suite("wsivqa", _lazy(_SLIDES, "load_wsivqa"), _home_data("WSI-VQA", "WsiVQA_test.json"),
          "WSI-VQA json (closed + open, whole slides)", ("WSI-VQA", "WsiVQA_test.json"),
          "cpystan/WSI-VQA dataset/WSI_captions + the TCGA-BRCA DX1 slides, --image-root SLIDES",
          "mcq letter; open exact + token F1"),
    Suite("wsibench", _lazy(_SLIDES, "load_wsibench"), _home_data("WSI-Bench", "WSI-Bench_test.json"),
          "WSI-Bench json (closed + report questions, whole slides)", ("WSI-Bench", "WSI-Bench_test.json"),
          "WSI-LLaVA dataset/WSI-Bench_test.json + the TCGA slides, --image-root SLIDES",
          "mcq letter; open exact + token F1 (or judge)"),
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


def load_suite_report(name: str, data: str | Path | None = None, **options) -> tuple[list[dict], Skips]:
    """Records of suite ``name`` from ``data`` (default: the suite's default location) and what was skipped.

    ``options``: ``split`` (NAME or all; default: the split papers report), ``image_root``, ``subset_by``
    (omnimed: modality|question_type). Ids are checked unique; the skips are logged."""
    suite = get_suite(name)
    path = suite_data(name, data)
    if not path.exists():
        raise SuiteError(f"{path}: expected the {name} release here, found no such file or folder; fix: pass "
                         f"--data (or --data-root holding {'/'.join(suite.layout or ('?',))})")
    skips = Skips()
    if options.get("split") and not suite.splits:
        raise SuiteError(f"{path}: expected no --split for suite {name!r} (its data has one split), found "
                         f"--split {options['split']}; fix: drop --split")
    options = {k: v for k, v in options.items() if v not in (None, "")}
    try:
        records = suite.load(path, skips=skips, **options)
    except SuiteError:
        raise
    except (OSError, LookupError, TypeError, AttributeError, ValueError) as e:
        # A reader met a shape it does not name (a list where a record was, a truncated archive...): still one
        # line naming the data, never a traceback. The readers' own checks give the precise ones.
        raise SuiteError(f"{path}: expected {name} data as released ({suite.source or suite.description}), found "
                         f"{type(e).__name__}: {e}; fix: pass the release folder as downloaded") from None
    skips.log(name, path)
    if not records:
        skipped = "; ".join(f"{n} skipped: {why}" for why, n in skips.as_dict().items())
        raise SuiteError(f"{path}: expected {name} records, found none{' (' + skipped + ')' if skipped else ''}; "
                         f"fix: pass the release folder{' or another --split (' + suite.splits + ')' if suite.splits else ''}")
    check_unique_ids(records, str(path))
    return records, skips


def load_suite(name: str, data: str | Path | None = None, *, limit: int | None = None, **options) -> list[dict]:
    """Records of suite ``name`` (see ``load_suite_report``), the first ``limit`` only."""
    records, _ = load_suite_report(name, data, **options)
    return records[:limit] if limit else records
