"""Readers: every source format round-trips to the same schema; paths never escape the dataset root."""
import csv
import json
import os

import jsonlines
import numpy as np
import pytest
from PIL import Image

from corpora.readers import DataError, load, load_pairs, load_qa, load_sft, write_webdataset

PAIRS = [{"id": f"p{i}", "images": [f"img/{i}.png"], "caption": f"caption number {i}", "label": ["a", "b"][i % 2]}
         for i in range(5)]


@pytest.fixture
def root(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / "img" / f"{i}.png")
    return tmp_path


def _write_jsonl(path, rows):
    with jsonlines.open(path, "w") as w:
        w.write_all(rows)
    return path


def _expected(root, rows=PAIRS):
    return [{**r, "images": [str(root / p) for p in r["images"]]} for r in rows]


def test_pairs_jsonl_roundtrip(root):
    assert load_pairs(_write_jsonl(root / "pairs.jsonl", PAIRS)).to_list() == _expected(root)


def test_pairs_csv_patho_r1_and_quilt_columns(root):
    with open(root / "pairs.csv", "w", newline="") as f:  # Patho-R1 CLIP format plus a label column
        w = csv.writer(f)
        w.writerow(["image_path", "caption", "label"])
        w.writerows([r["images"][0], r["caption"], r["label"]] for r in PAIRS)
    rows = load_pairs(root / "pairs.csv").to_list()
    assert [{k: r[k] for k in ("images", "caption", "label")} for r in rows] == \
           [{k: r[k] for k in ("images", "caption", "label")} for r in _expected(root)]
    with open(root / "quilt.tsv", "w", newline="") as f:  # open_clip / Quilt style: filepath<TAB>title, extra columns
        w = csv.writer(f, delimiter="\t")
        w.writerow(["filepath", "title", "pathology"])
        w.writerows([r["images"][0], r["caption"], "colon"] for r in PAIRS)
    assert [r["caption"] for r in load_pairs(root / "quilt.tsv")] == [r["caption"] for r in PAIRS]


