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
* ``evaluation/slide_benchmarks.py``  slidebench, wsivqa, wsibench (whole slides)
* ``demo-mcq``, ``demo-yesno``  the demo corpus's held-out splits (QA-schema JSONL, read by corpora)

The readers share ``evaluation.reading`` (files and records) and ``evaluation.releases`` (the release layout,
``SuiteError``), both below this module: a reader never imports this registry or another reader.

Adding a suite is one ``Suite(...)`` line in ``SUITES`` (a reader ``load(path, *, split, skips, image_root,
**options) -> list[dict]``, its default location and its place under ``--data-root``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from evaluation import medical, medmcq, pathology, slide_benchmarks, vlmeval
from evaluation.releases import Skips, SuiteError, check_unique_ids


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


# ---------------------------------------------------------------------------------------------- adapters


def _load_corpora_qa(data: Path, *, checkpoint: dict | None = None, **_) -> list[dict]:
    """Any corpora QA file (suite ``qa``, the demo suites). Records naming a ``slide`` become the tiles the
    evaluated checkpoint trained on: its manifest's ``slides`` settings (K, selection, µm/px), else the defaults."""
    from corpora.readers import load_qa

    return [dict(r) for r in load_qa(data, slides=slide_benchmarks.slide_sampling(checkpoint))]


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


SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("pathmmu", pathology.load_pathmmu, _home_data("PathMMU"), "PathMMU (mcq)", ("PathMMU",),
          "HF jamessyx/PathMMU: data.json + images/ (images.zip)", "mcq letter", "test | val | test_tiny | all"),
    Suite("omnimed", medmcq.load_omnimed, _home_data("OmniMedVQA"), "OmniMedVQA / Med-R1 split json (mcq)",
          ("OmniMedVQA",), "OmniMedVQA root (QA_information/, Images/), or Med-R1 modality / question-type splits",
          "mcq letter", "open | restricted | all (Med-R1: test | train | all)"),
    Suite("pmcvqa", medmcq.load_pmcvqa, _home_data("PMC-VQA"), "PMC-VQA csv (mcq)", ("PMC-VQA",),
          "HF xmcmic/PMC-VQA: test_clean.csv + images/ (images.zip)", "mcq letter", "test_clean | test | train | all"),
    Suite("pathvqa", pathology.load_pathvqa, _home_data("PathVQA"), "PathVQA closed yes/no (parquet)",
          ("PathVQA",), "HF flaviagiammarino/path-vqa: data/<split>-*.parquet", "yes/no",
          "test | validation | train | all"),
    Suite("open", pathology.load_open, _home_data("PathVQA"), "open-ended VQA: token F1 / exact, optional LLM judge",
          ("PathVQA",), "PathVQA non-yes/no rows, or QA-schema JSONL with kind open",
          "exact match + token F1 (or judge)", "test | validation | train | all"),
    Suite("vqarad", medical.load_vqarad, _home_data("VQA-RAD"), "VQA-RAD public json (closed + open)",
          ("VQA-RAD",), "VQA_RAD Dataset Public.json + VQA_RAD Image Folder (OSF release)",
          "yes/no; other answers exact match + token F1", "test | train | all"),
    Suite("slake", medical.load_slake, _home_data("SLAKE"), "SLAKE English (closed + open)",
          ("SLAKE",), "HF BoKelvin/SLAKE: test.json + imgs/ (imgs.zip), q_lang en",
          "yes/no; other answers exact match + token F1", "test | validation | train | all"),
    Suite("quiltvqa", pathology.load_quiltvqa, _home_data("Quilt-VQA"), "Quilt-VQA (closed yes/no + open)",
          ("Quilt-VQA",), "HF wisdomik/Quilt_VQA: quiltvqa_test_w_ans.json + quilt_vqa.zip (or data/*.parquet)",
          "yes/no; open exact match + token F1", "test"),
    Suite("medxpertqa", medical.load_medxpertqa, _home_data("MedXpertQA"), "MedXpertQA MM (mcq A-E)",
          ("MedXpertQA",), "HF TsinghuaC3I/MedXpertQA: MM/test.jsonl + images.zip", "mcq letter (A-E)",
          "test | dev | all"),
    Suite("mmmu-med", medical.load_mmmu_med, _home_data("MMMU"), "MMMU Health & Medicine (mcq, several images)",
          ("MMMU",), "HF MMMU/MMMU parquet, the five Health & Medicine subjects", "mcq letter; open exact + F1",
          "validation | dev | all (test answers are withheld)"),
    Suite("vlmeval", vlmeval.load_vlmeval, _home_data("vlmeval.tsv"), "any VLMEvalKit MCQ / yes-no / VQA TSV",
          None, "VLMEvalKit TSV (base64 images), e.g. PathMMU / PathVQA / OmniMedVQA as the toolkit ships them",
          "mcq letter, yes/no, or exact + token F1"),
    Suite("qa", _load_corpora_qa, _needs_data("qa"), "any corpora QA file; records may name a whole slide",
          None, "your own data in the corpora QA schema (JSONL / JSON / CSV; \"slide\": PATH or slide_path)",
          "mcq letter, yes/no, or exact + token F1"),
    Suite("slidebench", slide_benchmarks.load_slidebench, _home_data("SlideBench", "SlideBench-VQA (TCGA).csv"),
          "SlideBench-VQA (TCGA) csv (mcq, whole slides)", ("SlideBench", "SlideBench-VQA (TCGA).csv"),
          "HF General-Medical-AI/SlideChat + the TCGA slides (GDC), --image-root SLIDES", "mcq letter"),
    Suite("wsivqa", slide_benchmarks.load_wsivqa, _home_data("WSI-VQA", "WsiVQA_test.json"),
          "WSI-VQA json (closed + open, whole slides)", ("WSI-VQA", "WsiVQA_test.json"),
          "cpystan/WSI-VQA dataset/WSI_captions + the TCGA-BRCA DX1 slides, --image-root SLIDES",
          "mcq letter; open exact + token F1"),
    Suite("wsibench", slide_benchmarks.load_wsibench, _home_data("WSI-Bench", "WSI-Bench_test.json"),
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
                         + (f"--data (or --data-root holding {'/'.join(suite.layout)})" if suite.layout else "--data"))
    skips = Skips()
    if options.get("split") and not suite.splits:
        raise SuiteError(f"{path}: expected no --split for suite {name!r} (its data has one split), found "
                         f"--split {options['split']}; fix: drop --split")
    options = {k: v for k, v in options.items() if v not in (None, "")}
    from corpora.records import DataError

    try:
        records = suite.load(path, skips=skips, **options)
    except SuiteError:
        raise
    except DataError as e:  # corpora's own message already names file:line and the fix (a bad slide, a bad record)
        raise SuiteError(str(e)) from None
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
