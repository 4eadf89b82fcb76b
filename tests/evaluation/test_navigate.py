"""Evaluation with the slide viewer (evaluation.navigate, ``evaluation.run --tools slide_view``) on a real
pyramidal TIFF (tifffile, OpenSlide's generic-tiff layout) and a tiny Qwen3-VL. Where the answer must depend on a
view, what the model writes is scripted (tests/slide_tools.py); the loop, the viewer, the chat template with its
tool section and the vision tower run for real.
"""
import json

import pytest

from evaluation.navigate import ViewerSettings, navigate_many, tool_limits, views_summary
from tests.slide_tools import AFTER, CALL, DIRECT, scripted, slide_qa_file


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from stages.model import build_tiny

    return build_tiny("qwen3_vl", tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def qa(tmp_path):
    return slide_qa_file(tmp_path, n=3)


def questions(path):
    from evaluation.navigate import tool_records

    return tool_records("qa", path, ViewerSettings())


@pytest.mark.slow
def test_questions_that_zoom_are_answered_after_seeing_the_view(tiny_folder, qa):
    from evaluation.generate import load_model

    model, processor = load_model(tiny_folder)
    scripted(model, processor.tokenizer)  # in each batch, even rows zoom then answer A; odd rows answer B at once
    got = navigate_many(model, processor, questions(qa), ViewerSettings(budget=2, view_size=56, overview_size=112),
                        max_new_tokens=200, batch_size=2, progress=False)
    completions = [c[0] for c in got]
    assert [c.text for c in completions] == [AFTER, DIRECT, AFTER]  # batches [s0, s1], [s2]
    views = [[(v["x"], v["y"], v["mpp"]) for v in c.navigation["views"]] for c in completions]
    assert views == [[(300, 200, 1.0)], [], [(300, 200, 1.0)]]
    assert [c.navigation["turns"] for c in completions] == [2, 1, 2]
    assert [c.navigation["question"] for c in completions] == ["s0", "s1", "s2"]
    assert completions[0].n_tokens > completions[1].n_tokens  # the tool-call turn counts too
    rows = [{"navigation": c.navigation} for c in completions]
    assert views_summary(rows) == {"views_per_question": 2 / 3, "questions_with_views": 2 / 3, "views_total": 2}


@pytest.mark.slow
def test_budget_zero_is_the_thumbnail_only_baseline_without_tools_in_the_prompt(tiny_folder, qa):
    from evaluation.generate import load_model

    model, processor = load_model(tiny_folder)
    prompts = []
    plain = model.generate

    def recording(*args, **kwargs):
        prompts.append(processor.tokenizer.decode(kwargs["input_ids"][0]))
        return plain(*args, **kwargs)

    model.generate = recording
    scripted(model, processor.tokenizer)  # even rows write a tool call: with no tools it is just text, no view
    got = navigate_many(model, processor, questions(qa)[:1], ViewerSettings(budget=0), max_new_tokens=64,
                        progress=False)
    assert len(prompts) == 1 and "zoom" not in prompts[0] and "<|image_pad|>" in prompts[0]
    assert got[0][0].navigation["views"] == [] and got[0][0].navigation["turns"] == 1
    assert got[0][0].text == CALL  # a tool call written without tools on offer is just the answer's text


@pytest.mark.slow
def test_evaluation_run_with_tools_writes_navigation_and_views_per_question(tiny_folder, qa, tmp_path, capsys):
    from evaluation.run import main

    out = tmp_path / "report"
    assert main(["--model", str(tiny_folder), "--suite", "qa", "--data", str(qa), "--tools", "slide_view",
                 "--view-budget", "2", "--max-new-tokens", "24", "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert metrics["overall"]["n"] == 3 and {"views_per_question", "questions_with_views"} <= set(metrics)
    assert metrics["views_per_question"] == sum(r["views"] for r in rows) / 3
    assert metrics["settings"]["tools"]["env"] == "slide_view" and metrics["settings"]["tools"]["budget"] == 2
    assert [r["navigation"]["question"] for r in rows] == ["s0", "s1", "s2"]
    assert all(r["navigation"]["slide"].endswith("case.tiff") and r["images"] == [] for r in rows)


def test_tool_options_are_checked_before_any_model_loads(qa, tmp_path, capsys):
    from evaluation.run import main

    tiny_folder = tmp_path / "never_loaded"  # every refusal below comes before the model would load
    tiny_folder.mkdir()
    (tiny_folder / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="--view-budget: expected >= 0"):
        tool_limits("slide_view", -1)
    assert tool_limits(None) is None
    base = ["--model", str(tiny_folder), "--data", str(qa), "--tools", "slide_view", "--out", str(tmp_path / "o")]
    assert main(base + ["--suite", "pathvqa"]) == 2
    assert "--tools slide_view reads a QA file whose records name a slide: use --suite qa" in capsys.readouterr().err
    assert main(base + ["--suite", "qa", "--backend", "vllm"]) == 2
    assert "--tools runs its multi-turn loop on the transformers backend" in capsys.readouterr().err
    no_slide = tmp_path / "plain.jsonl"
    no_slide.write_text(json.dumps({"id": "p", "question": "Tumour?", "answer": "yes"}) + "\n")
    assert main(base[:2] + ["--data", str(no_slide), "--tools", "slide_view", "--suite", "qa"]) == 2
    assert "plain.jsonl:1: missing-field: expected a 'slide'" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_thumbnail_pairs_the_tool_run_with_the_thumbnail_run(tiny_folder, qa, tmp_path, monkeypatch, capsys):
    import evaluation.navigate
    from evaluation.run import main

    navigate = evaluation.navigate.navigate_many

    def navigate_scripted(model, processor, *args, **kwargs):  # each run starts the script afresh
        scripted(model, processor.tokenizer)  # even rows zoom then answer A (right), odd rows answer B (wrong)
        return navigate(model, processor, *args, **kwargs)

    monkeypatch.setattr(evaluation.navigate, "navigate_many", navigate_scripted)
    out = tmp_path / "cmp"
    assert main(["--model", str(tiny_folder), "--suite", "qa", "--data", str(qa), "--compare-thumbnail",
                 "--view-budget", "2", "--max-new-tokens", "200", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "compare-thumbnail-vs-views2" / "comparison.json").read_text())
    # thumbnail only: no tools on offer, the written call is no answer -> 0/3; with tools s0 and s2 zoom -> 2/3
    assert report["accuracy"] == {"thumbnail": 0.0, "tools": 2 / 3}
    assert report["views_per_question"] == {"thumbnail": 0.0, "tools": 2 / 3}
    c = report["comparison"]
    assert (c["n"], c["fixed"], c["broken"]) == (3, 2, 0) and c["difference"] == pytest.approx(2 / 3)
    assert report["settings"]["thumbnail"]["tools"]["budget"] == 0 and report["settings"]["tools"]["tools"]["budget"] == 2
    assert "paired difference (tools - thumbnail) on the same 3 questions: +66.7 points" in capsys.readouterr().out
