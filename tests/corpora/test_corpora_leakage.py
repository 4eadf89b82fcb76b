"""Leakage check: planted exact, re-encoded and resized duplicates are found; distinct images are not."""
import shutil

import jsonlines
import pytest
from PIL import Image

from corpora.demo import build_demo
from corpora.leakage import find_leaks, main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"), seed=3, n_train=24, n_eval=16, image_size=56)  # the plant upscales to 112


def test_clean_demo_split_has_no_image_leak(corpus):
    report = find_leaks(corpus.pairs, corpus.retrieval)
    assert report.exact == [] and report.near == [] and not report.leaks


def test_planted_duplicates_are_found(corpus, tmp_path):
    with jsonlines.open(corpus.pairs) as r:
        train = [corpus.root / p["images"][0] for p in r]
    shutil.copytree(corpus.zeroshot, tmp_path / "eval")
    planted = tmp_path / "eval" / "normal"
    shutil.copyfile(train[0], planted / "copy.png")  # byte-identical copy
    Image.open(train[1]).save(planted / "lossless.png", compress_level=0)  # same pixels, other bytes
    Image.open(train[2]).convert("RGB").save(planted / "recoded.jpg", quality=70)  # lossy re-encode
    Image.open(train[3]).resize((112, 112), Image.Resampling.BICUBIC).save(planted / "resized.png")  # upscaled

    report = find_leaks(corpus.pairs, tmp_path / "eval")
    assert sorted((t, e.split("/")[-1]) for t, e in report.exact) == \
           [(str(train[0]), "copy.png"), (str(train[1]), "lossless.png")]
    assert sorted((t, e.split("/")[-1]) for t, e, _ in report.near) == \
           [(str(train[2]), "recoded.jpg"), (str(train[3]), "resized.png")]
    assert report.leaks


def test_repeated_questions_are_reported(tmp_path, corpus):
    rows = [{"image": "a.png", "question": "Is THIS malignant?"}, {"image": "a.png", "question": "Unique?"}]
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    with jsonlines.open(tmp_path / "train.jsonl", "w") as w:
        w.write_all(rows)
    with jsonlines.open(tmp_path / "eval.jsonl", "w") as w:
        w.write({"image": "a.png", "question": "is this malignant"})
    report = find_leaks(tmp_path / "train.jsonl", tmp_path / "eval.jsonl")
    assert report.questions == [("is this malignant", 1, 1)]
    assert len(report.exact) == 1  # and the shared image itself


def test_cli_exit_codes(corpus, tmp_path, capsys):
    assert main([str(corpus.rl), str(corpus.eval_mcq)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("0 exact and 0 near-duplicate images, ")
    assert main([str(corpus.rl), str(corpus.rl)]) == 1  # a set against itself leaks everything
    assert main([str(tmp_path / "missing.jsonl"), str(corpus.rl)]) == 2
    with pytest.raises(SystemExit):
        main(["--help"])
