"""Demo corpus: deterministic, fixed layout, split by image, answers visible in pixels but not in text."""
import hashlib
import json
from collections import Counter

import jsonlines
import numpy as np
import pytest
from PIL import Image

from corpora.demo import CLASSES, MCQ_FAMILIES, build_demo, main, text_only_baseline


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path):
    with jsonlines.open(path) as r:
        return list(r)


@pytest.fixture(scope="module")
def default_corpus(tmp_path_factory):
    # The demo's training size at small images (the default 112 px x 400 held-out takes 5x longer to build).
    return build_demo(tmp_path_factory.mktemp("demo"), seed=0, n_eval=160, image_size=56)


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = build_demo(tmp_path / "a", seed=7, n_train=12, n_eval=8)
    b = build_demo(tmp_path / "b", seed=7, n_train=12, n_eval=8)
    c = build_demo(tmp_path / "c", seed=8, n_train=12, n_eval=8)
    assert _digests(a.root) == _digests(b.root)
    assert _digests(a.root)["images/train/train-00000.png"] != _digests(c.root)["images/train/train-00000.png"]


def test_fixed_layout_and_sizes(tmp_path):
    corpus = build_demo(tmp_path, seed=0, n_train=12, n_eval=8, image_size=28)
    for path in [corpus.pairs, corpus.pairs_csv, corpus.sft, corpus.rl, corpus.eval_mcq, corpus.eval_yesno,
                 corpus.zeroshot_prompts, corpus.retrieval, corpus.meta]:
        assert path.is_file(), path
    assert len(_read(corpus.pairs)) == 12 and len(_read(corpus.rl)) == 12 and len(_read(corpus.sft)) == 24
    assert len(_read(corpus.eval_mcq)) == 8 and len(_read(corpus.eval_yesno)) == 8
    assert Image.open(tmp_path / _read(corpus.pairs)[0]["images"][0]).size == (28, 28)
    assert sorted(p.name for p in corpus.zeroshot.iterdir()) == sorted(CLASSES)
    assert sum(1 for _ in corpus.zeroshot.rglob("*.png")) == 8
    prompts = json.loads(corpus.zeroshot_prompts.read_text())
    assert sorted(prompts["0"]["classnames"]) == sorted(CLASSES)
    assert all("CLASSNAME" in t for t in prompts["0"]["templates"])
    meta = json.loads(corpus.meta.read_text())
    assert meta["seed"] == 0 and meta["sizes"] == {"n_train": 12, "n_eval": 8, "image_size": 28}
    assert corpus.pairs_csv.read_text().splitlines()[0] == "image_path,caption,label"


def test_rebuild_with_same_arguments_is_reused_and_different_arguments_rebuild(tmp_path):
    corpus = build_demo(tmp_path, n_train=8, n_eval=4)
    stamp = corpus.meta.stat().st_mtime_ns
    assert build_demo(tmp_path, n_train=8, n_eval=4).meta.stat().st_mtime_ns == stamp
    build_demo(tmp_path, n_train=4, n_eval=4)
    assert len(list((tmp_path / "images" / "train").glob("*.png"))) == 4  # no stale images of the old build


def test_split_by_image_nothing_leaks(default_corpus):
    train = {i for r in _read(default_corpus.pairs) + _read(default_corpus.sft) + _read(default_corpus.rl)
             for i in r["images"]}
    held_out = {i for f in (default_corpus.eval_mcq, default_corpus.eval_yesno, default_corpus.retrieval)
                for r in _read(f) for i in r["images"]}
    assert train and held_out and not train & held_out
    train_bytes = {hashlib.sha256((default_corpus.root / i).read_bytes()).digest() for i in train}
    assert not train_bytes & {hashlib.sha256((default_corpus.root / i).read_bytes()).digest() for i in held_out}


def test_classes_and_answers_are_balanced(default_corpus):
    labels = Counter(r["label"] for r in _read(default_corpus.pairs))
    assert set(labels.values()) == {100}
    mcq = _read(default_corpus.eval_mcq)
    for family, (question, _, _) in MCQ_FAMILIES.items():
        letters = Counter(r["answer"] for r in mcq if r["question"] == question)
        assert sorted(letters) == ["A", "B", "C", "D"] and max(letters.values()) - min(letters.values()) <= 2, family
    assert Counter(r["answer"] for r in _read(default_corpus.eval_yesno)) == {"yes": 80, "no": 80}
    assert Counter(r["subset"] for r in mcq) == {"he": 56, "ihc": 52, "cytology": 52}


