"""Slide records everywhere: a corpora record naming ``"slide": PATH`` (CSV ``slide_path``) instead of images
becomes K tiles (by tissue, seeded random, or PathoCLIP-ranked; thumbnail optionally first) in every reader,
validation names an unreadable slide at file:line, leakage finds one slide on both sides, and the ``qa``
evaluation suite reads slide records with the checkpoint's settings.
The slides are Aperio SVS files written in OpenSlide's documented layout (see tests/corpora/test_slides.py)."""
import csv
import json
import shutil

import numpy as np
import pytest
import tifffile

from corpora.leakage import find_leaks
from corpora.leakage import main as leakage_main
from corpora.readers import load_pairs, load_qa, load_sft
from corpora.slides.sampling import SlideSampling, slide_images
from corpora.slides.synthetic import GLASS, write_svs
from corpora.validate import validate

TISSUE = (222, 140, 180)


def cells_slide(cells, *, rows=4, cols=6, cell=64, seed=0):
    """Glass with tissue on the given (row, col) cells; ``cells`` maps a cell to its tissue fraction (the left
    part of the cell is tissue), so tiles of 64 px at the scan's µm/px have known, distinct tissue fractions."""
    rng = np.random.default_rng(seed)
    img = np.empty((rows * cell, cols * cell, 3), np.uint8)
    img[:] = GLASS
    for (r, c), fraction in cells.items():
        block = img[r * cell:(r + 1) * cell, c * cell:c * cell + round(cell * fraction)]
        block[:] = TISSUE
        block[rng.random(block.shape[:2]) < 0.1] = (110, 60, 150)
    return img


