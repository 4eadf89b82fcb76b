"""The evaluate CLI (JSON for the evaluation suite) and the corpus alignment check, on the trained tiny model."""
import json
import random

import numpy as np
import pytest

from pathoclip import align, evaluate


def test_evaluate_cli_reports_every_metric_as_json(trained, small_demo, tmp_path, capsys):
    _, final, _ = trained
    out = tmp_path / "report.json"
    code = evaluate.main(["--model", str(final), "--zeroshot", str(small_demo.zeroshot),
                          "--prompts", str(small_demo.zeroshot_prompts), "--fewshot", str(small_demo.zeroshot),
                          "--shots", "2", "8", "--seeds", "0", "1", "--retrieval", str(small_demo.retrieval),
                          "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["zeroshot"]["accuracy"] > report["zeroshot"]["chance"] + 0.15
    assert report["fewshot"]["8-shot"]["mean"] > 0.4 and len(report["fewshot"]["8-shot"]["per_seed"]) == 2
    for direction in ("image_to_text", "text_to_image"):
        recalls = report["retrieval"][direction]
        assert list(recalls) == ["R@1", "R@5", "R@10", "R@20"]
        assert recalls["R@1"] <= recalls["R@5"] <= recalls["R@10"] <= recalls["R@20"]
        # 64 held-out pairs: a random ranking puts the right one in the top 20 about 31% of the time
        assert recalls["R@20"] > 0.4


def test_evaluate_cli_errors_are_clear(tmp_path, capsys):
    assert evaluate.main(["--model", str(tmp_path / "nope"), "--retrieval", "x.jsonl"]) == 2
    assert "no checkpoint or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--model", "pathoclip:latest"])
    assert "nothing to measure" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shuffled_corpus(small_demo):
    """The held-out pairs with every other caption swapped for one of a DIFFERENT class (known misaligned)."""
    records = [json.loads(line) for line in small_demo.retrieval.read_text().splitlines()]
    rng = random.Random(0)
    for i, record in enumerate(records):
        record["true"] = i % 2 == 0
        if not record["true"]:
            others = [r["caption"] for r in records if r["label"] != record["label"]]
            record["caption"] = rng.choice(others)
    path = small_demo.root / "shuffled.jsonl"  # inside the demo root, so relative image paths resolve
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, records


def test_alignment_ranks_shuffled_captions_below_true_ones(trained, shuffled_corpus):
    _, final, _ = trained
    path, records = shuffled_corpus
    report = align.check(path, final, worst=16)
    truth = {r["id"]: r["true"] for r in records}
    scores = {w["id"]: w["score"] for w in align.check(path, final, worst=len(records))["worst"]}
    true_scores = [s for i, s in scores.items() if truth[i]]
    false_scores = [s for i, s in scores.items() if not truth[i]]
    # probability that a true pair outscores a shuffled one (ROC AUC): 0.5 would be no signal
    auc = np.mean([t > f for t in true_scores for f in false_scores])
    assert auc > 0.75
    assert sum(not truth[w["id"]] for w in report["worst"]) >= 12  # the flagged worst are mostly shuffled
    q = report["quantiles"]
    assert q["0"] <= q["0.25"] <= q["0.5"] <= q["0.75"] <= q["1"]


def test_alignment_writes_a_filtered_corpus_in_the_same_format(trained, shuffled_corpus, small_demo, capsys):
    from corpora.readers import load_pairs

    _, final, _ = trained
    path, records = shuffled_corpus
    out = small_demo.root / "shuffled.aligned.jsonl"
    assert align.main([str(path), "--model", str(final), "--drop-fraction", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept 32, dropped 32" in printed and "quantiles:" in printed
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(kept) == 32 and set(kept[0]) == set(records[0])  # records copied as they were
    assert sum(r["true"] for r in kept) >= 24
    assert len(load_pairs(out)) == 32  # still a valid corpus
    # the old name still works and says what it does; --out alone drops the lowest 5 % (the README's command)
    old_name = small_demo.root / "old.aligned.jsonl"
    assert align.main([str(path), "--model", str(final), "--keep-quantile", "0.5", "--out", str(old_name)]) == 0
    assert old_name.read_text() == out.read_text()
    assert "--keep-quantile is deprecated (it is the fraction DROPPED); use --drop-fraction" in capsys.readouterr().err
    default = small_demo.root / "default.aligned.jsonl"
    assert align.main([str(path), "--model", str(final), "--out", str(default)]) == 0
    assert 58 <= len(default.read_text().splitlines()) <= 63  # 64 pairs, the lowest ~5 % dropped


def test_alignment_filter_as_csv_and_refuses_outside_the_root(trained, small_demo, tmp_path, capsys):
    _, final, _ = trained
    out = small_demo.root / "pairs.kept.csv"
    assert align.main([str(small_demo.pairs_csv), "--model", str(final), "--min-score", "-1", "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "image_path,caption,label"
    assert len(out.read_text().splitlines()) == 193
    assert align.main([str(small_demo.pairs_csv), "--model", str(final), "--min-score", "0",
                       "--out", str(tmp_path / "x.csv")]) == 2
    assert "outside the corpus's dataset root" in capsys.readouterr().err
