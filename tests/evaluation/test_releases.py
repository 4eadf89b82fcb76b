"""Every field suite pointed at a folder laid out like its public release (tests/evaluation/release_fixtures.py
builds them and names each layout's source), with the release's decoys: the default split's count, kinds and
answers, what is skipped and why, unique ids for every reader, one-line errors."""
import logging
import time
from pathlib import Path

import pytest

from evaluation.suites import SuiteError, get_suite, load_suite, load_suite_report
from tests.evaluation import release_fixtures as rf

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evaluation"


def test_medxpertqa_release_root_reads_mm_test_with_images_zip(tmp_path, caplog):
    """HF TsinghuaC3I/MedXpertQA: MM/, Text/, images.zip beside them (issue 23: images/ at the root)."""
    root = rf.medxpertqa(tmp_path)
    with caplog.at_level(logging.INFO, logger="evaluation"):
        recs, skips = load_suite_report("medxpertqa", root)
    assert [(r["id"], r["answer"], r["subset"], len(r["images"]), len(r["options"])) for r in recs] == [
        ("medxpertqa-test-MM-0", "A", "Reasoning", 1, 5), ("medxpertqa-test-MM-1", "B", "Understanding", 2, 5),
        ("medxpertqa-test-MM-2", "E", "Reasoning", 1, 5)]
    assert recs[0]["question"] == "Case 0: what is shown?"  # the "Answer Choices:" block is dropped
    assert skips.as_dict() == {"MedXpertQA Text subset (text-only questions; this suite is MM)": 4,
                               "split 'dev' (reading test)": 2}
    assert "medxpertqa: skipped 4 records" in caplog.text
    # images.zip was unpacked once into the cache, not beside the release
    assert "cache/archives/images-" in recs[0]["images"][0] and not (root / "images").exists()
    both = load_suite("medxpertqa", root, split="all")
    assert len(both) == 5 and len({r["id"] for r in both}) == 5  # dev's MM-0 is not test's MM-0
    assert [r["id"] for r in load_suite("medxpertqa", root / "MM" / "dev.jsonl")] == [
        "medxpertqa-dev-MM-0", "medxpertqa-dev-MM-1"]
    with pytest.raises(SuiteError, match=r"Text: expected MedXpertQA's MM subset, found the text-only subset"):
        load_suite("medxpertqa", root / "Text")
    with pytest.raises(SuiteError, match=r"expected split 'train', found only 'dev', 'test'; fix: --split one of"):
        load_suite("medxpertqa", root, split="train")


def test_mmmu_validation_of_health_and_medicine_only(tmp_path):
    """HF MMMU/MMMU: <Subject>/{dev,validation,test}-00000-of-00001.parquet; test answers withheld."""
    root = rf.mmmu(tmp_path)
    recs, skips = load_suite_report("mmmu-med", root)
    assert [(r["id"], r["kind"], r["answer"], len(r["images"]), r["subset"]) for r in recs] == [
        ("validation_Clinical_Medicine_1", "mcq", "B", 1, "Clinical_Medicine"),
        ("validation_Clinical_Medicine_2", "mcq", "C", 2, "Clinical_Medicine"),
        ("validation_Pharmacy_1", "mcq", "A", 3, "Pharmacy"),
        ("validation_Pharmacy_2", "open", "4", 1, "Pharmacy")]
    assert recs[2]["options"] == ["<image 2>", "<image 3>", "Neither"]  # list literal, placeholders kept
    assert recs[1]["question"] == "Compare <image 1> with <image 2>. Which stain was used in <image 2>?"
    assert len(set(recs[1]["images"])) == 2
    assert skips.as_dict() == {"other MMMU subjects (not Health & Medicine)": 3,
                               "split 'dev' (reading validation)": 3, "split 'test' (answers withheld)": 3}
    with pytest.raises(SuiteError, match=r"expected a split with answers, found split 'test': MMMU's test answers are "
                                         r"withheld .*; fix: use --split validation"):
        load_suite("mmmu-med", root, split="test")
    with pytest.raises(SuiteError, match=r"Pharmacy/test-00000-of-00001\.parquet: expected a split with answers"):
        load_suite("mmmu-med", root / "Pharmacy" / "test-00000-of-00001.parquet")
    assert [r["id"] for r in load_suite("mmmu-med", root / "Pharmacy")] == [
        "validation_Pharmacy_1", "validation_Pharmacy_2"]
    assert len(load_suite("mmmu-med", root, split="all")) == 7  # dev + validation, never test


