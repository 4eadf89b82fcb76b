"""Each adapter reads a small fixture written here in its benchmark's exact public format."""
import csv
import io
import json

import pytest
from PIL import Image

from evaluation.reading import inline_options
from evaluation.suites import SUITES, SuiteError, load_suite


def png(path, colour=(200, 30, 90)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)
    return path


def png_bytes(colour):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_pathmmu_data_json(tmp_path):
    png(tmp_path / "images" / "pubmed_1.jpg")
    png(tmp_path / "books_set" / "images" / "atlas_1.png")
    data = {
        "PubMed": {"test": [{"No": 1, "question": "Which stain?", "img": "images/pubmed_1.jpg",
                             "options": ["A) H&E", "B) IHC", "C) PAS"], "answer": "B) IHC", "explanation": ""}],
                   "val": [{"No": 9, "question": "val only", "img": "images/pubmed_1.jpg",
                            "options": ["A) x", "B) y"], "answer": "A) x"}]},
        "Atlas": {"test": [{"question": "Which tissue?", "source_img": "books_set/images/atlas_1.png",
                            "options": ["A) Skeletal muscle", "B) Liver"], "answer": "Liver"}]},
    }
    (tmp_path / "data.json").write_text(json.dumps(data))
    recs = load_suite("pathmmu", tmp_path / "data.json")
    assert [(r["subset"], r["options"], r["answer"], r["kind"]) for r in recs] == [
        ("PubMed", ["H&E", "IHC", "PAS"], "B", "mcq"),
        ("Atlas", ["Skeletal muscle", "Liver"], "B", "mcq"),
    ]
    assert recs[0]["images"] == [str((tmp_path / "images" / "pubmed_1.jpg").resolve())]
    assert recs[0]["solution"] == "<answer> B </answer>"
    assert [r["question"] for r in load_suite("pathmmu", tmp_path / "data.json", split="val")] == ["val only"]
    with pytest.raises(SuiteError, match=r"expected split 'dev', found only 'test', 'val'; fix: --split one of test, "
                                         r"val or all"):
        load_suite("pathmmu", tmp_path / "data.json", split="dev")


def test_medr1_split_json_subset_from_file_name(tmp_path):
    png(tmp_path / "Images" / "MIAS" / "mdb001.png")
    split = tmp_path / "splits" / "modality" / "test"
    split.mkdir(parents=True)
    (split / "X-Ray_test.json").write_text(json.dumps([
        {"image": "Images/MIAS/mdb001.png",
         "problem": "What type of abnormality is depicted? A)Infection, B)No, It's normal, C)Fracture, D)Tumor",
         "solution": "<answer> B </answer>"},
    ]))
    recs = load_suite("omnimed", tmp_path / "splits", image_root=tmp_path)
    assert len(recs) == 1
    r = recs[0]
    assert r["question"] == "What type of abnormality is depicted?"
    assert r["options"] == ["Infection", "No, It's normal", "Fracture", "Tumor"]  # the comma does not split
    assert (r["answer"], r["subset"]) == ("B", "X-Ray")


def test_omnimedvqa_original_json(tmp_path):
    png(tmp_path / "Images" / "ct" / "a.png")
    qa = tmp_path / "QA_information" / "Open-access"
    qa.mkdir(parents=True)
    (qa / "Chest CT Scan.json").write_text(json.dumps([
        {"dataset": "Chest CT Scan", "question_id": "q1", "question_type": "Modality Recognition",
         "question": "Which modality?", "gt_answer": "CT", "image_path": "Images/ct/a.png",
         "option_A": "MRI", "option_B": "CT", "option_C": "X-ray", "modality_type": "CT(Computed Tomography)"},
    ]))
    r = load_suite("omnimed", qa / "Chest CT Scan.json", image_root=tmp_path)[0]
    assert (r["id"], r["options"], r["answer"], r["subset"]) == ("omnimed-open-Chest CT Scan-q1", ["MRI", "CT", "X-ray"], "B",
                                                                 "CT(Computed Tomography)")
    by_type = load_suite("omnimed", qa, image_root=tmp_path, subset_by="question_type")[0]
    assert by_type["subset"] == "Modality Recognition"


def test_pmcvqa_csv(tmp_path):
    png(tmp_path / "images" / "PMC1_fig1.jpg")
    with (tmp_path / "test_clean.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D",
                    "Answer_label"])
        w.writerow(["PMC1_fig1.jpg", "What technique was used? ", "Immunohistochemistry", " A:CT ",
                    " B:Immunohistochemistry ", " C:MRI ", " D:Ultrasound ", "B"])
    r = load_suite("pmcvqa", tmp_path / "test_clean.csv")[0]
    assert r["question"] == "What technique was used?"
    assert r["options"] == ["CT", "Immunohistochemistry", "MRI", "Ultrasound"]
    assert r["answer"] == "B"
    assert r["images"] == [str((tmp_path / "images" / "PMC1_fig1.jpg").resolve())]


