"""Reward functions under adversarial completions: always a float, never an exception, never a reward for a wrong
or hedged answer, and fast on huge inputs (the RL loop grades thousands of completions per step)."""
import math
import time

import pytest

from stages.rl.rewards import AccuracyReward, FormatReward, LengthAwareAccuracyReward, build_rewards

OPTIONS = ["gland", "stroma", "fat", "muscle"]
MCQ = {"answer": ["B"], "kind": ["mcq"], "options": [OPTIONS], "solution": ["<answer> B </answer>"]}
YESNO = {"answer": ["yes"], "kind": ["yesno"], "options": [[]], "solution": ["<answer> yes </answer>"]}
OPEN = {"answer": ["glandular tissue"], "kind": ["open"], "options": [[]], "solution": ["<answer> glandular tissue </answer>"]}
MB = 1_000_000
GOOD = "<think>round lumens lined by epithelium</think><answer>B</answer>"

# (completion, columns) pairs that must earn 0 accuracy; one line each says why
ADVERSARIAL = [
    ("", MCQ),  # empty
    (None, MCQ),  # None instead of text
    (" \n\t ", MCQ),  # whitespace only
    ("B" * MB, MCQ),  # 1 MB of the right letter, no tags
    ("x" * (10 * MB) + "<answer>B</answer>", MCQ),  # 10 MB of padding before a right answer: degenerate, not graded
    ("<answer>B</answer>" * 1000, MCQ),  # 1000 answer tags
    ("<answer>" * 1000 + "B" + "</answer>" * 1000, MCQ),  # 1000 nested tags
    ("<answer><answer>B</answer></answer>", MCQ),  # nested tags
    ("<answer>A B C D</answer>", MCQ),  # every option listed
    ("<answer>A, B, C or D</answer>", MCQ),  # every option listed, in prose
    ("<answer>B or C</answer>", MCQ),  # a hedge between two options
    ("<answer>B) fat</answer>", MCQ),  # a letter that names another option's text
    ("<answer>E</answer>", MCQ),  # a letter beyond the options
    ("<answer>A</answer>", MCQ),  # simply wrong
    ("<answer>\ud800B</answer>", MCQ),  # lone surrogate
    ("<answer>B\udcff</answer>", MCQ),  # undecodable byte smuggled in as a surrogate escape
    ("<answer>\ufffd\ufffd</answer>", MCQ),  # replacement characters
    ("<answer>B\x00</answer>", MCQ),  # NUL after the letter
    ("<answer>\x1b[31mB\x1b[0m</answer>", MCQ),  # terminal escape codes around the letter
    ("<answer>\u200bB\u200b</answer>", MCQ),  # zero-width spaces around the letter
    ("<answer>" + "B" * 5000 + "</answer>", MCQ),  # an overlong answer span
    ("</answer>B<answer>", MCQ),  # tags in the wrong order
    ("<answer>yes no</answer>", YESNO),  # both yes and no
    ("<answer>yes</answer>" * 2, YESNO),  # two answers
    ("<answer>" + "glandular tissue " * 10_000 + "</answer>", OPEN),  # the reference repeated to farm token-F1
    ([{"role": "assistant"}], MCQ),  # chat message without content
    ([{"role": "assistant", "content": None}], MCQ),  # content None
    ([{"role": "assistant", "content": [{"type": "text"}]}], MCQ),  # content part without text
    ([{"role": "assistant", "content": [{"type": "image"}]}], MCQ),  # only an image part
    ([], MCQ),  # empty message list
    ([{"role": "user", "content": "<answer>B</answer>"}, {"role": "assistant", "content": ""}], MCQ),  # user's text
    ({"content": 5}, MCQ),  # a dict with a number for content
    (12345, MCQ),  # not text at all
]


def _rewards():
    return [FormatReward("cot"), AccuracyReward("cot"), LengthAwareAccuracyReward(0, 1024, template="cot"),
            *build_rewards(["format", "accuracy"], template="nothink")]


@pytest.mark.parametrize(("completion", "columns"), ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_completion_gets_a_float_and_no_credit(completion, columns):
    for reward in _rewards():
        [value] = reward([completion], **columns)
        assert isinstance(value, float) and math.isfinite(value), (reward.__name__, value)
        if "accuracy" in reward.__name__:
            assert value <= 0.0, f"{reward.__name__} paid {value} for {str(completion)[:80]!r}"


def test_the_right_answer_still_earns_full_reward():
    # the cases above fail only if grading is robust, not because every reward is stuck at 0
    assert AccuracyReward()([GOOD], **MCQ) == [1.0]
    assert FormatReward()([GOOD], **MCQ) == [1.0]
    assert LengthAwareAccuracyReward()([[{"role": "assistant", "content": GOOD}]], **MCQ) == [1.0]
    assert AccuracyReward()(["<think>t</think><answer>glandular tissue</answer>"], **OPEN) == [1.0]


def test_a_batch_mixing_hostile_and_good_completions_keeps_order():
    completions = [c for c, cols in ADVERSARIAL if cols is MCQ] + [GOOD]
    columns = {k: v * len(completions) for k, v in MCQ.items()}
    scores = AccuracyReward()(completions, **columns)
    assert scores == [0.0] * (len(completions) - 1) + [1.0]


@pytest.mark.parametrize("size", [MB, 10 * MB])
@pytest.mark.parametrize("filler", ["a", "ab "])  # one giant word; millions of words (a naive split() allocates each)
def test_huge_completions_are_graded_fast(size, filler):
    completion = "<think>" + filler * (size // len(filler)) + "</think><answer>B</answer>"
    # CPU time of this process, not wall time: a scan over 10 MB costs seconds of CPU, while other work on a
    # loaded machine inflates only the wall clock (the wall-clock form failed under load).
    start = time.process_time()
    for reward in _rewards():
        reward([completion], **MCQ)
    elapsed = time.process_time() - start
    assert elapsed < 0.5, f"{len(_rewards())} rewards over a {size}-character completion took {elapsed:.2f} s"


def test_soft_overlong_punishment_on_huge_token_counts():
    [punish] = build_rewards(["soft_overlong"], max_completion_length=256, overlong_cache=64)
    scores = punish(completion_ids=[[1] * 10, [1] * 224, [1] * 10**6, []])
    assert scores == [0.0, -0.5, -1.0, 0.0]