def test_arch_captions_json_and_images_folder(root):
    arch = root / "books_set"
    (arch / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(arch / "images" / "u1.png")
    (arch / "captions.json").write_text(json.dumps({"0": {"uuid": "u1", "caption": "A gland.", "letter": "A"}}))
    assert load_pairs(arch).to_list() == [{"id": "u1", "images": [str(arch / "images" / "u1.png")],
                                           "caption": "A gland.", "label": ""}]


def test_webdataset_writer_roundtrip(root):
    original = load_pairs(_write_jsonl(root / "pairs.jsonl", PAIRS))
    shards = write_webdataset(original, root / "shards", shard_size=2)
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    back = load_pairs(root / "shards").to_list()
    assert [{k: r[k] for k in ("id", "caption", "label")} for r in back] == \
           [{k: r[k] for k in ("id", "caption", "label")} for r in original]
    assert [open(r["images"][0], "rb").read() for r in back] == [open(r["images"][0], "rb").read() for r in original]
    # shards are reproducible (fixed tar metadata)
    again = write_webdataset(original, root / "again", shard_size=2)
    assert [s.read_bytes() for s in again] == [s.read_bytes() for s in shards]


def test_streaming_gives_the_same_rows(root):
    path = _write_jsonl(root / "pairs.jsonl", PAIRS)
    assert list(load_pairs(path, streaming=True)) == load_pairs(path).to_list()


def test_changed_file_is_read_again_despite_the_arrow_cache(root):
    path = _write_jsonl(root / "pairs.jsonl", PAIRS)
    assert len(load_pairs(path)) == 5
    _write_jsonl(path, PAIRS[:2])
    os.utime(path, ns=(1, 1))  # even with an old mtime the size differs
    assert len(load_pairs(path)) == 2


def test_qa_r1v_problem_solution_format(root):
    rows = [{"image": "img/0.png", "problem": "What is shown?\nA. gland\nB. stroma\nC. fat",
             "solution": "<answer> B </answer>"},
            {"image": "img/1.png", "problem": "Is this malignant?", "solution": "<answer> yes </answer>"}]
    qa = load_qa(_write_jsonl(root / "rl.jsonl", rows)).to_list()
    assert qa[0] == {"id": "rl-1", "images": [str(root / "img/0.png")], "question": "What is shown?",
                     "options": ["gland", "stroma", "fat"], "answer": "B", "kind": "mcq",
                     "solution": "<answer> B </answer>", "subset": "", "reasoning": ""}
    assert (qa[1]["kind"], qa[1]["answer"], qa[1]["options"]) == ("yesno", "yes", [])


def test_qa_med_r1_one_line_options(root):
    # Med-R1 writes the options on the question's line; the comma inside "No, it's normal" is no option boundary
    rows = [{"image": "img/0.png", "problem": "Which finding? A)Infection, B)No, it's normal, C)Tumor",
             "solution": "<answer> B </answer>"},
            {"image": "img/1.png", "problem": "Is vitamin A) low?", "solution": "<answer> yes </answer>"}]
    qa = load_qa(_write_jsonl(root / "rl.jsonl", rows)).to_list()
    assert (qa[0]["question"], qa[0]["options"], qa[0]["answer"]) == \
        ("Which finding?", ["Infection", "No, it's normal", "Tumor"], "B")
    assert (qa[1]["question"], qa[1]["options"]) == ("Is vitamin A) low?", [])  # a lone "A)" is no option list


def test_qa_options_mapping_and_answer_as_text_multi_image(root):
    row = {"id": "q1", "images": ["img/0.png", "img/1.png"], "question": "Which?", "modality": "he",
           "options": {"A": "gland", "B": "stroma"}, "answer": "stroma", "reasoning": "pink fibres"}
    qa = load(_write_jsonl(root / "q.jsonl", [row]), "eval")[0]
    assert (qa["options"], qa["answer"], qa["subset"], len(qa["images"])) == (["gland", "stroma"], "B", "he", 2)


def test_sft_messages_and_rendered_qa(root):
    chat = {"id": "c1", "images": ["img/0.png"], "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
        {"role": "assistant", "content": "Pink stroma."}]}
    qa = {"id": "q1", "image": "img/1.png", "question": "Which?", "options": ["gland", "stroma"], "answer": "B",
          "reasoning": "Pink fibres."}
    rows = load_sft(_write_jsonl(root / "sft.jsonl", [chat, qa]), template="nothink").to_list()
    assert rows[0]["messages"] == [{"role": "user", "content": "Describe."},
                                   {"role": "assistant", "content": "Pink stroma."}]
    assert rows[1]["messages"][1] == {"role": "assistant", "content": "<answer>B</answer>"}
    assert rows[1]["messages"][0]["content"].startswith("Which?\nA. gland\nB. stroma\n")


def test_paths_escaping_the_root_are_refused(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "x.png"
    Image.new("RGB", (4, 4)).save(outside)
    (root / "img" / "link.png").symlink_to(outside)
    for bad in ["../x.png", str(outside), "img/link.png"]:
        path = _write_jsonl(root / "bad.jsonl", [{"image": bad, "caption": "c"}])
        with pytest.raises(DataError, match=r"bad\.jsonl:1: path-escapes-root: image path .* resolves outside"):
            load_pairs(path)
    # an absolute path inside the root is fine
    assert load_pairs(_write_jsonl(root / "ok.jsonl", [{"image": str(root / "img/0.png"), "caption": "c"}]))[0]


def test_first_bad_record_raises_with_file_and_line(root):
    path = root / "pairs.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: malformed-line: invalid JSON"):
        load_pairs(path)


def test_unknown_kind_and_format(root):
    with pytest.raises(ValueError, match="unknown sample kind 'video'"):
        load(root, "video")
    (root / "x.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported data format '.parquet'"):
        load_pairs(root / "x.parquet")


def test_lenient_validation_tells_the_reader_which_records_to_leave_out(tmp_path):
    import json

    from PIL import Image

    from corpora.readers import load_pairs
    from corpora.validate import validate

    Image.new("RGB", (8, 8), "red").save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    rows = [{"id": "a", "image": "good.png", "caption": "one"}, {"id": "b", "image": "bad.png", "caption": "two"},
            {"id": "c", "image": "good.png", "caption": "three"}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = validate(data, "pairs", policy="lenient")
    assert report.ok and report.bad_locations == {(str(data), 2)}
    assert load_pairs(data, skip=report.bad_locations)["caption"] == ["one", "three"]
    assert load_pairs(data)["caption"] == ["one", "two", "three"]  # the reader alone checks records, not pixels
