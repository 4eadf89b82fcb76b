"""Generalisation matrix on real tiny models, and the report's PNGs + markdown from a registry history."""
import json
import shutil

import pytest
from PIL import Image

from evaluation.matrix import build_matrix, main as matrix_main, parse_model_args, write_matrix
from evaluation.metrics import summarize
from evaluation.report import main as report_main, render_report
from evaluation.run import write_results
from stages.registry import Registry, home


def assert_readable_png(path, min_bytes=8_000):
    assert path.is_file(), path
    assert path.stat().st_size > min_bytes  # axes, labels and legends, not an empty canvas
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 400 and im.height >= 300
        assert len(set(im.convert("L").getdata())) > 20  # drawn on, not blank


@pytest.fixture
def medr1_splits(tmp_path, make_images):
    imgs = make_images(tmp_path / "Images", [(56, 56), (64, 84), (84, 64), (70, 56)])
    folder = tmp_path / "splits"
    folder.mkdir()
    for name, chunk in (("CT", imgs[:2]), ("MRI", imgs[2:])):
        recs = [{"image": p, "problem": "Which modality is this? A)CT, B)MRI, C)X-ray", "solution": f"<answer> {a} </answer>"}
                for p, a in zip(chunk, "AB")]
        (folder / f"{name}_test.json").write_text(json.dumps(recs))
    return folder


def test_matrix_evaluates_every_model_on_every_subset(tiny_model_dir, medr1_splits, tmp_path):
    from stages.model import build_tiny

    other = build_tiny("qwen2_5_vl", tmp_path / "tiny-seed1", seed=1)
    out = tmp_path / "matrix"
    rc = matrix_main(["--suite", "omnimed", "--data", str(medr1_splits), "--model", f"CT={tiny_model_dir()}",
                      "--model", f"MRI={other}", "--max-new-tokens", "6", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "matrix.json").read_text())
    assert m["rows"] == ["CT", "MRI"] and m["subsets"] == ["CT", "MRI"]
    assert m["n"] == [[2, 2], [2, 2]]
    assert all(0.0 <= a <= 1.0 for row in m["accuracy"] for a in row)
    # every model's own evaluation was kept (foreign folders -> reports/), under what it measured (6 tokens)
    assert [p.parent.name for p in (home() / "reports" / other.name).glob("*/metrics.json")] == [
        "omnimed@tokens6"]
    assert "**" in (out / "matrix.md").read_text()  # in-domain cells are bold
    assert_readable_png(out / "matrix.png")


def test_parse_model_args():
    assert parse_model_args(["CT=rl:ct", "rl:mri"]) == {"CT": "rl:ct", "rl:mri": "rl:mri"}


def fake_metrics(model_path, suite, accuracy, n=40, checkpoint=None):
    k = round(accuracy * n)
    rows = [{"correct": i < k, "score": float(i < k), "format_ok": True, "n_tokens": 30, "subset": "he",
             "kind": "mcq"} for i in range(n)]
    return {"suite": suite, "model": str(model_path), "model_path": str(model_path), "template": "cot",
            "max_new_tokens": 64, "checkpoint": checkpoint or {}, "evaluated": "2026-01-01T00:00:00",
            **summarize(rows)}


def write_history(tmp_path):
    """base folder -> sft/s1/step-2 -> rl/r1/step-5, each evaluated; RL TensorBoard logs; one matrix."""
    from torch.utils.tensorboard import SummaryWriter

    base = tmp_path / "base-model"
    base.mkdir()
    reg = Registry()
    with reg.writer("sft", "s1", 2, parent=str(base)) as w:
        (w.path / "weights.txt").write_text("sft")
    sft = w.path
    with reg.writer("rl", "r1", 5, parent="sft:s1") as w:
        (w.path / "weights.txt").write_text("rl")
    rl = w.path
    write_results(home() / "reports" / "base-model" / "demo-mcq", [], fake_metrics(base, "demo-mcq", 0.3))
    for path, stage, step, accs in ((sft, "sft", 2, (0.55, 0.6)), (rl, "rl", 5, (0.7, 0.8))):
        ck = {"stage": stage, "run": path.parent.name, "step": step, "created": f"2026-01-0{step}"}
        for suite, acc in zip(("demo-mcq", "demo-yesno"), accs):
            key = f"{stage}/{path.parent.name}/{path.name}"
            write_results(home() / "reports" / key / suite, [], fake_metrics(path, suite, acc, checkpoint=ck))
    write_results(home() / "reports" / "unrelated" / "demo-mcq", [], fake_metrics(tmp_path / "unrelated", "demo-mcq", 0.9))
    tb = SummaryWriter(str(home() / "logs" / "rl" / "r1" / "runs" / "x"))
    for step in range(1, 21):
        tb.add_scalar("train/reward", 0.2 + 0.03 * step, step)
        tb.add_scalar("train/rewards/accuracy_reward/mean", 0.1 + 0.04 * step, step)
        tb.add_scalar("train/loss", 1.0 / step, step)
    tb.close()
    results = {"he": fake_metrics(rl, "demo-mcq", 0.8), "ihc": fake_metrics(sft, "demo-mcq", 0.5)}
    results["ihc"]["by_subset"] = {"ihc": results["ihc"]["overall"]}
    write_matrix(build_matrix("demo-mcq", results), home() / "reports" / "matrix-demo-mcq")
    return base, sft, rl


