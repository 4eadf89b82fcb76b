"""Every new reader on a hand-written fixture in its benchmark's published format (tests/fixtures/evaluation/),
and one malformed record per reader failing with ``file:line`` (or ``file: row i`` for parquet)."""
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from evaluation.suites import SuiteError, load_suite

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evaluation"


def png(path, colour=(200, 30, 90)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path, format="PNG")  # content only; the name keeps its .jpg
    return path


def copy_fixture(name, tmp_path, images=()):
    root = shutil.copytree(FIXTURES / name, tmp_path / name)
    for i, rel in enumerate(images):
        png(root / rel, (10 * i, 100, 200))
    return root


def test_vqarad_public_json_test_split(tmp_path):
    root = copy_fixture("vqarad", tmp_path, ["VQA_RAD Image Folder/synpic54610.jpg",
                                             "VQA_RAD Image Folder/synpic29265.jpg"])
    recs = load_suite("vqarad", root)
    assert [(r["id"], r["kind"], r["answer"], r["subset"]) for r in recs] == [
        ("vqarad-1", "yesno", "yes", "closed"),  # closed yes/no: graded yes/no
        ("vqarad-2", "open", "Left", "closed"),  # closed, other answer: exact match
        ("vqarad-3", "open", "pleural effusion", "open")]  # phrase_type "freeform" (train) is left out
    assert recs[0]["images"] == [str((root / "VQA_RAD Image Folder" / "synpic54610.jpg").resolve())]
    assert [r["id"] for r in load_suite("vqarad", root, split="train")] == ["vqarad-4"]


def test_vqarad_malformed_record_names_line(tmp_path):
    root = copy_fixture("vqarad", tmp_path, ["VQA_RAD Image Folder/synpic54610.jpg"])
    data = root / "VQA_RAD Dataset Public.json"
    data.write_text(data.read_text().replace('"image_name": "synpic29265.jpg",\n    "image_organ": "CHEST",\n    '
                                              '"question": "Which', '"image_organ": "CHEST",\n    "question": "Which'))
    with pytest.raises(SuiteError, match=rf"^{data}:18: missing field 'image_name'$"):
        load_suite("vqarad", root)


def test_slake_english_closed_and_open(tmp_path):
    root = copy_fixture("slake", tmp_path, ["imgs/xmlab102/source.jpg", "imgs/xmlab7/source.jpg"])
    recs = load_suite("slake", root)
    assert [(r["id"], r["kind"], r["answer"], r["subset"]) for r in recs] == [
        ("slake-test-11934", "open", "Lung", "closed"), ("slake-test-11936", "yesno", "yes", "closed"),
        ("slake-test-11937", "open", "CT", "open")]  # the Chinese question (q_lang zh) is left out


def test_slake_image_outside_root_is_refused(tmp_path):
    root = copy_fixture("slake", tmp_path, ["imgs/xmlab102/source.jpg", "imgs/xmlab7/source.jpg"])
    data = root / "test.json"
    data.write_text(data.read_text().replace('"xmlab7/source.jpg"', '"../../../etc/passwd"', 1))
    with pytest.raises(SuiteError, match=rf"^{data}:30: image path '\.\./\.\./\.\./etc/passwd' resolves outside"):
        load_suite("slake", root)


def test_quiltvqa_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = copy_fixture("quiltvqa", tmp_path, ["quilt_0001.jpg", "quilt_0002.jpg"])
    recs = load_suite("quiltvqa", root / "test.jsonl")
    assert [(r["kind"], r["answer"], r["subset"]) for r in recs] == [
        ("yesno", "yes", "closed"), ("open", "lymphocytes and plasma cells", "open"),
        ("open", "adenoid cystic carcinoma", "open")]
    # the HF parquet: images as {bytes, path} structs, decoded once into the cache
    rows = [json.loads(x) for x in (root / "test.jsonl").read_text().splitlines()]
    for r in rows:
        r["image"] = {"bytes": (root / r["image"]).read_bytes(), "path": None}
    folder = tmp_path / "hf"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "test-00000-of-00001.parquet")
    from_parquet = load_suite("quiltvqa", folder)
    assert [(r["question"], r["answer"]) for r in from_parquet] == [(r["question"], r["answer"]) for r in recs]
    assert from_parquet[0]["images"] == from_parquet[2]["images"]  # same bytes, one cached file
    rows[1]["question"] = ""
    pq.write_table(pa.Table.from_pylist(rows), folder / "test-00000-of-00001.parquet")
    with pytest.raises(SuiteError, match=r"test-00000-of-00001\.parquet: row 1: question is empty$"):
        load_suite("quiltvqa", folder)


