"""`python -m evaluation.run --judge URL --judge-model NAME`: open answers scored by corpora.judge (the RL judge
reward's implementation) against a loopback stub; the judge is recorded in metrics.json, never its key."""
import json

from evaluation.run import main
from tests.corpora.stub_endpoint import StubServer


def test_cli_judges_open_answers_and_records_the_judge(tiny_model_dir, make_images, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-eval-secret-5")
    imgs = make_images(tmp_path / "data", [(56, 56), (56, 56)])
    rows = [{"image": imgs[0], "question": "Describe the nuclei.", "answer": "dense pleomorphic nuclei"},
            {"image": imgs[1], "question": "Describe the glands.", "answer": "crowded irregular glands"}]
    data = tmp_path / "data" / "open.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    stub = StubServer()
    try:
        out = tmp_path / "out"
        assert main(["--model", str(tiny_model_dir()), "--suite", "open", "--data", str(data), "--out", str(out),
                     "--max-new-tokens", "4", "--no-progress", "--judge", stub.url, "--judge-model", "ok"]) == 0
    finally:
        stub.close()
    assert len(stub.requests) == 2  # one per open answer
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(p["score"], p["judge_failed"]) for p in predictions] == [(0.8, False), (0.8, False)]
    metrics = (out / "metrics.json").read_text()
    judge = json.loads(metrics)["judge"]
    assert judge["url"] == f"{stub.url}/v1/chat/completions" and judge["model"] == "ok"
    assert judge["asked"] == 2 and judge["failure_rate"] == 0.0
    assert "sk-eval-secret-5" not in metrics and judge["api_key_env"] == "OPENAI_API_KEY"