def test_report_renders_lineage_rewards_and_matrix(tmp_path):
    write_history(tmp_path)
    md_path = render_report("rl:latest")
    md = md_path.read_text()
    out = md_path.parent
    for png in ("accuracy.png", "rewards.png", "matrix-0-demo-mcq.png"):
        assert f"]({png})" in md
        assert_readable_png(out / png)
    # pipeline order, the base model's evaluation included, the unrelated model's left out
    assert "lineage (oldest first): base-model → sft/s1/step-2 → rl/r1/step-5" in md
    assert md.index("**base-model**") < md.index("**sft/s1/step-2**") < md.index("**rl/r1/step-5**")
    assert "unrelated" not in md
    assert "| demo-yesno | 40 | 80.0 |" in md


def test_report_reward_tags_are_configurable_and_home_mode(tmp_path, capsys):
    write_history(tmp_path)
    out = tmp_path / "all"
    assert report_main(["--home", str(home()), "--out", str(out), "--reward-tags", "train/loss"]) == 0
    md = (out / "report.md").read_text()
    assert "tags: train/loss" in md and "**unrelated**" in md  # home mode shows every evaluation
    assert_readable_png(out / "rewards.png")
    assert report_main(["sft:nope"]) == 2 and "error:" in capsys.readouterr().err


def test_report_without_anything_says_so(tmp_path):
    md = render_report(home=tmp_path / "empty", out=tmp_path / "r").read_text()
    assert "no metrics.json found" in md and "no TensorBoard scalars" in md and "no matrix.json" in md


def test_accuracy_bars_at_zero_and_full_accuracy_on_400_questions(tmp_path):
    # the full demo's base model scores 0/400: its bar must render (it crashed the report once)
    from evaluation.metrics import wilson_interval
    from evaluation.plots import accuracy_bars

    table = {name: {"demo-mcq": {"accuracy": k / 400, "ci95": list(wilson_interval(k, 400))}}
             for name, k in (("base", 0), ("sft", 314), ("rl", 400))}
    out = accuracy_bars(table, tmp_path / "accuracy.png")
    assert Image.open(out).size[0] > 0


def test_report_keeps_other_settings_apart_and_reads_a_copied_home(tmp_path, monkeypatch):

    from evaluation.report import accuracy_table, evaluations

    _, sft, rl = write_history(tmp_path)
    ck = {"stage": "rl", "run": "r1", "step": 5, "created": "2026-01-05"}
    limited = {**fake_metrics(rl, "demo-mcq", 1.0, n=8, checkpoint=ck), "variant": "limit8",
               "evaluated": "2026-02-01T00:00:00"}  # newer than the full run, yet it replaces nothing
    write_results(home() / "reports" / "rl/r1/step-00000005" / "demo-mcq@limit8", [], limited)
    copied = tmp_path / "copied-home"
    shutil.copytree(home(), copied)
    shutil.rmtree(home())  # every absolute model_path in metrics.json now names nothing
    monkeypatch.setenv("PATHOR1_HOME", str(copied))
    chain = list(reversed(Registry(copied).lineage("rl:latest")))
    table = accuracy_table(evaluations(copied, chain))
    assert table["rl/r1/step-5"]["demo-mcq"]["n"] == 40 and table["rl/r1/step-5"]["demo-mcq @limit8"]["n"] == 8
    assert table["rl/r1/step-5"]["demo-mcq"]["accuracy"] == pytest.approx(0.7)
    md = render_report("rl:latest").read_text()
    assert "**sft/s1/step-2**" in md and "Columns named `suite @…` come from other settings" in md