def test_quiltvqa_release_root_grades_closed_rows_yes_no(tmp_path):
    """HF wisdomik/Quilt_VQA (quiltvqa_test_w_ans.json scored by Quilt-LLaVA's quilt_eval.py; the _wo_ans
    question file and the parquet export are not questions to add)."""
    root = rf.quiltvqa(tmp_path)
    recs, skips = load_suite_report("quiltvqa", root)
    assert [(r["id"], r["kind"], r["answer"], r["subset"]) for r in recs] == [
        ("quiltvqa-0", "yesno", "yes", "closed"), ("quiltvqa-1", "open", "Lymphocytes and plasma cells", "open"),
        ("quiltvqa-2", "yesno", "no", "closed"), ("quiltvqa-3", "open", "Adenoid cystic carcinoma", "open")]
    assert recs[0]["images"] == recs[2]["images"] and Path(recs[0]["images"][0]).is_file()
    assert skips.as_dict() == {
        "quiltvqa_test_wo_ans.jsonl (the same questions without answers)": 4,
        "train-00000-of-00001.parquet (the HF export; quiltvqa_test_w_ans.json is the file the Quilt-LLaVA scorer "
        "reads)": 4}
    with pytest.raises(SuiteError, match=r"expected questions with answers, found the question file without answers"):
        load_suite("quiltvqa", root / "quiltvqa_test_wo_ans.jsonl")
    with pytest.raises(SuiteError, match=r"expected split 'validation', found only 'test'"):
        load_suite("quiltvqa", root, split="validation")


def test_quiltvqa_parquet_only_closed_from_the_leading_word(tmp_path):
    """The HF parquet export alone (data/train-*.parquet): CLOSED rows carry no yes_no_answer."""
    recs = load_suite("quiltvqa", rf.quiltvqa(tmp_path, helper=False))
    assert [(r["id"], r["kind"], r["answer"]) for r in recs] == [
        ("quiltvqa-test-0", "yesno", "yes"), ("quiltvqa-test-1", "open", "Lymphocytes and plasma cells"),
        ("quiltvqa-test-2", "yesno", "no"), ("quiltvqa-test-3", "open", "Adenoid cystic carcinoma")]


def test_pathmmu_release_folder_ids_per_subset_and_split(tmp_path):
    """HF jamessyx/PathMMU data.json + images.zip, read like PathMMU's eval/utils/data_utils.py."""
    root = rf.pathmmu(tmp_path)
    recs, skips = load_suite_report("pathmmu", root)
    assert [(r["id"], r["subset"], r["answer"]) for r in recs] == [
        ("pathmmu-PubMed-test-1", "PubMed", "B"), ("pathmmu-PubMed-test-2", "PubMed", "A"),
        ("pathmmu-Atlas-test-1", "Atlas", "B"), ("pathmmu-Atlas-test-2", "Atlas", "C")]
    assert recs[0]["options"] == ["H&E", "IHC", "PAS"]
    assert skips.as_dict() == {"split 'val' (reading test)": 1, "split 'test_tiny' (reading test)": 1,
                               "image not in the release (SocialPath; the official loader skips it too)": 1}
    tiny = load_suite("pathmmu", root / "data.json", split="test_tiny")
    assert [r["id"] for r in tiny] == ["pathmmu-PubMed-test_tiny-1"]
    every = load_suite("pathmmu", root, split="all")
    assert len(every) == 6 and len({r["id"] for r in every}) == 6  # `No` 1 appears in four lists


def test_omnimedvqa_root_open_access_only(tmp_path):
    """OmniMedVQA root: QA_information/Open-access + Restricted-access (images not released) + Images/."""
    root = rf.omnimedvqa(tmp_path)
    recs, skips = load_suite_report("omnimed", root)
    assert [(r["id"], r["options"], r["answer"], r["subset"]) for r in recs] == [
        ("omnimed-open-ACRIMA-ACRIMA_0", ["Yes", "No"], "B", "Fundus Photography"),
        ("omnimed-open-Chest CT Scan-Chest CT Scan_0", ["MRI", "CT", "X-ray", "PET"], "B", "CT(Computed Tomography)"),
        ("omnimed-open-Chest CT Scan-Chest CT Scan_1", ["Adenocarcinoma", "No, It's normal.", "Pneumonia"], "A",
         "CT(Computed Tomography)")]  # `modality` in place of `modality_type`
    assert recs[1]["images"][0].endswith("adenocarcinoma/000108 (3).png")
    assert skips.as_dict() == {"Restricted-access items (images are not in the release)": 2}
    with pytest.raises(SuiteError, match=r"AIDA\.json:\d+: image not found: 'Images/AIDA/0\.jpg'"):
        load_suite("omnimed", root, split="restricted")
    by_type = load_suite("omnimed", root / "QA_information" / "Open-access", subset_by="question_type")
    assert [r["subset"] for r in by_type] == ["Disease Diagnosis", "Modality Recognition", "Disease Diagnosis"]


