"""recipes.distill: CoT SFT data by rejection sampling, from an endpoint (the loopback stub; default tier) and from a
small SFT checkpoint trained here on the demo corpus, sampled in process (slow tier: ~2 min on one CPU thread)."""
import json

import pytest

from corpora.demo import build_demo
from corpora.grading import grade
from corpora.readers import load_qa
from corpora.validate import validate
from recipes import distill
from recipes import sft as sft_recipe
from tests.corpora.stub_endpoint import StubServer, serve_model

N_QUESTIONS = 50


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"), n_train=96, n_eval=N_QUESTIONS, image_size=56)


@pytest.fixture(scope="module")
def teacher(demo, tmp_path_factory):
    """A tiny SFT checkpoint that writes the format (greedy) and samples ~15-20 % correct traces at T=0.7 (~90 s)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATHOR1_HOME", str(tmp_path_factory.mktemp("home")))
        assert sft_recipe.main([f"data={demo.sft}", "init=tiny:qwen2_5_vl", "max_steps=120", "batch_size=8",
                                "lr=1e-3", "warmup_ratio=0", "train=all", "center_image_features=true",
                                "run=teacher"]) == 0
        from stages.registry import Registry

        return str(Registry().latest("sft", "teacher"))


def args(demo, teacher, out, *extra):
    return distill.parse_args(["--teacher", teacher, "--data", str(demo.eval_mcq), "--out", str(out),
                               "--samples", "4", "--batch-size", "16", "--max-new-tokens", "48", "--no-progress",
                               *extra])


@pytest.mark.parametrize("traces, kept, correct", [
    (["<think>a</think><answer>B</answer>", "<think>b</think><answer>A</answer>"], 1, 1),  # wrong answer dropped
    (["<think>long reasoning here</think><answer>B</answer>", "<think>short</think><answer>B</answer>"], 2, 2),
    (["<think>Dense nuclei.</think><answer>B</answer>", "<think>dense  nuclei</think><answer>B</answer>"], 1, 2),
    (["no tags at all B"], 0, 0),                                                          # no <answer>: wrong
])
def test_select_traces(traces, kept, correct):
    got, n_correct = distill.select_traces(traces, "B", "mcq", ["x", "y"], "cot", dedup=0.9, keep_shortest=0)
    assert (len(got), n_correct) == (kept, correct)
    assert got == sorted(got, key=len)  # shortest first
    assert len(distill.select_traces(traces, "B", "mcq", ["x", "y"], "cot", dedup=0.9, keep_shortest=1)[0]) <= 1


def interrupted_then_resumed(make_args, out, partial):
    """Run to `partial`, crash after the first batch with a record torn in half, rerun: it must equal `out`."""
    def crash(batch):
        if batch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill.distill(make_args(partial), after_batch=crash)
    partial.write_text(partial.read_text() + '{"id": "torn-rec')
    resumed = distill.distill(make_args(partial))
    assert partial.read_text() == out.read_text()
    return resumed


@pytest.mark.slow
def test_distill_from_sft_checkpoint_resumes_and_trains(demo, teacher, tmp_path, capsys):
    out = demo.root / "distilled.jsonl"
    summary = distill.distill(args(demo, teacher, out))
    print("distill summary:", json.dumps({k: v for k, v in summary.items() if k != "teacher"}))
    assert summary["questions"] == N_QUESTIONS and summary["sampled"] == 4 * N_QUESTIONS
    assert 0 < summary["kept"] <= summary["correct"] and 0 < summary["acceptance_rate"] < 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    questions = {q["id"]: q for q in load_qa(demo.eval_mcq)}
    for r in records:  # every kept trace is correct by the one scorer, with its provenance
        q = questions[r["provenance"]["question_id"]]
        assert grade(r["messages"][-1]["content"], q["answer"], "mcq", q["options"]).correct
        assert r["provenance"]["teacher"]["path"] == teacher and r["provenance"]["sampling"]["samples"] == 4
        assert r["provenance"]["acceptance_rate"] == r["provenance"]["correct"] / 4
    assert validate(out, "sft").ok  # corpora.validate --kind sft

    again = interrupted_then_resumed(lambda o: args(demo, teacher, o), out, demo.root / "partial.jsonl")
    assert again["kept"] == summary["kept"]
    with pytest.raises(ValueError, match="other settings"):
        distill.distill(args(demo, teacher, demo.root / "partial.jsonl", "--samples", "2"))

    # recipes.sft trains on the distilled file
    assert sft_recipe.main([f"data={out}", f"init={teacher}", "max_steps=2", "batch_size=4", "run=on-distilled"]) == 0
    from stages.registry import Registry

    manifest = Registry().manifest("sft:on-distilled")
    assert manifest["step"] == 2 and manifest["metrics"]


@pytest.mark.slow
def test_distill_through_an_endpoint_serving_the_tiny_model(demo, teacher):
    stub = StubServer()
    try:
        stub.teacher = serve_model(teacher)
        out = demo.root / "served.jsonl"
        summary = distill.distill(distill.parse_args([
            "--teacher", stub.url, "--teacher-model", "teacher", "--data", str(demo.eval_mcq), "--out", str(out),
            "--samples", "4", "--limit", "12", "--max-new-tokens", "48", "--no-progress"]))
        print("served distill summary:", json.dumps({k: v for k, v in summary.items() if k != "teacher"}))
        assert len(stub.requests) == 12 and summary["sampled"] == 48 and summary["kept"] > 0
        questions = {q["id"]: q for q in load_qa(demo.eval_mcq)}
        for r in map(json.loads, out.read_text().splitlines()):
            q = questions[r["provenance"]["question_id"]]
            assert grade(r["messages"][-1]["content"], q["answer"], "mcq", q["options"]).correct
    finally:
        stub.close()


def test_distill_from_an_endpoint(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-distill-secret-77")
    stub = StubServer()
    try:
        def teacher_reply(body):  # answers B, C, B, C: two right for questions whose answer is B or C
            return [f"<think>Dense nuclei.</think><answer>{'B' if i % 2 == 0 else 'C'}</answer>" for i in range(body["n"])]

        stub.teacher = teacher_reply
        out = demo.root / "from-endpoint.jsonl"
        def make_args(o):
            return distill.parse_args(["--teacher", stub.url, "--teacher-model", "teacher", "--data",
                                       str(demo.eval_mcq), "--out", str(o), "--samples", "4", "--limit", "6",
                                       "--batch-size", "2", "--no-progress"])

        summary = distill.distill(make_args(out))
        body = stub.requests[0]["body"]
        assert body["n"] == 4 and body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png")
        questions = list(load_qa(demo.eval_mcq))[:6]
        expected_correct = sum(2 if q["answer"] in "BC" else 0 for q in questions)
        assert summary["correct"] == expected_correct and summary["sampled"] == 24
        # identical correct traces collapse to one per question
        assert summary["kept"] == sum(q["answer"] in "BC" for q in questions)
        assert stub.requests[0]["headers"]["Authorization"] == "Bearer sk-distill-secret-77"
        written = out.read_text() + out.with_name(out.name + ".progress.jsonl").read_text() + json.dumps(summary)
        assert "sk-distill-secret-77" not in written and summary["teacher"]["api_key_env"] == "OPENAI_API_KEY"
        assert validate(out, "sft").ok
        asked = len(stub.requests)
        interrupted_then_resumed(make_args, out, demo.root / "from-endpoint-partial.jsonl")
        assert len(stub.requests) == asked  # every reply came from the disk cache
    finally:
        stub.close()


def test_bad_arguments_fail_fast(demo, tmp_path, capsys):
    with pytest.raises(SystemExit):
        distill.parse_args(["--teacher", "http://127.0.0.1:1", "--data", "x", "--out", "y"])
    assert "--teacher-model" in capsys.readouterr().err
    code = distill.main(["--teacher", "sft:none", "--data", str(demo.eval_mcq), "--out", str(tmp_path / "o.jsonl")])
    assert code == 2 and "error" in capsys.readouterr().err
