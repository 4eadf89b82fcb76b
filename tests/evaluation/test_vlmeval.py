"""VLMEvalKit TSV in (base64 images decoded once into the cache, image references, hints) and out (the
prediction TSV VLMEvalKit's evaluation reads), and the round trip: export then read back = same records and
predictions."""
import csv
import shutil
from pathlib import Path

import pytest
from PIL import Image

from evaluation.run import evaluate
from evaluation.suites import SuiteError, load_suite
from evaluation.vlmeval import read_vlmeval_predictions
from stages.registry import home

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evaluation" / "vlmeval"


def test_mcq_tsv_records():
    recs = load_suite("vlmeval", FIXTURES / "PathMMU_mini.tsv")
    assert [(r["id"], r["kind"], r["options"], r["answer"], r["subset"]) for r in recs] == [
        ("0", "mcq", ["H&E", "IHC", "PAS", "Giemsa"], "B", "PubMed"),
        ("1", "mcq", ["Adenocarcinoma", "Lymphoma"], "A", "EduContent"),  # empty option cells end the list
        ("2", "mcq", ["Nuclear", "Cytoplasmic", "Membranous"], "C", "PubMed")]
    assert recs[1]["question"] == "Hint: Biopsy of the colon.\nWhat is the most likely diagnosis?"
    assert recs[2]["question"] == "Is the staining\nnuclear or cytoplasmic?"  # a quoted newline stays in the cell
    assert recs[2]["images"] == recs[0]["images"]  # `image` = "0": the image of row index 0
    cached = Path(recs[0]["images"][0])
    assert cached.parent == home() / "cache" / "images"  # decoded once, by content hash
    assert Image.open(cached).getpixel((0, 0)) == (200, 30, 90)
    assert recs[0]["meta"] == {"category": "PubMed", "l2-category": "stain", "split": "test"}


def test_vqa_tsv_yes_no_and_open():
    recs = load_suite("vlmeval", FIXTURES / "PathVQA_mini.tsv")
    assert [(r["id"], r["kind"], r["answer"]) for r in recs] == [("10", "yesno", "yes"), ("11", "open", "liver"),
                                                                ("12", "yesno", "no")]


def test_malformed_rows_name_file_and_line(tmp_path):
    src = (FIXTURES / "PathVQA_mini.tsv").read_text().splitlines()
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join([src[0], src[1], src[2].replace("\tliver\t", "\tliver\textra\t")]) + "\n")
    with pytest.raises(SuiteError, match=rf"^{bad}:3: 7 cells, the header has 6$"):
        load_suite("vlmeval", bad)
    bad.write_text("\n".join([src[0], src[1], src[2].replace("iVBOR", "not base64 at all!", 1)]) + "\n")
    with pytest.raises(SuiteError, match=rf"^{bad}:3: 'image' is neither base64 nor the index of another row$"):
        load_suite("vlmeval", bad)
    bad.write_text("index\tquestion\tanswer\nq\ta\tb\n")
    with pytest.raises(SuiteError, match=rf"^{bad}:1: missing VLMEvalKit columns \['image or image_path'\]$"):
        load_suite("vlmeval", bad)
    mcq = (FIXTURES / "PathMMU_mini.tsv").read_text().replace("\tB\tPubMed", "\tE\tPubMed", 1)
    bad.write_text(mcq)
    with pytest.raises(SuiteError, match=rf"^{bad}:2: answer 'E' is not one of the options"):
        load_suite("vlmeval", bad)


def test_image_path_may_not_leave_the_tsv_folder(tmp_path):
    (tmp_path / "data").mkdir()
    tsv = tmp_path / "data" / "x.tsv"
    tsv.write_text("index\timage_path\tquestion\tanswer\n0\t../secret.png\tIs it?\tyes\n")
    with pytest.raises(SuiteError, match=rf"^{tsv}:2: image path '\.\./secret\.png' resolves outside"):
        load_suite("vlmeval", tsv)


@pytest.mark.parametrize("name", ["PathMMU_mini.tsv", "PathVQA_mini.tsv"])
def test_export_then_read_back_gives_the_same_records_and_predictions(tiny_model_dir, tmp_path, name):
    tsv = shutil.copy(FIXTURES / name, tmp_path / name)
    m = evaluate(tiny_model_dir(), "vlmeval", tsv, max_new_tokens=6, export="vlmeval", progress=False)
    exported = Path(m["export"])
    assert exported.parent == Path(m["out_dir"]) / "vlmeval"
    assert exported.name == f"{tiny_model_dir().name}_{Path(name).stem}.tsv"  # <model>_<dataset>.tsv
    with exported.open(newline="") as f:
        header = next(csv.reader(f, delimiter="\t"))
    assert "image" not in header and {"index", "question", "answer", "prediction"} <= set(header)
    original = load_suite("vlmeval", tsv)
    again = load_suite("vlmeval", exported)
    assert again == original
    rows = [__import__("json").loads(x) for x in (Path(m["out_dir"]) / "predictions.jsonl").read_text().splitlines()]
    assert read_vlmeval_predictions(exported) == {r["id"]: r["prediction"] for r in rows}
    assert len({r["prediction"] for r in rows}) > 1  # real, differing completions went through the file
