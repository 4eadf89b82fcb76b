"""recipes.filter: pass rates from K sampled answers, band filter, histogram, resume; through the loopback endpoint
stub (default tier: its answers, hence every pass rate, are known) and a tiny local checkpoint whose output
`recipes.rl` then trains on (slow tier)."""
import json
from collections import Counter

import pytest

from corpora.demo import build_demo
from corpora.prompts import render_prompt
from corpora.readers import load_qa
from corpora.validate import validate
from recipes import filter as filter_recipe
from tests.corpora.stub_endpoint import StubServer

K = 4


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"), n_train=12, n_eval=4, image_size=56)


def scripted_model(questions):
    """A stub model that answers question i right in exactly i mod (K+1) of its K answers: it recognises the
    question by its prompt and image, and answers its reference letter or another one."""
    from corpora.endpoint import image_data_url

    script = {}
    for i, q in enumerate(questions):
        key = (render_prompt("cot", q["question"], q["options"]), image_data_url(q["images"][0]))
        assert key not in script, "two questions with the same prompt and image"
        wrong = "A" if q["answer"] != "A" else "B"
        script[key] = (q["answer"], wrong, i % (K + 1))

    def reply(body):
        content = body["messages"][0]["content"]
        text = next(p["text"] for p in content if p["type"] == "text")
        right, wrong, j = script[(text, next(p["image_url"]["url"] for p in content if p["type"] == "image_url"))]
        return [f"<think>x</think><answer>{right if n < j else wrong}</answer>" for n in range(body["n"])]

    return reply


def expected_rate(i) -> float:
    return (i % (K + 1)) / K


@pytest.fixture
def stub(demo):
    server = StubServer()
    server.teacher = scripted_model(list(load_qa(demo.rl)))
    yield server
    server.close()


def cli(stub, demo, out, *extra):
    return ["--model", stub.url, "--model-name", "teacher", "--data", str(demo.rl), "--out", str(out),
            "--samples", str(K), "--band", "0.25,0.75", "--batch-size", "5", "--no-progress", *extra]


def test_band_filter_writes_pass_rates_histogram_and_summary(stub, demo, capsys):
    out = demo.root / "band.jsonl"
    assert filter_recipe.main(cli(stub, demo, out)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the JSON summary is the last line
    questions = list(load_qa(demo.rl))
    rates = {q["id"]: expected_rate(i) for i, q in enumerate(questions)}
    in_band = [q["id"] for q in questions if 0.25 <= rates[q["id"]] <= 0.75]
    assert 0 < len(in_band) < len(questions)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in kept] == in_band  # input order, exactly the band
    assert all(r["pass_rate"] == rates[r["id"]] for r in kept)
    assert summary["questions"] == len(questions) and summary["kept"] == len(in_band)
    assert summary["pass_rate_histogram"] == {f"{c}/{K}": Counter(round(r * K) for r in rates.values()).get(c, 0)
                                              for c in range(K + 1)}
    subsets = Counter(q["subset"] for q in questions)
    assert sum(int(v.split("/")[1]) for v in summary["kept_per_subset"].values()) == sum(subsets.values())
    png = out.with_name("band.pass_rate.png")
    assert summary["histogram_png"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # valid QA for recipes.rl: validates, images resolve to the same files as the input's
    assert validate(out, "qa").ok
    by_id = {q["id"]: q for q in questions}
    assert all(r["images"] == by_id[r["id"]]["images"] for r in load_qa(out))
    assert len(stub.requests) == len(questions) and stub.requests[0]["body"]["n"] == K


def test_resume_samples_only_unfinished_batches_and_ends_with_the_same_file(stub, demo, tmp_path):
    whole = demo.root / "whole.jsonl"
    assert filter_recipe.main(cli(stub, demo, whole)) == 0
    part = demo.root / "part.jsonl"

    def crash(batch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        filter_recipe.filter_questions(filter_recipe.parse_args(cli(stub, demo, part)), after_batch=crash)
    progress = part.with_name("part.jsonl.progress.jsonl")
    progress.write_text(progress.read_text() + '{"question_index": 99, "id": "torn')  # a crash mid-line
    ran = []
    summary = filter_recipe.filter_questions(filter_recipe.parse_args(cli(stub, demo, part)), after_batch=ran.append)
    n_batches = -(-len(list(load_qa(demo.rl))) // 5)
    assert ran == list(range(1, n_batches))  # batch 0 was finished: not sampled again
    assert part.read_text() == whole.read_text() and summary["kept"] == len(whole.read_text().splitlines())
    code = filter_recipe.main(cli(stub, demo, part, "--samples", "2"))
    assert code == 2  # other settings for the same output: refused


@pytest.mark.parametrize("change, message", [
    ({"--band": "0.9,0.1"}, "--band: expected LO,HI with 0 <= LO <= HI <= 1, found '0.9,0.1'"),
    ({"--band": "half"}, "--band: expected LO,HI"),
    ({"--samples": "0"}, "--samples: expected an integer >= 1, found 0"),
    ({"--model-name": None}, "an endpoint needs --model-name"),
    ({"--model": "sft:none"}, "sft:none"),
    ({"--data": "missing.jsonl"}, "missing.jsonl: expected a QA file, found nothing there"),
    ({"--data": "BAD"}, "bad.jsonl:2:"),
    ({"--out": "OUTSIDE"}, "lies outside the output's dataset root"),
])
def test_bad_input_is_one_line_exit_2_before_any_model_loads(stub, demo, tmp_path, monkeypatch, capsys, change,
                                                             message):
    from recipes import distill

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(distill.LocalTeacher, "__init__", no_model)
    monkeypatch.setattr(distill.EndpointTeacher, "__init__", no_model)
    bad = demo.root / "bad.jsonl"
    good = demo.rl.read_text().splitlines()[0]
    bad.write_text(good + "\n" + json.dumps({"question": "x?", "answer": "Z", "options": ["a", "b"],
                                             "images": [json.loads(good)["images"][0]]}) + "\n")
    args = dict(zip(cli(stub, demo, demo.root / "o.jsonl")[0::2], cli(stub, demo, demo.root / "o.jsonl")[1::2]))
    args.pop("--no-progress", None)
    values = {"BAD": str(bad), "OUTSIDE": str(tmp_path / "elsewhere" / "o.jsonl")}
    for key, value in change.items():
        if value is None:
            args.pop(key)
        else:
            args[key] = values.get(value, value)
    argv = [x for kv in args.items() for x in kv] + ["--no-progress"]
    assert filter_recipe.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("python -m recipes.filter: error: ") and message in err


@pytest.mark.slow
def test_a_local_checkpoint_filters_and_rl_trains_on_the_output(demo, tmp_path, capsys):
    from recipes import rl as rl_recipe
    from stages.model import build_tiny
    from stages.registry import Registry

    tiny = build_tiny("qwen2_5_vl", tmp_path / "tiny")
    out = demo.root / "local.jsonl"
    assert filter_recipe.main(["--model", str(tiny), "--data", str(demo.rl), "--out", str(out), "--samples", "2",
                               "--band", "0,1", "--max-new-tokens", "8", "--limit", "6", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["questions"] == summary["kept"] == 6 and summary["model"]["path"] == str(tiny)
    assert sum(summary["pass_rate_histogram"].values()) == 6
    assert rl_recipe.main([f"data={out}", f"init={tiny}", "max_steps=1", "num_generations=2", "batch_size=2",
                           "max_completion_length=8", "run=filtered"]) == 0
    assert Registry().manifest("rl:filtered")["step"] == 1
