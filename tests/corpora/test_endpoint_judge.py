"""The OpenAI-compatible client and the judge against a loopback stub started here (tests/corpora/stub_endpoint.py)."""
import json
import logging
import time

import pytest
from PIL import Image

from corpora.endpoint import ChatEndpoint, EndpointError, chat_url, image_data_url, user_message
from corpora.judge import Judge, JudgeConfig, JudgeItem, calibrate, main, parse_score
from tests.corpora.stub_endpoint import StubServer

SECRET = "sk-test-DO-NOT-LEAK-4242"


@pytest.fixture
def stub():
    server = StubServer()
    yield server
    server.close()


def endpoint(stub, model="ok", tmp_path=None, **kw):
    kw.setdefault("backoff", 0.01)
    return ChatEndpoint(stub.url, model, cache_dir=tmp_path / "cache" if tmp_path else None, **kw)


def ask(text="hello"):
    return [user_message(text)]


@pytest.mark.parametrize("given, expected", [
    ("http://h:8000", "http://h:8000/v1/chat/completions"),                 # bare server
    ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),             # base URL of the openai package
    ("https://api.x/v1/chat/completions", "https://api.x/v1/chat/completions"),  # full route kept
])
def test_chat_url(given, expected):
    assert chat_url(given) == expected


def test_bad_url_and_settings_fail_at_construction():
    with pytest.raises(EndpointError, match="must start with http"):
        ChatEndpoint("localhost:8000", "m")
    with pytest.raises(EndpointError, match="concurrency >= 1"):
        ChatEndpoint("http://127.0.0.1:1", "m", concurrency=0)


