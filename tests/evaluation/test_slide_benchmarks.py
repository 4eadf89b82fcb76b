"""The slide-level benchmark readers on fixtures written in each release's layout, with small Aperio SVS files
named as the GDC names TCGA slides (``<barcode>.<uuid>.svs``):

* SlideBench-VQA (TCGA): ``SlideBench-VQA (TCGA).csv`` with the columns SlideChat's evaluation reads (``ID, Slide,
  Tumor, Broad Category, Narrow Category, Question, A, B, C, D, Answer``; answer a letter; ``Slide`` a slide barcode)
  -- HF General-Medical-AI/SlideChat, as read by OzzyChen97/TC-SSA ``vqa/src/slidechat_dataset.py``;
* WSI-VQA: ``WsiVQA_test.json``, a list of ``{"Id", "Question", "Choice", "Answer"}`` (Choice only on closed
  questions, the answer the option's text; open answers like "Positive" or a survival time "1881") --
  cpystan/WSI-VQA ``dataset/WSI_captions/``; its loader (``modules/datasets.py``) pairs a case with its DX1 slide;
* WSI-Bench: ``WSI-Bench_test.json``, LLaVA records with ``image: "TCGA-LUSC/<slide>.pt"`` and the options inline
  on one line (``... A) x. B) y. C) z. D) w.``), the answer a letter, or a free-text report -- WSI-LLaVA
  ``dataset/WSI-Bench_test.json``.
"""
import csv
import json

import pytest

from corpora.slides.synthetic import tissue_image, write_svs
from evaluation.slide_benchmarks import split_wsibench_question
from evaluation.suites import SuiteError, load_suite, load_suite_report

SAMPLING = {"k": 2, "size": 64, "mpp": 0.5, "min_tissue": 0.5}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("tcga")
    img = tissue_image(384, 512, [(150, 190, 110, 150), (370, 190, 110, 150)])
    names = {"brca": "TCGA-AR-A1AI-01Z-00-DX1.9a2f1c3e-0000-4000-8000-000000000001",
             "lusc": "TCGA-21-1083-01Z-00-DX1.8288ca92-b611-4acf-986e-0b8a3f620b94"}
    (root / "TCGA-LUSC").mkdir()
    write_svs(root / f"{names['brca']}.svs", img, mpp=0.5, n_levels=2, tile=128, label=False)
    write_svs(root / "TCGA-LUSC" / f"{names['lusc']}.svs", img, mpp=0.5, n_levels=2, tile=128, label=False)
    return root, names


def checkpoint(tmp_path):
    return {"config": {"slides": {**SAMPLING, "cache_dir": str(tmp_path / "cache")}}}


def test_slidebench_csv(slides, tmp_path):
    root, _ = slides
    path = tmp_path / "SlideBench-VQA (TCGA).csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["ID", "Slide", "Tumor", "Broad Category", "Narrow Category", "Question", "A", "B", "C", "D",
                    "Answer"])
        w.writerow([1, "TCGA-AR-A1AI-01Z-00-DX1", "BRCA", "Diagnosis", "Histological typing",
                    "What is the histological type?", "Medullary carcinoma", "Lobular carcinoma",
                    "Ductal carcinoma in situ", "Mucinous carcinoma", "A"])
        w.writerow([2, "TCGA-XX-0000-01Z-00-DX1", "BRCA", "Microscopy", "Cell morphology",
                    "Are nuclei pleomorphic?", "Yes", "No", "Cannot tell", "Partly", "B"])
    records, skips = load_suite_report("slidebench", path, image_root=root, checkpoint=checkpoint(tmp_path))
    assert len(records) == 1 and skips.as_dict() == {f"slide not under {root}": 1}
    r = records[0]
    assert (r["id"], r["answer"], r["kind"], r["subset"]) == ("slidebench-1", "A", "mcq", "Diagnosis")
    assert r["options"][0] == "Medullary carcinoma" and len(r["images"]) == 2
    assert all("cache" in p and p.endswith(".png") for p in r["images"])