def test_medr1_split_files_as_given(tmp_path):
    """Med-R1's split files (problem / solution), test by default, train a decoy."""
    images = rf.omnimedvqa(tmp_path)
    splits = rf.medr1_splits(tmp_path, images)
    recs, skips = load_suite_report("omnimed", splits, image_root=images)
    assert [(r["subset"], r["answer"], r["options"]) for r in recs] == [
        ("CT", "A", ["Lung", "Liver"]), ("X-Ray", "B", ["Infection", "No, It's normal", "Tumor"]),
        ("X-Ray", "A", ["PA", "Lateral"])]
    assert skips.as_dict() == {"Med-R1 train split files (reading test)": 1}
    assert len({r["id"] for r in load_suite("omnimed", splits, image_root=images, split="all")}) == 4
    with pytest.raises(SuiteError, match=r"image not found: 'Images/ACRIMA/Im001_ACRIMA\.png' .*; fix: --image-root "
                                         r"the OmniMedVQA folder"):
        load_suite("omnimed", splits)


def test_pathvqa_sharded_splits_never_mixed(tmp_path):
    """HF flaviagiammarino/path-vqa: data/{train,validation,test}-*-of-*.parquet, train in two shards."""
    root = rf.pathvqa(tmp_path)
    recs, skips = load_suite_report("pathvqa", root)
    assert [(r["id"], r["answer"], r["kind"]) for r in recs] == [
        ("pathvqa-test-0", "no", "yesno"), ("pathvqa-test-1", "yes", "yesno"), ("pathvqa-test-2", "no", "yesno")]
    assert skips.as_dict() == {"split 'train' (reading test)": 3, "split 'validation' (reading test)": 1,
                               "open-ended rows (the `open` suite grades them)": 2}
    assert [r["id"] for r in load_suite("open", root)] == ["open-test-3", "open-test-4"]
    assert [r["question"] for r in load_suite("pathvqa", root, split="train")] == [
        "train: is there necrosis 0?", "train: is there necrosis 1?"]


def test_slake_release_test_split_english_with_imgs_zip(tmp_path):
    """HF BoKelvin/SLAKE: {train,validation,test}.json + imgs.zip."""
    root = rf.slake(tmp_path, FIXTURES)
    recs, skips = load_suite_report("slake", root)
    assert [(r["id"], r["kind"], r["answer"], r["subset"]) for r in recs] == [
        ("slake-test-11934", "open", "Lung", "closed"), ("slake-test-11936", "yesno", "yes", "closed"),
        ("slake-test-11937", "open", "CT", "open")]
    assert skips.as_dict() == {"split 'train' (reading test)": 2, "split 'validation' (reading test)": 1,
                               "q_lang 'zh' (the English benchmark)": 1}
    assert [r["id"] for r in load_suite("slake", root, split="train")] == ["slake-train-1"]


def test_pmcvqa_release_test_clean_with_images_zip(tmp_path):
    """HF xmcmic/PMC-VQA: test_clean.csv (default), test.csv, train.csv, images.zip."""
    root = rf.pmcvqa(tmp_path)
    recs, skips = load_suite_report("pmcvqa", root)
    assert [(r["id"], r["answer"], r["options"]) for r in recs] == [
        ("pmcvqa-test_clean-1", "B", ["CT", "Immunohistochemistry", "MRI", "Ultrasound"]),
        ("pmcvqa-test_clean-2", "B", ["CT", "Immunohistochemistry", "MRI", "Ultrasound"])]
    assert skips.as_dict() == {"split 'test' (reading test_clean)": 3, "split 'train' (reading test_clean)": 1}


def test_vqarad_split_without_records_says_which_split_has_them(tmp_path):
    """OSF VQA-RAD: phrase_type test_* is the test split."""
    root = rf.vqarad(tmp_path, FIXTURES)
    recs, skips = load_suite_report("vqarad", root)
    assert [r["id"] for r in recs] == ["vqarad-1", "vqarad-2", "vqarad-3"]
    assert skips.as_dict() == {"split 'train' (phrase_type freeform/para)": 1}
    only_train = root / "train_only.json"
    only_train.write_text('[{"qid": 4, "phrase_type": "freeform", "image_name": "synpic54610.jpg", '
                          '"question": "Is this a CT?", "answer": "yes", "answer_type": "CLOSED"}]')
    with pytest.raises(SuiteError, match=r"expected split 'test', found only 'train'; fix: --split one of train or all"):
        load_suite("vqarad", only_train)


