"""recipes.distill: CoT SFT data by rejection sampling, from an endpoint (the loopback stub; default tier) and from a
small SFT checkpoint trained here on the demo corpus, sampled in process (slow tier: ~2 min on one CPU thread)."""
import json

import pytest
from PIL import Image

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


# ----------------------------------------------------------------------------------------------- --tools slide_view
def nav_args(teacher, data, out, *extra):
    return distill.parse_args(["--teacher", str(teacher), "--data", str(data), "--out", str(out), "--tools",
                               "slide_view", "--view-budget", "2", "--samples", "2", "--batch-size", "2",
                               "--max-new-tokens", "200", "--device", "cpu", "--no-progress", *extra])


def test_tools_arguments_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        nav_args("http://127.0.0.1:1", "x", "y", "--teacher-model", "m")
    assert e.value.code == 2 and "give a checkpoint --teacher" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        nav_args("sft:latest", "x", "y", "--view-budget", "0")
    assert "--view-budget: expected >= 1 with --tools" in capsys.readouterr().err
    # a QA file whose records name no slide: one line naming file:line, before any model loads
    (tmp_path / "qa.jsonl").write_text(json.dumps({"id": "q", "question": "?", "answer": "yes"}) + "\n")
    code = distill.main(["--teacher", "sft:none", "--data", str(tmp_path / "qa.jsonl"), "--out",
                         str(tmp_path / "o.jsonl"), "--tools", "slide_view"])
    err = capsys.readouterr().err
    assert code == 2 and "qa.jsonl:1: missing-field" in err and len(err.strip().splitlines()) == 1


def test_a_navigation_becomes_a_trace_with_its_images_saved_in_order(tmp_path):
    from corpora.slides.viewer import ViewRecord
    from evaluation.navigate import NavCompletion

    overview, view = Image.new("RGB", (8, 6), "white"), Image.new("RGB", (4, 4), "red")
    call = {"type": "function", "function": {"name": "zoom", "arguments": {"x": 3, "y": 2, "mpp": 0.5}}}
    record = ViewRecord(1, 3, 2, 0.5, 4, 0, 2.0, "/elsewhere/s.tiff", "q1").to_json()
    nav = NavCompletion(text="<answer>A</answer>", n_tokens=9, navigation={"views": [record]}, messages=[
        {"role": "user", "content": [{"type": "image", "image": overview}, {"type": "text", "text": "Q?"}]},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "zoom", "content": [{"type": "image", "image": view}, {"type": "text", "text": "v"}]},
        {"role": "assistant", "content": "<answer>A</answer>"}])
    (tmp_path / "s.tiff").touch()
    got = distill.navigation_record({"slide": str(tmp_path / "s.tiff")}, nav, tmp_path / "t.jsonl", "q1-distill0",
                                    {"question_id": "q1"})
    assert got["images"] == ["t-views/q1-distill0-0.png", "t-views/q1-distill0-1.png"]
    assert Image.open(tmp_path / got["images"][1]).size == (4, 4) and Image.open(tmp_path / got["images"][0]).size == (8, 6)
    assert got["messages"][0]["content"][0] == {"type": "image"} and got["messages"][1]["tool_calls"] == [call]
    assert got["messages"][2]["content"] == [{"type": "image"}, {"type": "text", "text": "v"}]
    assert got["slide"] == "s.tiff" and got["views"][0]["slide"] == "s.tiff" and got["provenance"] == {"question_id": "q1"}
    json.dumps(got)  # JSON all the way down
    assert distill.navigation_key(nav) == json.dumps([call["function"]], sort_keys=True) + "<answer>A</answer>"
    assert [t["function"]["name"] for t in got["tools"]] == ["zoom", "tissue_regions"]
    assert distill.valid_trace(nav)
    nav.messages[1]["tool_calls"] = [{"type": "function", "function": {"name": "pan", "arguments": {}}}]
    assert not distill.valid_trace(nav)  # a call of no viewer tool: never kept (corpora.traces would refuse it)