def test_wsivqa_json_closed_open_and_release_errors(slides, tmp_path):
    root, _ = slides
    rows = [{"Id": "TCGA-AR-A1AI", "Question": "what type of breast cancer does jeb have?",
             "Choice": ["medullary carcinoma", "invasive ductal carcinoma", "lobular carcinoma",
                        "inflammatory breast cancer."], "Answer": "medullary carcinoma"},
            {"Id": "TCGA-AR-A1AI", "Question": "what is the result of progesterone_receptor in the slide?",
             "Answer": "Negative"},
            {"Id": "TCGA-AR-A1AI", "Question": "From the slide, can you infer the survival time?", "Answer": "1881"},
            {"Id": "TCGA-AR-A1AI", "Question": "what was the status of the surgical margins?",
             "Choice": ["positive", "unclear, further testing is neede", "d: positive"], "Answer": "negative"}]
    (tmp_path / "WsiVQA_test.json").write_text(json.dumps(rows))
    records, skips = load_suite_report("wsivqa", tmp_path, image_root=root, checkpoint=checkpoint(tmp_path))
    assert [(r["kind"], r["answer"]) for r in records] == [("mcq", "A"), ("open", "Negative"), ("open", "1881")]
    assert skips.as_dict() == {"closed answer that is none of its choices (a curation error of the release)": 1}
    assert records[0]["images"] == records[1]["images"]  # one slide, the same tiles for every question
    (tmp_path / "WsiVQA_test.json").write_text(json.dumps({"Id": "x"}))
    with pytest.raises(SuiteError, match="expected a JSON list of WSI-VQA records"):
        load_suite("wsivqa", tmp_path, image_root=root, checkpoint=checkpoint(tmp_path))


def test_wsibench_llava_records(slides, tmp_path):
    root, names = slides
    image = f"TCGA-LUSC/{names['lusc']}.pt"
    rows = [{"id": f"{names['lusc']}-1", "image": image, "conversations": [
                {"from": "human", "value": "<image>\nWhat is the observed pattern of tumor infiltration? A) Tumor "
                                           "cells infiltrate stroma. B) Tumor cells stay in glands (see A) above). "
                                           "C) Only perineural invasion. D) None."},
                {"from": "gpt", "value": "C"}]},
            {"id": f"{names['lusc']}-2", "image": image, "conversations": [
                {"from": "human", "value": "<image>\nSummarize the key features and give a diagnosis."},
                {"from": "gpt", "value": "Sheets of atypical squamous cells. The diagnosis is squamous cell carcinoma."}]}]
    (tmp_path / "WSI-Bench_test.json").write_text(json.dumps(rows, indent=4))
    records = load_suite("wsibench", tmp_path / "WSI-Bench_test.json", image_root=root,
                         checkpoint=checkpoint(tmp_path))
    mcq, report = records
    assert (mcq["kind"], mcq["answer"], mcq["subset"]) == ("mcq", "C", "TCGA-LUSC")
    assert mcq["question"] == "What is the observed pattern of tumor infiltration?"
    assert mcq["options"] == ["Tumor cells infiltrate stroma.", "Tumor cells stay in glands (see A) above).",
                              "Only perineural invasion.", "None."]
    assert report["kind"] == "open" and report["answer"].startswith("Sheets") and len(report["images"]) == 2


def test_wsibench_inline_options_need_letters_in_order():
    assert split_wsibench_question("<image>\nIs vitamin A) deficiency seen?") == ("Is vitamin A) deficiency seen?", [])
    assert split_wsibench_question("Q? A) x B) y") == ("Q?", ["x", "y"])


def test_an_unreadable_slide_names_the_record(slides, tmp_path):
    root, _ = slides
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "TCGA-AR-A1AI-01Z-00-DX1.broken.svs").write_bytes(b"II*\x00garbage")
    (tmp_path / "WsiVQA_test.json").write_text(json.dumps([{"Id": "TCGA-AR-A1AI", "Question": "q?", "Answer": "x"}]))
    with pytest.raises(SuiteError, match=r"WsiVQA_test.json: record 1: .*broken.svs: expected a slide"):
        load_suite("wsivqa", tmp_path, image_root=tmp_path / "slides", checkpoint=checkpoint(tmp_path))
