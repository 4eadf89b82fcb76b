"""Rewards in TRL's signature, graded by corpora.grading: table tests, one comment per case."""
import pytest

from stages.rl.config import RLConfig
from stages.rl.rewards import (
    AccuracyReward,
    ConsistencyReward,
    LengthAwareAccuracyReward,
    accuracy_reward,
    build_rewards,
    completion_text,
    format_reward,
    load_reward,
    soft_overlong_reward,
)

GOOD = "<think>dense atypical glands</think><answer>B</answer>"


def chat(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    "completion, expected",
    [
        (GOOD, 1.0),  # think then answer
        (chat(GOOD), 1.0),  # the same as a chat message list
        ("<answer>B</answer>", 0.0),  # cot template needs the <think> block
        ("<think></think><answer>B</answer>", 0.0),  # empty reasoning
        ("<think>x</think><answer>B</answer><answer>C</answer>", 0.0),  # two answers
        ("", 0.0),  # empty completion
        (None, 0.0),  # missing completion
        ("<think>" + "x" * 100_000 + "</think><answer>B</answer>", 0.0),  # huge: refused without regex work
        ("\x00\uffff<think>\x07</think>", 0.0),  # control characters, no answer
    ],
)
def test_format_reward_table(completion, expected):
    assert format_reward([completion]) == [expected]


MCQ = dict(solution=["<answer> B </answer>"], options=[["normal", "adenocarcinoma", "lymphoma"]])


@pytest.mark.parametrize(
    "completion, columns, expected",
    [
        (GOOD, MCQ, 1.0),  # right letter
        ("<think>t</think><answer>C</answer>", MCQ, 0.0),  # wrong letter
        ("<think>t</think><answer>adenocarcinoma</answer>", MCQ, 1.0),  # option text instead of the letter
        ("<think>t</think><answer>B or C</answer>", MCQ, 0.0),  # hedging is wrong
        ("B", MCQ, 0.0),  # no answer tags: nothing rescued
        (chat(GOOD), dict(solution=["<answer> B </answer>"]), 1.0),  # letter-only solution -> mcq
        ("<answer>yes</answer>", dict(solution=["<answer> yes </answer>"]), 1.0),  # yes/no from the solution
        ("<answer>no</answer>", dict(solution=["<answer> yes </answer>"]), 0.0),  # yes/no wrong
        ("<answer>B</answer>", dict(answer=["B"], kind=["mcq"], options=[["a", "b"]]), 1.0),  # qa columns win
        ("<answer>tubular adenoma</answer>", dict(solution=["<answer> tubular adenoma </answer>"]), 1.0),  # open exact
        ("<answer>adenoma</answer>", dict(solution=["<answer> tubular adenoma </answer>"]), pytest.approx(2 / 3)),  # open F1
        ("", MCQ, 0.0),  # empty completion
        ("x" * 50_000, MCQ, 0.0),  # huge completion
    ],
)
def test_accuracy_reward_table(completion, columns, expected):
    assert accuracy_reward([completion], **columns) == [expected]


def test_accuracy_needs_ground_truth():
    with pytest.raises(ValueError, match="needs a `solution` or `answer` column"):
        AccuracyReward()(["<answer>B</answer>"])


@pytest.mark.parametrize(
    "completion, ids_len, expected",
    [
        (GOOD, 10, 1.0),  # correct and inside [5, 20]
        (GOOD, 4, -1.0),  # correct but too short
        (GOOD, 21, -1.0),  # correct but too long
        ("<think>t</think><answer>C</answer>", 10, -1.0),  # wrong, length fine
        ("", 10, -1.0),  # empty
    ],
)
def test_length_aware_accuracy_table(completion, ids_len, expected):
    reward = LengthAwareAccuracyReward(min_length=5, max_length=20)
    assert reward([completion], completion_ids=[[0] * ids_len], **MCQ) == [expected]


def test_length_aware_counts_words_without_ids():
    reward = LengthAwareAccuracyReward(min_length=1, max_length=2)
    assert reward(["<think>a b c</think> <answer>B</answer>"], **MCQ) == [-1.0]  # 3 words > 2


