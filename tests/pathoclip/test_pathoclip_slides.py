"""PathoCLIP on slide pairs: a pair naming ``"slide": PATH`` (CSV ``slide_path``) trains on its ``slides.k`` tiles
(and thumbnail), one (tile, caption) row each, read from the slide tile cache; an unreadable slide or one with
fewer than K tiles is one line naming file:line and exit 2, before open_clip_train is imported."""
import csv
import re

import pytest

from corpora.slides import tiling
from corpora.slides.tiling import slide_of_image
from stages.config import load_config

from pathoclip import train as clip_train
from pathoclip.train import CLIPTrainConfig
from tests.slide_cells import cells_slide

SLIDES = "slides.mpp=0.5 slides.size=64 slides.min_tissue=0.5".split()


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """Four slides (three tissue cells each) as CSV pairs with a slide_path column, plus one plain image pair."""
    from PIL import Image

    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path / "home"))
    d = tmp_path / "data"
    d.mkdir()
    rows = []
    for i, colour in enumerate([(222, 140, 180), (150, 90, 190)] * 2):
        cells_slide(d / f"s{i}.svs", [(0, i % 4), (1, 1), (2, 2)], rows=3, cols=4, colour=colour, seed=i)
        rows.append(["", f"s{i}.svs", ["pink stroma", "violet tumour"][i % 2]])
    Image.new("RGB", (64, 64), (200, 120, 160)).save(d / "patch.png")
    rows.append(["patch.png", "", "pink stroma"])
    with open(d / "pairs.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["image_path", "slide_path", "caption"], *rows])
    return d / "pairs.csv"


def _csv_rows(home):
    (pairs,) = (home / "cache" / "pathoclip").glob("*/pairs.csv")
    with open(pairs, newline="") as fh:
        return pairs, list(csv.reader(fh, delimiter="\t"))[1:]


def test_slide_pairs_train_on_k_tile_rows_from_the_cache_and_no_epoch_opens_a_slide(corpus, tmp_path, monkeypatch):
    home = tmp_path / "home"
    args = [f"data={corpus}", "subset_fraction=0", "epochs_b=2", "batch_size=13", "logging_steps=1", "run=s",
            "slides.k=2", "slides.thumbnail=true", *SLIDES]
    cfg = load_config(CLIPTrainConfig, args)
    assert len(clip_train.prepare_corpus(cfg)) == 4 * 3 + 1  # per slide: thumbnail + 2 tiles; the patch once
    pairs, rows = _csv_rows(home)
    slide_rows = rows[:12]
    assert [r[1] for r in slide_rows] == [c for c in ["pink stroma", "violet tumour"] * 2 for _ in range(3)]
    assert all(slide_of_image(r[0]) for r in slide_rows)  # tiles and thumbnails of the slide tile cache
    assert [r[0].endswith("thumbnail.png") for r in slide_rows] == [True, False, False] * 4
    assert all(str(home / "cache" / "slides" / "tiles") in r[0] for r in slide_rows)
    assert rows[12] == [str(corpus.parent / "patch.png"), "pink stroma"]

    def no_open(*a, **k):
        raise AssertionError("a slide was opened after the corpus was prepared")

    monkeypatch.setattr(tiling, "open_slide", no_open)  # training (both epochs, the second preparation) reads tiles
    final = clip_train.train(load_config(CLIPTrainConfig, args))
    params = (home / "logs" / "pathoclip" / "s" / "b" / "params.txt").read_text()
    assert f"train_data: {pairs}" in params
    from stages.registry import Registry

    (entry,) = [e for e in Registry(home).entries("pathoclip") if e["path"] == str(final)]
    assert entry["metrics"]["samples"] == 13 and entry["metrics"]["epochs"] == 2
    assert entry["config"]["slides"]["k"] == 2


def test_other_slide_settings_are_another_cached_corpus(corpus, tmp_path):
    clip_train.prepare_corpus(load_config(CLIPTrainConfig, [f"data={corpus}", "slides.k=1", *SLIDES]))
    corpus_3 = clip_train.prepare_corpus(load_config(CLIPTrainConfig, [f"data={corpus}", "slides.k=3", *SLIDES]))
    assert len(corpus_3) == 4 * 3 + 1
    assert len(list((tmp_path / "home" / "cache" / "pathoclip").glob("*/pairs.csv"))) == 2


@pytest.mark.parametrize("case,expected", [
    ("unreadable", r"pairs\.csv:3: unreadable-slide: .*s1\.svs: expected a "),
    ("few-tiles", r"pairs\.csv:2: too-few-tiles: slide s0\.svs yields 3 tiles .* slides\.k=4"),
])
def test_a_bad_slide_is_one_line_with_file_line_before_open_clip(corpus, tmp_path, monkeypatch, capsys, case, expected):
    if case == "unreadable":
        data = (corpus.parent / "s1.svs").read_bytes()
        (corpus.parent / "s1.svs").write_bytes(data[: len(data) // 3])  # truncated
    k = "slides.k=4" if case == "few-tiles" else "slides.k=2"

    def no_phase(*args):
        raise AssertionError("a phase of open_clip_train started before the data was validated")

    monkeypatch.setattr(clip_train, "run_open_clip_train", no_phase)
    with pytest.raises(SystemExit) as exit_:
        clip_train.main([f"data={corpus}", "run=bad", k, *SLIDES])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("python -m pathoclip.train: error: ") and re.search(expected, err[0]), err
    home = tmp_path / "home"
    assert not (home / "cache" / "pathoclip").exists() or not list((home / "cache" / "pathoclip").rglob("*.csv"))
    assert not [p for p in (home / "cache" / "slides").rglob("*") if p.name.startswith(".staging")]
    assert not (home / "logs" / "pathoclip" / "bad").exists()


def test_webdataset_shards_hold_the_same_tile_rows(corpus, tmp_path):
    import tarfile

    prepared = clip_train.prepare_corpus(load_config(CLIPTrainConfig, [f"data={corpus}", "slides.k=2", *SLIDES]))
    assert len(prepared) == 4 * 2 + 1
    args = prepared.open_clip_args("b", [0, 3, 8], "webdataset", 2, tmp_path / "run")
    members = {}
    for shard in args[1].split("::"):
        with tarfile.open(shard) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    assert args[args.index("--train-num-samples") + 1] == "3" and len([n for n in members if n.endswith(".png")]) == 3
    # rows 0, 3, 8: s0's first tile, s1's second, the plain patch -- one image each, with its pair's caption
    assert [members[f"00000000{i}.txt"].decode() for i in range(3)] == ["pink stroma", "violet tumour", "pink stroma"]
