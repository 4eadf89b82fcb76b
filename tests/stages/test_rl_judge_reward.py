"""The judge reward (stages.rl.rewards.JudgeReward) and evaluation's --judge share corpora.judge; a loopback stub
plays the judge."""
import logging

import pytest

from corpora.judge import Judge, JudgeConfig
from stages.config import ConfigError, load_config
from stages.rl import RLConfig
from stages.rl.rewards import build_rewards
from tests.corpora.stub_endpoint import StubServer


@pytest.fixture
def stub():
    server = StubServer()
    yield server
    server.close()


def judge_cfg(stub, model="ok", **kw):
    return JudgeConfig(url=stub.url, model=model, max_retries=0, timeout=0.3, **kw)


COLUMNS = dict(question=["Describe the tissue.", "Describe the tissue.", "Diagnosis?"],
               answer=["sheets of lymphocytes", "sheets of lymphocytes", "B"],
               kind=["open", "open", "mcq"], options=[[], [], ["x", "y"]])


def test_judge_reward_scores_open_answers_only(stub):
    [reward] = build_rewards(["judge"], judge=judge_cfg(stub))
    logged = {}
    out = reward(["<think>t</think><answer>a lymphoid infiltrate</answer>",  # open: judged (stub says 8/10)
                  "<think>t</think>no answer tag",                            # open without an answer: 0, not sent
                  "<think>t</think><answer>B</answer>"],                      # mcq: None, accuracy grades it
                 log_metric=lambda k, v: logged.setdefault(k, v), **COLUMNS)
    assert out == [0.8, 0.0, None]
    assert len(stub.requests) == 1 and "a lymphoid infiltrate" in str(stub.requests[0]["body"]["messages"])
    assert logged == {"judge/failure_rate": 0.0}


@pytest.mark.parametrize("model", ["malformed", "slow", "notjson"])
def test_judge_failure_is_none_and_logged_never_zero(stub, model, caplog):
    stub.slow_s = 1.0
    [reward] = build_rewards(["judge"], judge=judge_cfg(stub, model))
    logged = {}
    with caplog.at_level(logging.WARNING):
        out = reward(["<answer>x</answer>", "<answer>y</answer>"], log_metric=lambda k, v: logged.setdefault(k, v),
                     **{k: v[:2] for k, v in COLUMNS.items()})
    assert out == [None, None]
    assert logged == {"judge/failure_rate": 1.0} and "judge: 2 of 2 answers unscored" in caplog.text


def test_rl_config_needs_a_judge_url():
    with pytest.raises(ConfigError, match="judge.url is empty"):
        load_config(RLConfig, ["rewards=[format,judge]"])
    cfg = load_config(RLConfig, ["rewards=[format,judge,grounding]", "judge.url=http://127.0.0.1:9/v1",
                                 "judge.model=j", "grounding.model=pathoclip:demo"])
    assert cfg.resolved().reward_weights == [0.1, 0.9, 0.1] and cfg.grounding.model == "pathoclip:demo"


def test_evaluation_uses_the_same_judge(stub, tmp_path):
    from evaluation.generate import Completion
    from evaluation.run import grade_rows, make_judge

    samples = [{"id": "1", "question": "Describe.", "answer": "sheets of lymphocytes", "kind": "open",
                "options": [], "images": []},
               {"id": "2", "question": "Dx?", "answer": "A", "kind": "mcq", "options": ["x", "y"], "images": []}]
    completions = [Completion("<think>t</think><answer>lymphoid sheets</answer>", 9),
                   Completion("<think>t</think><answer>A</answer>", 9)]
    judge = make_judge(stub.url, "ok")
    assert isinstance(judge, Judge)
    rows = grade_rows(samples, completions, "cot", judge)
    assert [(r["score"], r["correct"]) for r in rows] == [(0.8, True), (1.0, True)]
    assert rows[0]["judge_failed"] is False and "judge_failed" not in rows[1]
    failing = make_judge(Judge(judge_cfg(stub, "malformed")))
    row = grade_rows(samples[:1], completions[:1], "cot", failing)[0]
    assert row["judge_failed"] is True and row["score"] == pytest.approx(0.4)  # token F1 kept, flagged
    with pytest.raises(ValueError, match="--judge-model"):
        make_judge(stub.url)
