"""pathoclip.data: the corpus is read and validated once per version, then served from the CSV cache."""
import csv
import json
import os

import pytest

from corpora.records import DataError
from pathoclip.data import PreparedCorpus, phase_rows


def _corpus(tmp_path, n=6):
    from PIL import Image

    (tmp_path / "img").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"id": f"p{i}", "image": f"img/{i}.png", "caption": f"caption\twith tab {i}"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter="\t"))


def test_first_run_writes_every_pair_then_later_runs_do_not_read_the_corpus(tmp_path, monkeypatch):
    data = _corpus(tmp_path)
    corpus = PreparedCorpus(data, tmp_path / "cache")
    assert len(corpus) == 6
    args = corpus.open_clip_args("b", list(range(6)), "csv", 1000, tmp_path / "run")
    rows = _read(args[1])
    assert rows[0] == ["filepath", "title"]
    assert rows[1:] == [[str(tmp_path / "img" / f"{i}.png"), f"caption\twith tab {i}"] for i in range(6)]

    import corpora.readers

    def no_read(*a, **k):
        raise AssertionError("the corpus was read again")

    monkeypatch.setattr(corpora.readers, "iter_samples", no_read)
    again = PreparedCorpus(data, tmp_path / "cache")
    assert len(again) == 6
    subset = phase_rows(6, 0.5, seed=0)["a"]
    sub_rows = _read(again.open_clip_args("a", subset, "csv", 1000, tmp_path / "run")[1])[1:]
    assert sub_rows == [rows[1 + i] for i in subset]


def test_a_changed_corpus_is_read_again(tmp_path):
    data = _corpus(tmp_path)
    assert len(PreparedCorpus(data, tmp_path / "cache")) == 6
    data.write_text(data.read_text().splitlines(keepends=True)[0])
    os.utime(data, ns=(1, 1))  # a different size and mtime: a different fingerprint
    assert len(PreparedCorpus(data, tmp_path / "cache")) == 1
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_a_bad_record_names_file_and_line_and_caches_nothing(tmp_path):
    data = _corpus(tmp_path)
    data.write_text(data.read_text() + json.dumps({"id": "x", "image": "img/0.png", "caption": ""}) + "\n")
    corpus = PreparedCorpus(data, tmp_path / "cache")
    with pytest.raises(DataError, match=rf"{data}:7: empty-caption"):
        len(corpus)
    assert not corpus.folder.exists()  # validated before anything is written


def test_missing_corpus_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="data not found"):
        PreparedCorpus(tmp_path / "nope.csv", tmp_path / "cache")


def test_training_reads_the_cached_csv(tmp_path, monkeypatch):
    from pathoclip.train import CLIPTrainConfig, train
    from stages.config import load_config

    from corpora.demo import build_demo

    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    demo = build_demo(tmp_path / "demo", n_train=32, n_eval=4, image_size=56)
    args = [f"data={demo.pairs}", "subset_fraction=0", "epochs_b=1", "batch_size=16", "logging_steps=1"]
    train(load_config(CLIPTrainConfig, [*args, "run=one"]))
    params = (tmp_path / "logs" / "pathoclip" / "one" / "b" / "params.txt").read_text()
    (cached,) = (tmp_path / "cache" / "pathoclip").glob("*/pairs.csv")
    assert f"train_data: {cached}" in params


def test_pathoclip_does_not_import_datasets():
    # ~1 s of every PathoCLIP run went to importing `datasets`, which open_clip_train never needs
    import subprocess
    import sys

    code = ("import sys, corpora.readers, pathoclip.train, pathoclip.data; "
            "sys.exit(1 if 'datasets' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