def test_pathvqa_parquet_with_image_bytes_keeps_only_yes_no(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"image": {"bytes": png_bytes((10, 20, 30)), "path": None}, "question": "Is this necrosis?", "answer": "Yes"},
        {"image": {"bytes": png_bytes((40, 50, 60)), "path": None}, "question": "What organ?", "answer": "liver"},
        {"image": {"bytes": png_bytes((10, 20, 30)), "path": None}, "question": "Is it benign?", "answer": "no"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000.parquet")
    recs = load_suite("pathvqa", tmp_path)
    assert [(r["question"], r["answer"], r["kind"], r["options"]) for r in recs] == [
        ("Is this necrosis?", "yes", "yesno", []), ("Is it benign?", "no", "yesno", [])]
    # same bytes -> one cached file, readable as the original image
    assert recs[0]["images"] == recs[1]["images"]
    assert Image.open(recs[0]["images"][0]).getpixel((0, 0)) == (10, 20, 30)
    opened = load_suite("open", tmp_path)
    assert [(r["question"], r["answer"], r["kind"]) for r in opened] == [("What organ?", "liver", "open")]


def test_pathvqa_jsonl_with_image_paths(tmp_path):
    png(tmp_path / "img" / "a.png")
    lines = [{"image": "img/a.png", "question": "Is there fibrosis?", "answer": "yes"}]
    (tmp_path / "pathvqa.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert load_suite("pathvqa", tmp_path / "pathvqa.jsonl")[0]["answer"] == "yes"


def test_open_suite_reads_qa_schema_jsonl(tmp_path):
    png(tmp_path / "a.png")
    lines = [{"id": "o1", "images": ["a.png"], "question": "Describe.", "options": [], "answer": "granuloma",
              "kind": "open", "subset": "lung"},
             {"id": "m1", "images": ["a.png"], "question": "Pick.", "options": ["x", "y"], "answer": "A",
              "kind": "mcq"}]
    (tmp_path / "open.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    recs = load_suite("open", tmp_path / "open.jsonl")
    assert [(r["id"], r["answer"], r["subset"]) for r in recs] == [("o1", "granuloma", "lung")]


def test_missing_images_are_skipped_like_the_official_loader_and_said(tmp_path):
    (tmp_path / "data.json").write_text(json.dumps({"PubMed": {"test": [
        {"question": "q", "img": "missing.jpg", "options": ["A) a", "B) b"], "answer": "A) a"}]}}))
    with pytest.raises(SuiteError, match=r"data\.json: expected pathmmu records, found none \(1 skipped: image not in "
                                         r"the release \(PubMed; the official loader skips it too\)\); fix: "):
        load_suite("pathmmu", tmp_path / "data.json")


def test_answer_not_among_options_names_line(tmp_path):
    png(tmp_path / "images" / "f.jpg")
    with (tmp_path / "t.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Answer_label"])
        w.writerow(["f.jpg", "q", "x", "A:one", "B:two", "E"])
    with pytest.raises(SuiteError, match=r"t\.csv:2: answer 'E' is not one of the options \(A='one', B='two'\)"):
        load_suite("pmcvqa", tmp_path / "t.csv")


def test_unknown_suite_lists_known_ones():
    with pytest.raises(SuiteError) as e:
        load_suite("mmlu")
    assert str(e.value) == f"unknown suite 'mmlu'; known suites: {', '.join(SUITES)}"


def test_limit_and_missing_data(tmp_path):
    with pytest.raises(SuiteError, match="no such file or folder"):
        load_suite("pmcvqa", tmp_path / "nope.csv")
    png(tmp_path / "a.png")
    lines = [{"image": "a.png", "question": f"Is {i}?", "answer": "yes"} for i in range(5)]
    (tmp_path / "v.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert [r["question"] for r in load_suite("pathvqa", tmp_path / "v.jsonl", limit=2)] == ["Is 0?", "Is 1?"]


def test_inline_options_require_letters():
    with pytest.raises(SuiteError, match="no inline options"):
        inline_options("What is this?", "f.json: record 0")
    assert inline_options("Q? A)one, B)two", "w") == ("Q?", ["one", "two"])


def test_demo_suites_build_the_demo_corpus_on_first_use():
    from pathlib import Path

    from stages.registry import home

    mcq = load_suite("demo-mcq", limit=20)
    assert (home() / "demo_corpora" / "n400-e400-s112-seed0" / "eval" / "mcq.jsonl").is_file()  # the demo's sizes
    assert len(mcq) == 20 and {r["kind"] for r in mcq} == {"mcq"}
    assert all(r["answer"] in "ABCDEFGHIJ"[: len(r["options"])] and Path(r["images"][0]).is_file() for r in mcq)
    assert len({r["subset"] for r in mcq}) > 1  # subsets feed the per-subset breakdown
    yesno = load_suite("demo-yesno")
    assert {r["answer"] for r in yesno} == {"yes", "no"} and {r["kind"] for r in yesno} == {"yesno"}


def test_answer_letter_and_text_must_agree(tmp_path):
    # corpora.grading.match_option decides: "B) H&E" names option A's text under letter B, two answers in one
    png(tmp_path / "images" / "p.jpg")
    (tmp_path / "data.json").write_text(json.dumps({"PubMed": {"test": [
        {"question": "Which stain?", "img": "images/p.jpg", "options": ["A) H&E", "B) IHC"], "answer": "B) H&E"}]}}))
    with pytest.raises(SuiteError, match=r"data\.json: PubMed\[test\]\[0\]: answer 'B\) H&E' is not one of the options"):
        load_suite("pathmmu", tmp_path / "data.json")


def test_image_paths_may_not_escape_the_release_folder(tmp_path):
    png(tmp_path / "secret.png")
    data = tmp_path / "a" / "b" / "c"
    data.mkdir(parents=True)
    (data / "data.json").write_text(json.dumps({"PubMed": {"test": [
        {"question": "q", "img": "../../../secret.png", "options": ["A) x", "B) y"], "answer": "A"}]}}))
    with pytest.raises(SuiteError, match=r"PubMed\[test\]\[0\]: image path .*secret\.png' resolves outside the dataset root"):
        load_suite("pathmmu", data / "data.json")