CELLS = {(0, 0): 1.0, (1, 1): 0.9, (1, 2): 0.8, (2, 3): 0.7, (3, 4): 0.6, (3, 5): 1.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("slidedata")
    write_svs(d / "a.svs", cells_slide(CELLS), mpp=0.5, n_levels=2, tile=64, label=False)
    write_svs(d / "b.svs", cells_slide({(0, 1): 1.0, (2, 2): 1.0}, seed=1), mpp=0.5, n_levels=2, tile=64,
              label=False)
    rows = [{"id": "q1", "slide": "a.svs", "question": "Is this tumour?", "answer": "yes"},
            {"id": "q2", "slide": "b.svs", "question": "Which tissue?", "options": ["colon", "lung"], "answer": "A"}]
    (d / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def sampling(tmp_path, **kw):
    return SlideSampling(**{"mpp": 0.5, "size": 64, "min_tissue": 0.5, "cache_dir": str(tmp_path / "cache"), **kw})


def tile_xy(path):
    name = path.rsplit("/", 1)[-1]  # tiles/000003_x192_y64.png
    x, y = name.removesuffix(".png").split("_")[1:]
    return int(x[1:]) // 64, int(y[1:]) // 64


def test_qa_records_become_the_k_tiles_with_most_tissue_in_reading_order(data, tmp_path):
    rows = load_qa(data / "qa.jsonl", slides=sampling(tmp_path, k=3))
    first = rows[0]["images"]
    assert len(first) == 3
    # tissue fractions 1.0 (0,0), 1.0 (3,5), 0.9 (1,1): those three, in row-major order as (col, row)
    assert [tile_xy(p) for p in first] == [(0, 0), (1, 1), (5, 3)]
    assert len(rows[1]["images"]) == 2  # b.svs has only two tissue tiles: fewer than k, all of them
    with_thumb = load_qa(data / "qa.jsonl", slides=sampling(tmp_path, k=3, thumbnail=True))[0]["images"]
    assert with_thumb[0].endswith("thumbnail.png") and with_thumb[1:] == first


def test_random_selection_is_seeded(data, tmp_path):
    pick = lambda seed: slide_images(data / "a.svs", sampling(tmp_path, k=2, select="random", seed=seed))  # noqa: E731
    assert pick(0) == pick(0)
    assert len({tuple(pick(s)) for s in range(6)}) > 1  # 6 tissue tiles, 15 pairs: seeds choose differently
    assert all(tile_xy(p) in {(c, r) for r, c in CELLS} for s in range(6) for p in pick(s))


def test_sft_and_csv_pairs_read_slides(data, tmp_path):
    sft = load_sft(data / "qa.jsonl", slides=sampling(tmp_path, k=1))
    assert [len(r["images"]) for r in sft] == [1, 1] and sft[0]["messages"][-1]["role"] == "assistant"
    with open(data / "pairs.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_path", "slide_path", "caption"])
        w.writerow(["", "a.svs", "colon with six tissue islands"])
    pairs = load_pairs(data / "pairs.csv", slides=sampling(tmp_path, k=2))
    assert len(pairs[0]["images"]) == 2 and pairs[0]["caption"].startswith("colon")


def test_validation_names_an_unreadable_slide_at_file_line(data, tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_bytes((data / "a.svs").read_bytes())
    with tifffile.TiffFile(bad) as t:
        offset = t.pages[-1].dataoffsets[0]  # the coarsest level: caught when the slide is opened
    with open(bad, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * 16)
    shutil.copy(data / "a.svs", tmp_path / "a.svs")
    lines = [{"slide": "a.svs", "question": "q?", "answer": "yes"},
             {"slide": "bad.svs", "question": "q?", "answer": "no"},
             {"slide": "gone.svs", "question": "q?", "answer": "no"},
             {"slide": "a.svs", "images": ["x.png"], "question": "q?", "answer": "no"}]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    report = validate(tmp_path / "qa.jsonl", "qa", slides=sampling(tmp_path, k=2))
    got = [(p.line, p.code) for p in report.problems]
    assert got == [(2, "unreadable-slide"), (3, "unreadable-slide"), (4, "bad-field")]
    assert "bad.svs: expected readable pixels" in report.problems[0].message
    assert "gone.svs: expected a slide file, found nothing" in report.problems[1].message
    assert str(report.problems[0]).startswith(f"{tmp_path / 'qa.jsonl'}:2: unreadable-slide: ")


def test_leakage_finds_the_same_slide_in_train_and_eval(data, tmp_path, capsys):
    (tmp_path / "eval").mkdir()
    shutil.copy(data / "a.svs", tmp_path / "eval" / "renamed.svs")  # same bytes, other name and folder
    (tmp_path / "eval" / "qa.jsonl").write_text(json.dumps({"slide": "renamed.svs", "question": "Other?",
                                                            "answer": "no"}) + "\n")
    report = find_leaks(data / "qa.jsonl", tmp_path / "eval" / "qa.jsonl")
    assert report.slides == [(str((data / "a.svs").resolve()), str((tmp_path / "eval" / "renamed.svs").resolve()))]
    assert report.leaks and report.exact == [] and report.near == []
    assert leakage_main([str(data / "qa.jsonl"), str(tmp_path / "eval" / "qa.jsonl")]) == 1
    assert "slide: " in capsys.readouterr().out
    write_svs(tmp_path / "eval" / "c.svs", cells_slide({(1, 1): 1.0}, seed=2), mpp=0.5, n_levels=2, tile=64)
    (tmp_path / "eval" / "qa.jsonl").write_text(json.dumps({"slide": "c.svs", "question": "Other?",
                                                            "answer": "no"}) + "\n")
    assert find_leaks(data / "qa.jsonl", tmp_path / "eval" / "qa.jsonl").slides == []


def test_qa_suite_reads_slide_records_with_the_checkpoints_settings(data, tmp_path, monkeypatch):
    from evaluation.suites import SuiteError, load_suite

    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    records = load_suite("qa", data / "qa.jsonl", checkpoint={"config": {"slides": sampling(tmp_path).to_dict()}})
    assert [r["id"] for r in records] == ["q1", "q2"] and [len(r["images"]) for r in records] == [6, 2]  # k=8
    trained = {"config": {"slides": sampling(tmp_path, k=2, thumbnail=True).to_dict()}}
    records = load_suite("qa", data / "qa.jsonl", checkpoint=trained)
    assert [len(r["images"]) for r in records] == [3, 3] and records[0]["images"][0].endswith("thumbnail.png")
    with pytest.raises(SuiteError, match="suite 'qa' reads your own file: pass --data FILE"):
        load_suite("qa")