def test_vqarad_hf_mirror_with_hashed_shard_names(tmp_path):
    """HF flaviagiammarino/vqa-rad: data/<split>-00000-of-00001-<hash>.parquet."""
    recs, skips = load_suite_report("vqarad", rf.vqarad_hf(tmp_path))
    assert [(r["id"], r["kind"], r["answer"], r["subset"]) for r in recs] == [
        ("vqarad-test-0", "yesno", "no", "closed"), ("vqarad-test-1", "yesno", "yes", "closed"),
        ("vqarad-test-2", "open", "lungs", "open")]
    assert skips.as_dict() == {"split 'train' (reading test)": 2}


BUILDERS = {
    "medxpertqa": lambda t: (rf.medxpertqa(t), {}), "mmmu-med": lambda t: (rf.mmmu(t), {}),
    "quiltvqa": lambda t: (rf.quiltvqa(t), {}), "pathmmu": lambda t: (rf.pathmmu(t), {}),
    "omnimed": lambda t: (rf.omnimedvqa(t), {}), "pathvqa": lambda t: (rf.pathvqa(t), {}),
    "open": lambda t: (rf.pathvqa(t), {}), "slake": lambda t: (rf.slake(t, FIXTURES), {}),
    "pmcvqa": lambda t: (rf.pmcvqa(t), {}), "vqarad": lambda t: (rf.vqarad(t, FIXTURES), {}),
    "medr1": lambda t: (rf.medr1_splits(t, rf.omnimedvqa(t)), {"image_root": t / "OmniMedVQA"}),
    "vqarad-hf": lambda t: (rf.vqarad_hf(t), {}),
    "vlmeval": lambda t: (rf.copy_into(FIXTURES / "vlmeval" / "PathMMU_mini.tsv", t / "vlmeval"), {}),
}
DEFAULT_N = {"medxpertqa": 3, "mmmu-med": 4, "quiltvqa": 4, "pathmmu": 4, "omnimed": 3, "pathvqa": 3, "open": 2,
             "slake": 3, "pmcvqa": 2, "vqarad": 3, "medr1": 3,
             "vqarad-hf": 3, "vlmeval": 3}


SUITE_OF = {"medr1": "omnimed", "vqarad-hf": "vqarad"}  # second layouts of one suite


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_reader_gives_unique_stable_ids_on_every_split(name, tmp_path):
    suite = SUITE_OF.get(name, name)
    root, options = BUILDERS[name](tmp_path)
    for i in range(2 if name == "omnimed" else 0):  # --split all reads Restricted-access: your own copy of its images
        rf.write_image(root / "Images" / "AIDA" / f"{i}.jpg", fmt="JPEG")
    t0 = time.perf_counter()
    default = load_suite(suite, root, **options)
    seconds = time.perf_counter() - t0
    assert len(default) == DEFAULT_N[name], seconds
    assert len({r["id"] for r in default}) == len(default)
    assert [r["id"] for r in load_suite(suite, root, **options)] == [r["id"] for r in default]  # stable
    if get_suite(suite).splits:  # a release with splits: every split at once, still unique
        every = load_suite(suite, root, split="all", **options)
        assert len({r["id"] for r in every}) == len(every) >= len(default)


def test_duplicate_ids_are_refused(tmp_path):
    rf.write_image(tmp_path / "a.png")
    rf.write_jsonl(tmp_path / "test.jsonl", [{"id": "x", "image": "a.png", "question": "Is it?", "answer": "yes"}] * 2)
    with pytest.raises(SuiteError, match=r"expected unique question ids, found 'x' at records 0 and 1"):
        load_suite("pathvqa", tmp_path / "test.jsonl")


def test_split_on_a_single_split_suite_is_refused(tmp_path):
    with pytest.raises(SuiteError, match=r"expected no --split for suite 'vlmeval'"):
        load_suite("vlmeval", FIXTURES / "vlmeval" / "PathMMU_mini.tsv", split="test")


@pytest.mark.parametrize("mode,fmt", [("CMYK", "JPEG"), ("P", "PNG"), ("I;16", "PNG"), ("RGB", "TIFF"),
                                      ("RGBA", "PNG"), ("L", "JPEG")])
def test_release_images_open_as_rgb(mode, fmt, tmp_path):
    from evaluation.images import open_rgb

    im = open_rgb(rf.write_image(tmp_path / f"x.{fmt.lower()}", (180, 40, 60), fmt, mode))
    assert im.mode == "RGB" and im.size == (16, 16)
    if mode == "I;16":  # rescaled to its own range, not clipped to white
        assert im.getextrema()[0] == (0, 255)