def test_text_only_baseline_stays_at_chance(default_corpus):
    train, held_out = _read(default_corpus.rl) + _read(default_corpus.sft), _read(default_corpus.eval_mcq)
    assert text_only_baseline(train, held_out) == pytest.approx(0.25, abs=0.05)
    # A learned text model (bag of words over question + options) does no better than chance either.
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    mcq_train = [r for r in train if r["kind"] == "mcq"]
    text = lambda rs: [r["question"] + " " + " ".join(r["options"]) for r in rs]  # noqa: E731
    vectorizer = CountVectorizer().fit(text(mcq_train))
    model = LogisticRegression(max_iter=500).fit(vectorizer.transform(text(mcq_train)), [r["answer"] for r in mcq_train])
    accuracy = model.score(vectorizer.transform(text(held_out)), [r["answer"] for r in held_out])
    assert accuracy < 0.35


def test_the_answer_is_visible_in_the_pixels(default_corpus):
    # Colour statistics alone (no text) identify the class far above chance: the truth is in the image.
    from sklearn.ensemble import RandomForestClassifier

    def features(records):
        out = []
        for r in records:
            a = np.asarray(Image.open(default_corpus.root / r["images"][0]).convert("RGB"), float) / 255
            out.append(np.concatenate([a.mean((0, 1)), a.std((0, 1)),
                                       np.percentile(a.reshape(-1, 3), [10, 50, 90], axis=0).ravel()]))
        return np.array(out)

    train, held_out = _read(default_corpus.pairs), _read(default_corpus.retrieval)
    model = RandomForestClassifier(100, random_state=0).fit(features(train), [r["label"] for r in train])
    assert model.score(features(held_out), [r["label"] for r in held_out]) > 0.8


def test_sft_reasoning_cites_findings_and_solution_matches_answer(default_corpus):
    for r in _read(default_corpus.sft)[:50]:
        assert "nuclei" in r["reasoning"] and r["solution"] == f"<answer> {r['answer']} </answer>"
        if r["kind"] == "mcq":
            assert r["reasoning"].endswith(f"{r['options']['ABCD'.index(r['answer'])]}.")


def test_cli_builds_and_reports_the_blind_baseline(tmp_path, capsys):
    assert main([str(tmp_path), "--n-train", "8", "--n-eval", "8", "--subsets", "he"]) == 0
    assert "text-only MCQ baseline" in capsys.readouterr().out
    assert {r["subset"] for r in _read(tmp_path / "rl.jsonl")} == {"he"}
    with pytest.raises(SystemExit):
        main(["--help"])


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown subsets \\['xray'\\]"):
        build_demo(tmp_path, subsets=["xray"])
    with pytest.raises(ValueError, match="need n_train, n_eval >= 4"):
        build_demo(tmp_path, n_train=2)


def test_demo_corpus_is_keyed_by_its_arguments_and_found_from_its_files(tmp_path):
    from corpora.demo import DEMO_IMAGE_SIZE, DEMO_N_EVAL, DEMO_N_TRAIN, demo_corpus, demo_corpus_of

    small = demo_corpus(tmp_path, n_train=8, n_eval=4, image_size=28)
    other = demo_corpus(tmp_path, seed=1, n_train=8, n_eval=4, image_size=28)
    assert small.root == tmp_path / "demo_corpora" / "n8-e4-s28-seed0"
    assert other.root == tmp_path / "demo_corpora" / "n8-e4-s28-seed1"
    assert json.loads(small.meta.read_text())["sizes"] == {"n_train": 8, "n_eval": 4, "image_size": 28}
    stamp = small.meta.stat().st_mtime_ns
    assert demo_corpus(tmp_path, n_train=8, n_eval=4, image_size=28).meta.stat().st_mtime_ns == stamp  # reused
    assert sorted(p.name for p in (tmp_path / "demo_corpora").iterdir()) == ["n8-e4-s28-seed0", "n8-e4-s28-seed1"]
    # every file of the corpus leads back to it; a file elsewhere does not
    assert demo_corpus_of(small.eval_mcq).root == small.root and demo_corpus_of(small.rl).root == small.root
    assert demo_corpus_of(tmp_path / "elsewhere.jsonl") is None
    # one set of defaults: build_demo's, the CLI's and demo_corpus's are the demo recipe's constants
    import inspect

    for fn in (build_demo, demo_corpus):
        params = inspect.signature(fn).parameters
        assert (params["n_train"].default, params["n_eval"].default, params["image_size"].default) == \
            (DEMO_N_TRAIN, DEMO_N_EVAL, DEMO_IMAGE_SIZE)