@pytest.mark.slow
def test_distill_with_the_slide_viewer_writes_navigation_traces_and_resumes(tmp_path, monkeypatch):
    """A tiny Qwen3-VL teacher whose turns follow tests/slide_tools.py's script (per question, sample 0 zooms at
    1 µm/px then answers A, sample 1 answers B from the overview), through evaluation's navigation loop."""
    from corpora.slides.navdemo import build_nav_demo, sft_dataset
    from stages.model import build_tiny
    from tests.slide_tools import scripted

    teacher = build_tiny("qwen3_vl", tmp_path / "teacher")
    nav = build_nav_demo(tmp_path / "nav", n_train=1, n_eval=4, view_size=56)
    questions = {json.loads(line)["id"]: json.loads(line) for line in (nav / "eval.jsonl").read_text().splitlines()}
    init = distill.LocalTeacher.__init__

    def init_and_script(self, ref, args):
        init(self, ref, args)
        scripted(self.model, self.processor.tokenizer)

    monkeypatch.setattr(distill.LocalTeacher, "__init__", init_and_script)
    out = tmp_path / "full" / "traces.jsonl"
    summary = distill.distill(nav_args(teacher, nav / "eval.jsonl", out))
    assert summary["questions"] == 4 and summary["sampled"] == 8 and summary["views_per_sample"] == 0.5
    answers = [q["answer"] for q in questions.values()]
    assert summary["kept"] == summary["correct"] == 4  # one of the two samples is right on every question
    records = [json.loads(line) for line in out.read_text().splitlines()]
    with_views = [r for r in records if r["views"]]
    assert len(with_views) == answers.count("A") >= 1
    for r in records:
        q = questions[r["provenance"]["question_id"]]
        assert grade(r["messages"][-1]["content"], q["answer"], "mcq", q["options"]).correct
        assert r["provenance"]["sampling"]["tools"]["budget"] == 2 and r["provenance"]["teacher"]["path"] == str(teacher)
        blocks = [b for m in r["messages"] if isinstance(m["content"], list) for b in m["content"]]
        assert [b for b in blocks if b["type"] == "image"] == [{"type": "image"}] * len(r["images"])
        assert all((out.parent / f).is_file() for f in r["images"])  # overview, then each view
        assert r["slide"] == str((nav / q["slide"]).resolve())
    for r in with_views:  # the navdemo schema: call, tool result with its view, answer
        user, call, tool, answer = r["messages"]
        assert [m["role"] for m in r["messages"]] == ["user", "assistant", "tool", "assistant"]
        assert call["tool_calls"] == [{"type": "function",
                                       "function": {"name": "zoom", "arguments": {"x": 300, "y": 200, "mpp": 1.0}}}]
        assert tool["name"] == "zoom" and tool["content"][1]["text"].startswith("view 1/2: centre (300, 200)")
        assert [(v["x"], v["y"], v["mpp"], v["slide"]) for v in r["views"]] == [(300, 200, 1.0, r["slide"])]
        assert len(r["images"]) == 2 and Image.open(out.parent / r["images"][1]).size == (224, 224)
    assert validate(out, "sft").ok  # corpora.validate --kind sft: valid traces (corpora.traces), images found
    rows = sft_dataset(out)  # SFT reads the traces as navdemo's: the view inside its tool turn
    first = rows[[r["id"] for r in records].index(with_views[0]["id"])]
    assert len(first["images"]) == 1 and first["messages"][2]["content"][0]["image"].size == (224, 224)
    assert sft_recipe.main([f"data={out}", f"init={teacher}", "max_steps=1", "batch_size=2", "run=on-nav"]) == 0

    # resumable: crash after the first batch (a record torn in half), rerun -> the same file and views
    partial = tmp_path / "resumed" / "traces.jsonl"

    def crash(batch):
        if batch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill.distill(nav_args(teacher, nav / "eval.jsonl", partial), after_batch=crash)
    partial.write_text(partial.read_text() + '{"id": "torn-rec')
    assert distill.distill(nav_args(teacher, nav / "eval.jsonl", partial))["kept"] == 4
    assert partial.read_text() == out.read_text()
    views = sorted(p.name for p in (out.parent / "traces-views").iterdir())
    assert views == sorted(p.name for p in (partial.parent / "traces-views").iterdir())
    assert all((out.parent / "traces-views" / v).read_bytes() == (partial.parent / "traces-views" / v).read_bytes()
               for v in views)