def test_medxpertqa_label_outside_the_options_names_line(tmp_path):
    from tests.evaluation.release_fixtures import medxpertqa

    data = medxpertqa(tmp_path) / "MM" / "test.jsonl"
    data.write_text(data.read_text().replace('"label": "B"', '"label": "F"'))
    with pytest.raises(SuiteError, match=rf"^{data}:2: answer 'F' is not one of the options"):
        load_suite("medxpertqa", data.parent.parent)


def mmmu_parquet(tmp_path):
    """The HF MMMU layout (<Subject>/validation-*.parquet, image_n = {bytes, path}) from the JSONL fixture."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "MMMU"
    for i, src in enumerate(sorted((FIXTURES / "mmmu").glob("*/validation.jsonl"))):
        rows = [json.loads(x) for x in src.read_text().splitlines()]
        for j, r in enumerate(rows):
            for n in range(1, 8):
                if r.get(f"image_{n}"):
                    p = png(tmp_path / "src" / r[f"image_{n}"], (30 * i, 20 * j, 40 * n))
                    r[f"image_{n}"] = {"bytes": p.read_bytes(), "path": r[f"image_{n}"]}
                else:
                    r[f"image_{n}"] = None
        (out / src.parent.name).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), out / src.parent.name / "validation-00000-of-00001.parquet")
    return out


def test_mmmu_health_and_medicine_several_images(tmp_path):
    recs = load_suite("mmmu-med", mmmu_parquet(tmp_path))
    assert [(r["id"], r["kind"], r["answer"], len(r["images"]), r["subset"]) for r in recs] == [
        ("validation_Clinical_Medicine_1", "mcq", "B", 1, "Clinical_Medicine"),
        ("validation_Clinical_Medicine_2", "mcq", "C", 2, "Clinical_Medicine"),
        ("validation_Pharmacy_1", "mcq", "A", 3, "Pharmacy"),
        ("validation_Pharmacy_2", "open", "4", 1, "Pharmacy")]  # Art_Theory is not Health & Medicine
    two = recs[1]
    assert two["question"] == "Compare <image 1> with <image 2>. Which stain was used in <image 2>?"
    assert two["options"] == ["H&E", "PAS", "Congo red", "Trichrome"]
    # image_1 then image_2, each decoded once into the cache, distinct images
    assert len(set(two["images"])) == 2 and all(Path(p).is_file() for p in two["images"])
    assert recs[2]["options"] == ["<image 2>", "<image 3>", "Neither"]


def test_mmmu_placeholder_without_image_names_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = mmmu_parquet(tmp_path)
    f = folder / "Clinical_Medicine" / "validation-00000-of-00001.parquet"
    rows = pq.read_table(f).to_pylist()
    rows[1]["image_2"] = None
    pq.write_table(pa.Table.from_pylist(rows), f)
    with pytest.raises(SuiteError, match=rf"^{f}: row 1: the text refers to <image 2> but image_2 is empty$"):
        load_suite("mmmu-med", folder)


def test_data_root_layout(tmp_path):
    from evaluation.suites import suite_data

    assert suite_data("medxpertqa", data_root=tmp_path) == tmp_path / "MedXpertQA"  # the release root
    assert suite_data("slake", "x.json", data_root=tmp_path) == Path("x.json")
    with pytest.raises(SuiteError, match="suite 'vlmeval' has no place under --data-root"):
        suite_data("vlmeval", data_root=tmp_path)


def test_mmmu_one_subject_folder(tmp_path):
    recs = load_suite("mmmu-med", mmmu_parquet(tmp_path) / "Pharmacy")
    assert [r["id"] for r in recs] == ["validation_Pharmacy_1", "validation_Pharmacy_2"]
