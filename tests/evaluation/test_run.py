"""evaluate() / the CLI end to end on a tiny model: where results go, which template is used, what is written."""
import json
import shutil

import pytest

from evaluation.run import evaluate, main
from stages.registry import Registry, home


@pytest.fixture
def yesno_data(tmp_path, make_images):
    imgs = make_images(tmp_path / "data", [(56, 56), (84, 64), (64, 84), (56, 70)])
    lines = [{"image": p, "question": q, "answer": a, "subset": s} for p, q, a, s in zip(
        imgs, ["Is there necrosis?", "Are glands present?", "Is this benign?", "Is mitosis seen?"],
        ["yes", "no", "no", "yes"], ["he", "he", "ihc", "ihc"])]
    path = tmp_path / "data" / "closed.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    return path


def registry_checkpoint(model_dir, template):
    with Registry().writer("rl", "r1", 3, parent=str(model_dir)) as w:
        shutil.copytree(model_dir, w.path, dirs_exist_ok=True)
        w.extra.update(template=template)
    return w.path


def test_registry_checkpoint_uses_its_template_and_writes_under_reports(tiny_model_dir, yesno_data):
    ckpt = registry_checkpoint(tiny_model_dir(), "nothink")
    before = sorted(p.name for p in ckpt.rglob("*"))
    m = evaluate("rl:latest", "pathvqa", yesno_data, batch_size=3, max_new_tokens=8, progress=False)
    assert m["template"] == "nothink"
    assert m["checkpoint"]["stage"] == "rl" and m["checkpoint"]["step"] == 3
    out = home() / "reports" / "rl" / "r1" / "step-00000003" / "pathvqa"  # keyed by checkpoint and suite
    assert m["out_dir"] == str(out)
    assert sorted(p.name for p in ckpt.rglob("*")) == before  # the checkpoint folder is never written into
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "metrics.json", "predictions.jsonl",
                                                     "summary.md"]
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in rows] == ["yes", "no", "no", "yes"]
    assert all(1 <= r["n_tokens"] <= 8 and isinstance(r["prediction"], str) for r in rows)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["overall"]["n"] == 4
    assert saved["overall"]["correct"] == sum(r["correct"] for r in rows)
    assert saved["overall"]["mean_tokens"] == pytest.approx(sum(r["n_tokens"] for r in rows) / 4)
    assert sorted(saved["by_subset"]) == ["he", "ihc"] and saved["by_kind"]["yesno"]["n"] == 4
    assert "| overall | 4 |" in (out / "summary.md").read_text()
    # an explicit template still wins over the manifest's
    assert evaluate("rl:latest", "pathvqa", yesno_data, limit=1, template="cot", max_new_tokens=4,
                    progress=False)["template"] == "cot"


def test_foreign_folder_goes_to_reports_with_default_template(tiny_model_dir, yesno_data):
    folder = tiny_model_dir()
    m = evaluate(folder, "pathvqa", yesno_data, limit=2, max_new_tokens=4, progress=False)
    assert m["template"] == "cot"
    assert m["out_dir"] == str(home() / "reports" / folder.name / "pathvqa")
    assert not (folder / "eval").exists()  # never writes into a model folder that is not ours


def test_cli(tiny_model_dir, yesno_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--suite" in capsys.readouterr().out
    assert main(["--model", str(tiny_model_dir()), "--suite", "mmlu"]) == 2
    assert "unknown suite 'mmlu'; known suites: pathmmu, omnimed" in capsys.readouterr().err
    assert main(["--model", "sft:nope", "--suite", "pathvqa", "--data", str(yesno_data)]) == 2
    assert "error:" in capsys.readouterr().err
    out = tmp_path / "cli-out"
    rc = main(["--model", str(tiny_model_dir()), "--suite", "pathvqa", "--data", str(yesno_data), "--limit", "2",
               "--max-new-tokens", "4", "--out", str(out), "--no-progress"])
    assert rc == 0 and json.loads((out / "metrics.json").read_text())["overall"]["n"] == 2