def test_images_are_sent_as_data_urls(tmp_path, stub):
    Image.new("RGB", (4, 4), (200, 10, 10)).save(tmp_path / "a.png")
    message = user_message("what is it?", [tmp_path / "a.png", Image.new("RGB", (2, 2))])
    assert [p["type"] for p in message["content"]] == ["image_url", "image_url", "text"]  # images first
    assert image_data_url(tmp_path / "a.png").startswith("data:image/png;base64,iVBOR")  # the PNG signature
    endpoint(stub, tmp_path=tmp_path).chat([message])
    sent = stub.requests[0]["body"]["messages"][0]["content"]
    assert sent[0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_rerun_is_a_cache_hit(tmp_path, stub):
    first = endpoint(stub, tmp_path=tmp_path)
    assert first.chat_many([ask("a"), ask("b")], temperature=0) == [[stub.reply], [stub.reply]]
    assert len(stub.requests) == 2
    rerun = endpoint(stub, tmp_path=tmp_path)  # a new process would look the same: only the folder is shared
    assert rerun.chat_many([ask("a"), ask("b")], temperature=0) == [[stub.reply], [stub.reply]]
    assert len(stub.requests) == 2 and rerun.stats.cache_hits == 2
    rerun.chat(ask("a"), temperature=0.7)  # another sampling setting is another request
    assert len(stub.requests) == 3


def test_timeout_gives_none_after_bounded_retries(tmp_path, stub):
    stub.slow_s = 1.0
    ep = endpoint(stub, "slow", tmp_path, timeout=0.2, max_retries=1)
    t0 = time.monotonic()
    assert ep.chat(ask()) is None
    assert time.monotonic() - t0 < 1.5  # two attempts of 0.2 s, not a hang
    assert len(stub.requests) == 2 and ep.stats.failures == 1
    assert not list((tmp_path / "cache").rglob("*.json"))  # failures are not cached: a rerun asks again


def test_retries_recover_from_overload(tmp_path, stub):
    ep = endpoint(stub, "flaky", tmp_path, max_retries=3)
    assert ep.chat(ask()) == [stub.reply]
    assert ep.stats.retries == 2 and len(stub.requests) == 3


@pytest.mark.parametrize("model", ["notjson", "unauthorised"])
def test_bad_reply_is_none_without_retrying_forever(tmp_path, stub, model):
    ep = endpoint(stub, model, tmp_path, max_retries=3)
    assert ep.chat(ask()) is None
    assert len(stub.requests) == 1  # neither a non-JSON body nor 401 gets better by asking again


def test_concurrency_is_bounded(tmp_path, stub):
    ep = endpoint(stub, "busy", tmp_path, concurrency=3)
    assert all(r == [stub.reply] for r in ep.chat_many([ask(str(i)) for i in range(12)]))
    assert 2 <= stub.max_in_flight <= 3  # really concurrent, never above the bound


def test_rate_limit_spaces_request_starts(tmp_path, stub):
    ep = endpoint(stub, "ok", tmp_path, concurrency=4, rate_limit=20)
    t0 = time.monotonic()
    ep.chat_many([ask(str(i)) for i in range(6)])
    assert time.monotonic() - t0 >= 5 / 20 - 0.01  # 6 starts at 20/s span at least 0.25 s


def test_key_is_sent_but_never_logged_cached_or_described(tmp_path, stub, monkeypatch, caplog):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    cfg = JudgeConfig(url=stub.url, model="ok", api_key_env="JUDGE_KEY", cache_dir=str(tmp_path / "cache"))
    judge = Judge(cfg)
    judge.score_many([JudgeItem("q?", "a", "a")])
    Judge(JudgeConfig(url=stub.url, model="unauthorised", api_key_env="JUDGE_KEY", max_retries=0,
                      cache_dir=str(tmp_path / "cache")))("q?", "a", "a")  # a failure logs a warning
    assert stub.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert caplog.records and SECRET not in caplog.text
    files = list((tmp_path / "cache").rglob("*.json"))
    assert files and not any(SECRET in f.read_text() or SECRET in f.name for f in files)
    assert SECRET not in json.dumps(judge.describe()) and judge.describe()["api_key_env"] == "JUDGE_KEY"
    assert SECRET not in repr(vars(judge.endpoint))


@pytest.mark.parametrize("reply, score", [
    ("Same meaning. Score: 8", 0.8),           # the stated format
    ("score = 10", 1.0),                       # top of the scale
    ("Score: 3\n...on reflection Score: 6", 0.6),  # the last score counts
    ("7", 0.7),                                # a bare number
    ("Score: 11", None),                       # outside 0..10
    ("I think it is roughly right.", None),    # no score at all
    ("", None),                                # empty reply
])
def test_parse_score(reply, score):
    assert parse_score(reply, 10) == score


def test_judge_scores_and_counts_failures(tmp_path, stub):
    cache = str(tmp_path / "cache")
    good = Judge(JudgeConfig(url=stub.url, model="ok", cache_dir=cache))
    assert good.score_many([JudgeItem("q?", "lymphoma", "lymphoid infiltrate")]) == [0.8]
    prompt = stub.requests[0]["body"]["messages"][0]["content"]
    assert "Reference answer: lymphoid infiltrate" in prompt and "Answer to grade: lymphoma" in prompt
    assert stub.requests[0]["body"]["temperature"] == 0.0
    malformed = Judge(JudgeConfig(url=stub.url, model="malformed", cache_dir=cache))
    assert malformed("q?", "a", "b") is None and malformed.failure_rate == 1.0
    stub.slow_s = 1.0
    slow = Judge(JudgeConfig(url=stub.url, model="slow", timeout=0.2, max_retries=0, cache_dir=cache))
    assert slow("q?", "a", "b") is None


def test_judge_config_fails_fast_naming_the_field():
    with pytest.raises(ValueError, match="judge.url: endpoint URL must start with http"):
        JudgeConfig(url="127.0.0.1:8000", model="m")
    with pytest.raises(ValueError, match="judge.model is empty"):
        JudgeConfig(url="http://127.0.0.1:8000")
    with pytest.raises(ValueError, match="judge prompt 'nope'"):
        JudgeConfig(prompt="nope")


def test_calibration_reports_agreement_with_exact_match(tmp_path, stub):
    # A stub judge that says 10 when the graded answer names the reference's letter, else 0: perfect agreement.
    def verdict(body):
        text = body["messages"][0]["content"]
        ref = text.split("Reference answer: ")[1].split("\n")[0]
        got = text.split("Answer to grade: ")[1].split("\n")[0]
        return [f"Score: {10 if got == ref else 0}"]

    stub.teacher = verdict
    records = [{"question": "Dx?", "kind": "mcq", "options": ["x", "y", "z"], "answer": "B", "images": []},
               {"question": "Is it y?", "kind": "yesno", "options": [], "answer": "yes", "images": []},
               {"question": "Describe", "kind": "open", "options": [], "answer": "y", "images": []}]
    report = calibrate(Judge(JudgeConfig(url=stub.url, model="teacher", cache_dir=str(tmp_path / "c"))), records)
    assert report["n"] == 4 and report["agreement"] == 1.0 and report["kappa"] == 1.0  # open question skipped
    assert report["confusion"] == {"tp": 2, "fp": 0, "fn": 0, "tn": 2}


def test_calibrate_cli_on_predictions_file(tmp_path, stub, capsys):
    rows = [{"id": "1", "kind": "yesno", "question": "Tumour?", "options": [], "answer": "yes", "prediction": "x",
             "extracted": "yes", "correct": True},
            {"id": "2", "kind": "yesno", "question": "Tumour?", "options": [], "answer": "no", "prediction": "x",
             "extracted": "yes", "correct": False}]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stub.reply = "Score: 10"  # a judge that accepts everything agrees on the right answer only
    assert main(["calibrate", str(tmp_path / "predictions.jsonl"), "--url", stub.url, "--model", "ok"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["agreement"] == 0.5 and report["confusion"] == {"tp": 1, "fp": 1, "fn": 0, "tn": 0}


def test_calibrate_against_an_unreachable_judge_is_an_error(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on: every request is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = [{"id": "1", "kind": "yesno", "question": "Tumour?", "options": [], "answer": "yes", "prediction": "x",
             "extracted": "yes", "correct": True}]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    url = f"http://127.0.0.1:{port}"
    assert main(["calibrate", str(tmp_path / "predictions.jsonl"), "--url", url, "--model", "m", "--timeout", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"the judge at {url} (model m) scored none of 1 questions" in captured.err
