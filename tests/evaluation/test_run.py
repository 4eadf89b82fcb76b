"""evaluate() / the CLI end to end on a tiny model: where results go, which template is used, what is written."""
import json
import shutil
from pathlib import Path

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
    # keyed by checkpoint and what was measured: the suite, and the 8-token budget (not the default 256)
    out = home() / "reports" / "rl" / "r1" / "step-00000003" / "pathvqa@tokens8"
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
    assert m["out_dir"] == str(home() / "reports" / folder.name / "pathvqa@limit2+tokens4")
    assert not (folder / "eval").exists()  # never writes into a model folder that is not ours


def test_manifest_paths_stored_under_the_home_mark_read_back_absolute(tmp_path):
    from evaluation.run import resolve_model

    folder = home() / "rl" / "r9" / "step-00000001"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": "rl", "run": "r9", "step": 1,
                                                      "config": {"data": "${PATHOR1_HOME}/demo_corpora/c/rl.jsonl"}}))
    _, manifest = resolve_model(folder)
    assert manifest["config"]["data"] == str(home() / "demo_corpora" / "c" / "rl.jsonl")  # what trained_demo_corpus reads


def test_cli(tiny_model_dir, yesno_data, tmp_path, capsys):
    assert main(["--help"]) == 0
    shown = capsys.readouterr().out
    for field in ("suite:", "decoding.max_new_tokens: int = 256", "judge.spec", "profile: str = 'pathor1'", "--suite",
                  "--compare-templates", "medxpertqa"):  # every EvalConfig field, the flags, the suites
        assert field in shown, field
    assert main(["--model", str(tiny_model_dir()), "--suite", "mmlu"]) == 2
    assert "unknown suite 'mmlu'; known suites: pathmmu, omnimed" in capsys.readouterr().err
    assert main(["--model", "sft:nope", "--suite", "pathvqa", "--data", str(yesno_data)]) == 2
    assert "error:" in capsys.readouterr().err
    out = tmp_path / "cli-out"
    rc = main(["--model", str(tiny_model_dir()), "--suite", "pathvqa", "--data", str(yesno_data), "--limit", "2",
               "--max-new-tokens", "4", "--out", str(out), "--no-progress"])
    assert rc == 0 and json.loads((out / "metrics.json").read_text())["overall"]["n"] == 2


def read_rows(out_dir):
    return [json.loads(x) for x in (out_dir / "predictions.jsonl").read_text().splitlines()]


def test_every_score_carries_its_settings(tiny_model_dir, yesno_data):
    m = evaluate(tiny_model_dir(), "pathvqa", yesno_data, batch_size=3, max_new_tokens=5, progress=False)
    s = json.loads((home() / "reports" / tiny_model_dir().name / "pathvqa@tokens5" / "metrics.json").read_text())[
        "settings"]
    from stages.registry import fingerprint_files

    assert s["data_sha256"] == fingerprint_files(yesno_data) and s["n"] == 4
    assert s["template"] == "cot" and s["dtype"] == "float32" and s["batch_size"] == 3 and s["backend"] == "hf"
    assert s["decoding"] == {"greedy": {"mode": "greedy", "max_new_tokens": 5}, "sampling": None}
    assert s["judge"] is None and s["world_size"] == 1 and s["manifest"] is None
    assert s["split"] == "default" and s["skipped"] == {}  # the split papers report; nothing left out
    assert {"python", "torch", "transformers"} <= set(s["libraries"]) and s["libraries"]["transformers"]
    # a different question set has a different ids hash
    assert evaluate(tiny_model_dir(), "pathvqa", yesno_data, limit=2, max_new_tokens=5, progress=False,
                    out=yesno_data.parent / "o")["settings"]["ids_sha256"] != s["ids_sha256"]
    assert m["settings"] == s


