"""The benchmark table over two checkpoints x two suites (tiny models, fixture data), through its CLI."""
import json
import shutil
from pathlib import Path

import pytest

from evaluation.metrics import paired_comparison
from evaluation.table import main
from stages.registry import home

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evaluation"


def rows_of(out_dir):
    return {r["id"]: r for r in map(json.loads, (Path(out_dir) / "predictions.jsonl").read_text().splitlines())}


def test_table_two_checkpoints_two_suites(tiny_model_dir, tmp_path, capsys):
    from stages.model import build_tiny

    first = tiny_model_dir()
    second = build_tiny("qwen2_5_vl", tmp_path / "tiny-seed1", seed=1)
    tsv = shutil.copy(FIXTURES / "vlmeval" / "PathVQA_mini.tsv", tmp_path / "PathVQA_mini.tsv")
    root = tmp_path / "data"
    shutil.copytree(FIXTURES / "slake", root / "SLAKE")
    from PIL import Image

    for i, rel in enumerate(["xmlab102/source.jpg", "xmlab7/source.jpg"]):
        (root / "SLAKE" / "imgs" / rel).parent.mkdir(parents=True)
        Image.new("RGB", (56, 56), (40 * i, 90, 160)).save(root / "SLAKE" / "imgs" / rel, format="PNG")
    out = tmp_path / "table"
    rc = main(["--model", f"base={first}", "--model", f"tuned={second}", "--suites", "slake,vlmeval",
               "--data-root", str(root), "--data", f"vlmeval={tsv}", "--max-new-tokens", "6", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    table = json.loads((out / "table.json").read_text())
    assert table["rows"] == ["base", "tuned"] and table["suites"] == ["slake", "vlmeval"]
    cells = table["cells"]
    assert [[cells[m][s]["n"] for s in table["suites"]] for m in table["rows"]] == [[3, 3], [3, 3]]
    for m in table["rows"]:
        for s in table["suites"]:
            rows = rows_of(cells[m][s]["out_dir"])
            assert cells[m][s]["accuracy"] == sum(r["correct"] for r in rows.values()) / 3
            lo, hi = cells[m][s]["ci95"]
            assert lo <= cells[m][s]["accuracy"] <= hi
    # each model's cells are ordinary evaluations, keyed by checkpoint, suite and what they measured: 6 new tokens
    # is not the default decoding, so the folders carry that variant and never replace a default evaluation
    assert cells["tuned"]["vlmeval"]["out_dir"] == str(home() / "reports" / "tiny-seed1" / "vlmeval-PathVQA_mini@tokens6")
    assert cells["tuned"]["slake"]["out_dir"] == str(home() / "reports" / "tiny-seed1" / "slake@tokens6")
    assert table["mean_accuracy"]["base"] == pytest.approx(
        (cells["base"]["slake"]["accuracy"] + cells["base"]["vlmeval"]["accuracy"]) / 2)
    diff = table["differences"]["tuned - base"]
    for s in table["suites"]:
        before = {i: r["correct"] for i, r in rows_of(cells["base"][s]["out_dir"]).items()}
        after = {i: r["correct"] for i, r in rows_of(cells["tuned"][s]["out_dir"]).items()}
        assert diff[s] == paired_comparison(before, after)
    md = (out / "table.md").read_text()
    assert "| model | slake | vlmeval | mean |" in md and "| tuned - base |" in md
    assert md in capsys.readouterr().out
    assert main(["--model", str(first), "--suites", "slake", "--data", "vlmeval=x.tsv"]) == 2
    assert "--data names suites not in --suites: vlmeval" in capsys.readouterr().err


def test_table_reads_every_suite_before_the_first_model(tiny_model_dir, tmp_path, capsys):
    """The second suite's release is broken: exit 2 naming it, and no evaluation of the first suite ran."""
    from tests.evaluation.release_fixtures import pathmmu, slake

    root = tmp_path / "data"
    slake(root, FIXTURES)
    (pathmmu(root) / "data.json").write_text("{")
    rc = main(["--model", str(tiny_model_dir()), "--suites", "slake,pathmmu", "--data-root", str(root),
               "--data", f"pathmmu={root / 'PathMMU'}", "--no-progress"])
    assert rc == 2 and f"{root / 'PathMMU' / 'data.json'}:1: invalid JSON" in capsys.readouterr().err
    assert not (home() / "reports").exists()
