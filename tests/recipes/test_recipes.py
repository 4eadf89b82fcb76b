"""The recipes end to end at a reduced size: the no-argument demo's files and metrics keys, and the MedVLM-R1 /
Med-R1 recipes on the demo corpus. Sizes are cut through the same key=value overrides a user has."""
import json
from pathlib import Path

import pytest

from stages.config import ConfigError, load_config

TINY = ["demo.n_train=16", "demo.n_eval=8", "eval.decoding.max_new_tokens=12", "eval.batch_size=8"]


def test_patho_r1_demo_writes_report_and_metrics(tmp_path, capsys):
    from recipes.patho_r1 import PathoR1Config, run

    cfg = load_config(PathoR1Config, TINY + ["pretrain.max_steps=2", "sft.max_steps=2", "rl.max_steps=1",
                                             "rl.num_generations=2", "rl.batch_size=2", "rl.max_completion_length=8",
                                             "clip.epochs_b=1"])
    path = run(cfg)
    assert path.name == "metrics.json"
    metrics = json.loads(path.read_text())
    for stage in ("base", "pretrain", "sft", "rl"):
        mcq = metrics[stage]["mcq"]
        assert mcq["n"] == 8 and 0.0 <= mcq["accuracy"] <= 1.0
        lo, hi = mcq["ci95"]
        assert lo <= mcq["accuracy"] <= hi
    # each stage against the one before it, paired on the same 8 questions
    comparisons = metrics["comparisons"]
    assert list(comparisons) == ["pretrain_vs_base", "sft_vs_pretrain", "rl_vs_sft"]
    for name, c in comparisons.items():
        after, before = name.split("_vs_")
        assert c["n"] == 8
        assert c["difference"] == pytest.approx(metrics[after]["mcq"]["accuracy"] - metrics[before]["mcq"]["accuracy"])
        assert c["ci95"][0] <= c["difference"] <= c["ci95"][1] and c["supported"] == (c["ci95"][0] > 0)
    assert metrics["pathoclip"]["chance"] == pytest.approx(0.25)
    assert 0.0 <= metrics["pathoclip"]["zero_shot_accuracy"] <= 1.0
    assert metrics["wall_seconds"] > 0 and metrics["peak_memory_gib"] > 0
    # lineage through the registry: each stage's input is the previous stage's output
    from stages.registry import Registry

    chain = [e.get("stage") for e in Registry().lineage(metrics["checkpoints"]["rl"])]
    assert chain[:3] == ["rl", "sft", "pretrain"]
    report = path.parent / "report.md"
    assert report.exists() and "accuracy.png" in report.read_text()
    assert (path.parent / "accuracy.png").stat().st_size > 5000
    # the run browser from the real predictions: every held-out question with every stage's answer
    data_js = (path.parent / "browse" / "data.js").read_text()
    browser = json.loads(data_js.removeprefix("window.PATHOR1_BROWSE = ").rstrip().rstrip(";"))
    assert [s["key"] for s in browser["stages"]] == ["base", "pretrain", "sft", "rl"]
    assert len(browser["questions"]) == 8
    assert all(set(q["answers"]) == {"base", "pretrain", "sft", "rl"} for q in browser["questions"])
    assert [(c["before"], c["after"]) for c in browser["comparisons"]] == [("base", "pretrain"), ("pretrain", "sft"),
                                                                          ("sft", "rl")]
    # The README's next steps, `make eval` then `make report` (their default arguments): they score the recipe's own
    # held-out questions (same ids, same image bytes), not a demo corpus of other sizes.
    from evaluation import report as report_cli
    from evaluation import run as eval_cli

    assert eval_cli.main(["--model", "rl:latest", "--suite", "demo-mcq", "--max-new-tokens", "8"]) == 0
    made = json.loads(Path(metrics["checkpoints"]["rl"], "manifest.json").read_text())
    key = f"rl/{made['run']}/step-{made['step']:08d}"
    from stages.registry import home

    # keyed by what it measured: an 8-token budget is not the full default evaluation
    evaluated = json.loads((home() / "reports" / key / "demo-mcq@tokens8" / "manifest.json").read_text())
    recipe = json.loads((path.parent / "eval" / "rl" / "manifest.json").read_text())
    assert evaluated["n"] == 8 and evaluated["questions"] == recipe["questions"]
    assert not (home() / "demo_corpora" / "n400-e400-s112-seed0").exists()  # no corpus of the default sizes built
    assert report_cli.main(["rl:latest"]) == 0
    written = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("report written to "))
    assert "demo-mcq" in written.read_text()


def test_patho_r1_refuses_an_unknown_stage():
    from recipes.patho_r1 import PathoR1Config

    with pytest.raises(ConfigError, match="unknown stages"):
        load_config(PathoR1Config, ["stages=[pretrain,dpo]"])


@pytest.mark.slow
def test_medvlm_r1_and_med_r1_run_on_the_demo(tmp_path):
    from recipes import med_r1, medvlm_r1

    small_rl = ["rl.max_steps=1", "rl.num_generations=2", "rl.batch_size=2", "rl.max_completion_length=8"]
    cfg = load_config(medvlm_r1.MedVLMR1Config, TINY + small_rl + ["n_samples=8"])
    metrics = json.loads(medvlm_r1.run(cfg).read_text())
    assert metrics["rl"]["mcq"]["n"] == 8
    assert sum(1 for _ in open(metrics["train_file"])) == 8
    cfg = load_config(med_r1.MedR1Config, TINY + small_rl + ["subsets=[he,ihc]"])
    metrics = json.loads(med_r1.run(cfg).read_text())
    matrix = metrics["matrix"]
    assert set(matrix["rows"]) == {"he", "ihc"}
    assert Path(matrix["out_dir"], "matrix.png").stat().st_size > 5000