@pytest.mark.parametrize(
    "length, expected",
    [
        (80, 0.0),  # at L_max - L_cache: no punishment
        (50, 0.0),  # well inside
        (90, -0.5),  # halfway through the cache: (80 - 90) / 20
        (100, -1.0),  # exactly L_max: end of the linear ramp
        (101, -1.0),  # beyond L_max
    ],
)
def test_soft_overlong_three_branches(length, expected):
    reward = soft_overlong_reward(max_completion_length=100, cache_length=20)
    assert reward(completion_ids=[[1] * length]) == [pytest.approx(expected)]


def test_soft_overlong_rejects_a_cache_longer_than_lmax():
    with pytest.raises(ValueError, match=r"overlong cache \(200\)"):
        soft_overlong_reward(100, 200)


def test_completion_text_shapes():
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]) == "ab"
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]) == "r"


def test_custom_reward_by_dotted_path():
    fn = load_reward("stages.rl.rewards:format_reward")
    assert fn([GOOD]) == [1.0]
    with pytest.raises(ValueError, match="must look like 'package.module:function'"):
        load_reward("stages.rl.rewards.format_reward")
    with pytest.raises(ValueError, match="cannot load reward 'stages.rl.rewards:nope'"):
        load_reward("stages.rl.rewards:nope")


def test_build_rewards_from_config_names_and_weights():
    cfg = RLConfig(algorithm="dapo", max_completion_length=100).resolved()
    fns = build_rewards(cfg.rewards, max_completion_length=100, overlong_cache=cfg.overlong_cache)
    assert [f.__name__ for f in fns] == ["format_reward", "accuracy_reward", "soft_overlong_punishment_reward"]
    assert cfg.reward_weights == [0.1, 0.9, 1.0] and cfg.overlong_cache == 25
    with pytest.raises(ValueError, match="unknown reward 'acc'"):
        build_rewards(["acc"])


DENSITY = ["sparse", "moderate", "dense", "very dense"]
DENSITY_MCQ = dict(answer=["D"], kind=["mcq"], options=[DENSITY])


@pytest.mark.parametrize(
    "completion, columns, expected",
    [
        ("<think>Very dense nuclei. So the answer is very dense.</think><answer>D</answer>", DENSITY_MCQ, 1.0),
        # "dense" ends where "very dense" ends; the longer option wins the tie, so this one says C, answers D:
        ("<think>Very dense nuclei? No. So the answer is dense.</think><answer>D</answer>", DENSITY_MCQ, 0.0),
        # the last option named decides ("sparse" came first):
        ("<think>Sparse? No, the nuclei are dense.</think><answer>C</answer>", DENSITY_MCQ, 1.0),
        ("<think>nothing about density</think><answer>D</answer>", DENSITY_MCQ, 0.0),  # reasoning names no option
        ("<think>So the answer is very dense.</think>", DENSITY_MCQ, 0.0),  # no answer
        ("<think>So the answer is very dense.</think><answer>very dense</answer>", DENSITY_MCQ, 1.0),  # option text
        (chat("<think>Glands are present, so yes.</think><answer>yes</answer>"),
         dict(answer=["no"], kind=["yesno"], options=[[]]), 1.0),  # yes/no: agrees, even though wrong
        ("<think>No glands... yes, it is malignant.</think><answer>no</answer>",
         dict(answer=["no"], kind=["yesno"], options=[[]]), 0.0),  # the last yes/no said decides
        ("<think>t</think><answer>adenoma</answer>", dict(solution=["<answer> tubular adenoma </answer>"]), None),
        # open questions have no closed answer set: unscored (TRL's NaN)
    ],
)
def test_consistency_reward_table(completion, columns, expected):
    assert ConsistencyReward()([completion], **columns) == [expected]


def test_consistency_reward_from_config_and_needs_a_reasoning_template():
    cfg = RLConfig(algorithm="dapo", rewards=["format", "accuracy", "consistency"]).resolved()
    assert cfg.reward_weights == [0.1, 0.9, 0.5]
    assert [f.__name__ for f in build_rewards(cfg.rewards)] == ["format_reward", "accuracy_reward",
                                                                 "consistency_reward"]
    with pytest.raises(ValueError, match="no reasoning span"):
        build_rewards(["consistency"], template="nothink")
