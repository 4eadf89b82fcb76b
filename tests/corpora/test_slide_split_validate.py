"""Slides in the in-stage split, the leakage check and ``python -m corpora.validate --slides.*``: records naming
one slide (or its tiles) never fall on both sides of a split, leakage finds a slide named in train and tiled in
eval, and validation tiles every slide under the run's settings, naming file:line when one yields fewer than K
tiles, is smaller than one tile, or has no µm/px under ``mpp_fallback=refuse``."""
import json
import shutil

import datasets
import pytest

from corpora.leakage import find_leaks
from corpora.readers import load_qa
from corpora.slides import tile_slide, TileParams
from corpora.slides.sampling import SlideSampling
from corpora.slides.tiling import slide_of_image
from corpora.training_data import split_by_image
from corpora.validate import main as validate_main

from tests.slide_cells import cells_slide

SIX = [(0, 0), (1, 1), (1, 2), (2, 3), (3, 4), (3, 5)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    (d / ".dataset-root").touch()
    cells_slide(d / "a.svs", SIX)
    shutil.copy(d / "a.svs", d / "a-copy.svs")  # the same slide under another name
    cells_slide(d / "b.svs", [(0, 1), (2, 2), (3, 3)], seed=1)
    cells_slide(d / "nompp.svs", SIX, mpp=None)
    return d


def settings(tmp_path, **kw):
    return SlideSampling(**{"mpp": 0.5, "size": 64, "min_tissue": 0.5, "cache_dir": str(tmp_path / "cache"), **kw})


def write_qa(path, slides):
    path.write_text("".join(json.dumps({"id": f"q{i}", "slide": s, "question": f"Question {i}?", "answer": "yes"})
                            + "\n" for i, s in enumerate(slides)))
    return path


def test_records_of_one_slide_never_fall_on_both_sides_of_the_split(data, tmp_path):
    # a.svs by name, by copy, and as single exported tiles (a patch corpus cut from the slide: each record names
    # another tile, so keying on the first image put them on both sides); b.svs twice; six plain images.
    exported = tile_slide(data / "a.svs", TileParams(mpp=0.5, size=64), cache_root=tmp_path / "c").export(tmp_path / "x")
    tiles = sorted(str(p) for p in (exported / "tiles").glob("*.png"))
    qa = load_qa(write_qa(data / "qa.jsonl", ["a.svs", "a-copy.svs", "b.svs", "b.svs"]), slides=settings(tmp_path, k=2))
    rows = [list(r["images"]) for r in qa] + [[t] for t in tiles] + [[f"/img/{i}.png"] for i in range(6)]
    dataset = datasets.Dataset.from_dict({"images": rows, "n": list(range(len(rows)))})
    a = slide_of_image(tiles[0])
    assert a == slide_of_image(qa[0]["images"][0]) == slide_of_image(qa[1]["images"][1])  # content, not name
    a_rows = set(range(2)) | set(range(4, 4 + len(tiles)))
    for seed in range(12):
        train, held = split_by_image(dataset, 0.3, seed)
        sides = [set(train["n"]), set(held["n"])]
        assert sides[0] | sides[1] == set(range(len(rows))) and not sides[0] & sides[1]
        assert any(a_rows <= side for side in sides), seed  # every a.svs record on one side
        assert any({2, 3} <= side for side in sides), seed
    # groups are drawn: a (8 rows) + b (2 rows) + 6 images = 8 groups, 0.3 of them (2) held out
    assert {len(split_by_image(dataset, 0.3, s)[1]) for s in range(12)} <= {2, 3, 9, 10}


def test_plain_one_image_records_split_as_before(tmp_path):
    rows = datasets.Dataset.from_dict({"images": [[f"/img/{i % 10}.png"] for i in range(30)]})
    train, held = split_by_image(rows, 0.2, 0)
    held_images = {i[0] for i in held["images"]}
    assert len(held_images) == 2 and not held_images & {i[0] for i in train["images"]}


def test_leakage_finds_a_slide_named_in_train_and_tiled_in_eval(data, tmp_path):
    write_qa(data / "train.jsonl", ["a-copy.svs"])
    exported = tile_slide(data / "a.svs", TileParams(mpp=0.5, size=64), cache_root=tmp_path / "c").export(tmp_path / "e")
    tile = sorted((exported / "tiles").glob("*.png"))[2]
    (tmp_path / "eval.jsonl").write_text(json.dumps({"image": str(tile), "question": "Other?", "answer": "no"}) + "\n")
    (tmp_path / ".dataset-root").touch()
    report = find_leaks(data / "train.jsonl", tmp_path / "eval.jsonl")
    assert report.slides == [(str((data / "a-copy.svs").resolve()), str(tile))] and report.leaks
    assert find_leaks(tmp_path / "eval.jsonl", data / "train.jsonl").slides == [(str(tile),
                                                                                  str((data / "a-copy.svs").resolve()))]
    other = tile_slide(data / "b.svs", TileParams(mpp=0.5, size=64), cache_root=tmp_path / "c").paths()[0]
    (tmp_path / "eval.jsonl").write_text(json.dumps({"image": str(other), "question": "Other?", "answer": "no"}) + "\n")
    assert find_leaks(data / "train.jsonl", tmp_path / "eval.jsonl").slides == []


def run_validate(capsys, path, *options):
    code = validate_main([str(path), "--no-images", "--slides.mpp", "0.5", "--slides.size", "64", *options])
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err.strip().splitlines()


def test_validate_checks_k_tiles_under_the_runs_slide_settings(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    qa = write_qa(data / "k.jsonl", ["a.svs", "b.svs"])
    assert run_validate(capsys, qa, "--slides.k", "3")[0] == 0  # a: 6 tiles, b: 3
    code, out, _ = run_validate(capsys, qa, "--slides.k", "4")
    assert code == 1 and len(out) == 2 and out[0].startswith(f"{qa}:2: too-few-tiles: slide ")
    assert "b.svs yields 3 tiles of 64 px with >= 0.5 tissue at 0.5 µm/px, slides.k=4" in out[0]
    code, out, _ = run_validate(capsys, qa, "--slides.k", "2", "--slides.min_tissue", "1.01")
    assert code == 2  # the underscore spelling is accepted, and the value checked
    assert run_validate(capsys, qa, "--slides.k", "3", "--slides.thumbnail")[0] == 0  # the thumbnail is no tile
    code, out, _ = run_validate(capsys, qa, "--slides.k", "2", "--policy", "lenient", "--slides.size", "512")
    assert code == 1 and out[0].startswith(f"{qa}:1: unreadable-slide: {data / 'a.svs'}: expected a slide of at least one tile")


def test_validate_a_slide_without_mpp_falls_back_or_is_refused_as_in_stages(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    qa = write_qa(data / "nompp.jsonl", ["nompp.svs"])
    assert run_validate(capsys, qa, "--slides.k", "2")[0] == 0  # objective power 20 -> 0.5 µm/px
    code, out, _ = run_validate(capsys, qa, "--slides.k", "2", "--slides.mpp-fallback", "refuse")
    assert code == 1 and out[0].startswith(f"{qa}:1: unreadable-slide: {data / 'nompp.svs'}: expected a µm/px")
    assert not [p for p in (tmp_path / "cache" / "slides" / "tiles").rglob("*") if p.name.startswith(".staging")]


@pytest.mark.parametrize("option,value,message", [
    ("--slides.k", "0", "slides.k must be >= 1"),
    ("--slides.select", "best", "slides.select must be one of tissue, random, clip"),
    ("--slides.overlap", "64", "0 <= overlap < size"),
])
def test_validate_refuses_a_bad_slide_setting_in_one_line(tmp_path, capsys, option, value, message):
    code, out, err = run_validate(capsys, write_qa(tmp_path / "qa.jsonl", ["a.svs"]), option, value)
    assert code == 2 and len(err) == 1 and message in err[0] and out == []


def test_validate_reads_the_slide_settings_of_the_runs_config(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    qa = write_qa(data / "cfg.jsonl", ["a.svs", "b.svs"])
    stage = tmp_path / "sft.yaml"
    stage.write_text("template: cot\nslides:\n  k: 4\n  size: 64\n  mpp: 0.5\n")
    code, out, _ = run_validate(capsys, qa, "--config", str(stage))
    assert code == 1 and out[0].startswith(f"{qa}:2: too-few-tiles: ") and "slides.k=4" in out[0]
    assert run_validate(capsys, qa, "--config", str(stage), "--slides.k", "3")[0] == 0  # an option overrides it
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run: x\nsft:\n  slides: {k: 3, size: 64}\nrl:\n  slides: {k: 5, size: 64}\n")
    assert run_validate(capsys, qa, "--config", str(recipe), "--stage", "sft")[0] == 0
    assert run_validate(capsys, qa, "--config", str(recipe), "--stage", "rl")[0] == 1
    for bad, message in [(["--config", str(recipe), "--stage", "opd"], "expected a section 'opd'"),
                         (["--stage", "sft"], "pass --config FILE too")]:
        code, out, err = run_validate(capsys, qa, *bad)
        assert code == 2 and len(err) == 1 and message in err[0]
    stage.write_text("slides:\n  k: 2\n  tiles: 3\n")
    code, _, err = run_validate(capsys, qa, "--config", str(stage))
    assert code == 2 and err == [f"error: --config {stage}: unknown slides field(s) tiles"]


def test_a_recipe_validates_each_file_with_the_slide_settings_of_the_stage_reading_it(data, tmp_path, monkeypatch):
    from corpora.records import DataError
    from recipes.pipeline import validate_corpus

    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    root = tmp_path / "corpus"
    root.mkdir()
    (root / ".dataset-root").touch()
    shutil.copy(data / "b.svs", root / "b.svs")  # 3 tissue tiles
    write_qa(root / "rl.jsonl", ["b.svs"])
    (root / "pairs.jsonl").write_text(json.dumps({"slide": "b.svs", "caption": "violet"}) + "\n")
    validate_corpus(root, {"pairs.jsonl": settings(tmp_path, k=3), "rl.jsonl": settings(tmp_path, k=3)})
    with pytest.raises(DataError, match=r"rl\.jsonl:1: too-few-tiles: slide b\.svs yields 3 tiles .* slides\.k=4"):
        validate_corpus(root, {"pairs.jsonl": settings(tmp_path, k=3), "rl.jsonl": settings(tmp_path, k=4)})