def test_manifest_fixes_the_questions_and_their_images(tiny_model_dir, yesno_data, tmp_path, capsys):
    m = evaluate(tiny_model_dir(), "pathvqa", yesno_data, max_new_tokens=4, progress=False)
    folder = tmp_path / "pathor1_home" / "reports" / tiny_model_dir().name / "pathvqa@tokens4"
    written = json.loads((folder / "manifest.json").read_text())
    assert [q["id"] for q in written["questions"]] == [r["id"] for r in read_rows(folder)]
    assert all(len(q["images"]) == 1 and len(q["images"][0]) == 64 for q in written["questions"])
    lab_b = tmp_path / "subset.json"  # another lab keeps two questions, in its own order
    lab_b.write_text(json.dumps({**written, "questions": [written["questions"][3], written["questions"][1]]}))
    sub = evaluate(tiny_model_dir(), "pathvqa", yesno_data, max_new_tokens=4, progress=False, manifest=lab_b,
                   out=tmp_path / "sub")
    assert [r["id"] for r in read_rows(tmp_path / "sub")] == [written["questions"][3]["id"],
                                                               written["questions"][1]["id"]]
    assert sub["settings"]["manifest"] == str(lab_b) and m["overall"]["n"] == 4 and sub["overall"]["n"] == 2
    # the same ids with a different image are refused
    from PIL import Image

    image = json.loads((yesno_data).read_text().splitlines()[1])["image"]
    Image.new("RGB", (84, 64), (1, 2, 3)).save(image)
    assert main(["--model", str(tiny_model_dir()), "--suite", "pathvqa", "--data", str(yesno_data),
                 "--manifest", str(lab_b), "--max-new-tokens", "4", "--no-progress"]) == 2
    assert f"{lab_b}: questions[1]: the images of id " in capsys.readouterr().err


def test_sampling_adds_pass_at_k_and_majority(tiny_model_dir, yesno_data):
    m = evaluate(tiny_model_dir(), "pathvqa", yesno_data, max_new_tokens=6, progress=False, samples=3,
                 temperature=1.0, top_p=0.9, seed=3)
    rows = read_rows(Path(m["out_dir"]))
    assert all(len(r["samples"]) == 3 for r in rows)
    assert m["settings"]["decoding"]["sampling"] == {"mode": "sample", "samples": 3, "temperature": 1.0,
                                                     "top_p": 0.9, "top_k": 0, "seed": 3, "max_new_tokens": 6}
    right = [sum(s["correct"] for s in r["samples"]) for r in rows]
    assert m["sampling"]["pass@1"] == pytest.approx(sum(right) / 12)
    assert m["sampling"]["pass@3"] == pytest.approx(sum(c > 0 for c in right) / 4)
    assert m["sampling"]["majority@3"] == sum(r["majority_correct"] for r in rows) / 4
    assert len({s["prediction"] for r in rows for s in r["samples"]}) > 4  # really sampled, not greedy copies
    assert "pass@3" in (Path(m["out_dir"]) / "summary.md").read_text()


def test_compare_templates_pairs_the_same_questions(tiny_model_dir, yesno_data, capsys):
    out = yesno_data.parent / "cmp"
    assert main(["--model", str(tiny_model_dir()), "--suite", "pathvqa", "--data", str(yesno_data),
                 "--compare-templates", "cot,nothink", "--max-new-tokens", "6", "--out", str(out),
                 "--no-progress"]) == 0
    folder = out / "compare-cot-vs-nothink"
    report = json.loads((folder / "comparison.json").read_text())
    cot, nothink = ({r["id"]: r["correct"] for r in read_rows(folder / t)} for t in ("cot", "nothink"))
    from evaluation.metrics import paired_comparison

    assert report["comparison"] == paired_comparison(cot, nothink) and report["comparison"]["n"] == 4
    assert report["settings"]["cot"]["template"] == "cot" and report["settings"]["nothink"]["template"] == "nothink"
    assert report["settings"]["cot"]["ids_sha256"] == report["settings"]["nothink"]["ids_sha256"]
    assert "McNemar p" in capsys.readouterr().out
    assert main(["--model", str(tiny_model_dir()), "--suite", "pathvqa", "--data", str(yesno_data),
                 "--compare-templates", "cot"]) == 2


def test_a_limited_or_other_settings_run_never_replaces_the_full_one(tiny_model_dir, yesno_data):
    folder = tiny_model_dir()
    reports = home() / "reports" / folder.name
    full = evaluate(folder, "pathvqa", yesno_data, max_new_tokens=256, progress=False)
    assert full["out_dir"] == str(reports / "pathvqa") and full["variant"] == ""
    before = (reports / "pathvqa" / "metrics.json").read_text()
    limited = evaluate(folder, "pathvqa", yesno_data, limit=2, max_new_tokens=256, progress=False)
    nothink = evaluate(folder, "pathvqa", yesno_data, limit=2, template="nothink", max_new_tokens=4, progress=False)
    assert limited["out_dir"] == str(reports / "pathvqa@limit2") and limited["overall"]["n"] == 2
    assert nothink["variant"] == "limit2+template-nothink+tokens4"
    assert (reports / "pathvqa" / "metrics.json").read_text() == before  # the full result is untouched
    assert sorted(p.name for p in reports.iterdir()) == ["pathvqa", "pathvqa@limit2",
                                                         "pathvqa@limit2+template-nothink+tokens4"]
