"""Grading table tests: one case per line, one comment per case (the RL reward and evaluation share these)."""

import pytest

from corpora.grading import (MAX_COMPLETION_CHARS, answer_follows_reasoning, extract_answer, format_ok, grade,
                             match_option, reasoning_conclusion, token_f1)

OPTS = ["normal colonic mucosa", "adenocarcinoma", "lymphoma", "fibrous stroma"]
THINK = "<think>nuclei are dense and large</think>"

MCQ_CASES = [
    # (completion, expected correct)  -- reference answer is "B" (adenocarcinoma)
    (f"{THINK}<answer>B</answer>", True),  # plain letter
    (f"{THINK}<answer> B </answer>", True),  # R1-V style padding
    (f"{THINK}<answer>b</answer>", True),  # lower case letter
    (f"{THINK}<answer>B.</answer>", True),  # letter with full stop
    (f"{THINK}<answer>(B)</answer>", True),  # parenthesised letter
    (f"{THINK}<answer>B) adenocarcinoma</answer>", True),  # letter plus its option text
    (f"{THINK}<answer>B. Adenocarcinoma.</answer>", True),  # letter plus text, other case and punctuation
    (f"{THINK}<answer>Answer: B</answer>", True),  # lead-in phrase before the letter
    (f"{THINK}<answer>adenocarcinoma</answer>", True),  # option text instead of the letter
    (f"{THINK}<answer>ADENOCARCINOMA</answer>", True),  # option text, upper case
    (f"{THINK}<answer>an adenocarcinoma</answer>", True),  # option text with an article
    ("<ANSWER>B</ANSWER>", True),  # tag case does not matter (correctness ignores format)
    (f"{THINK}<answer>C</answer>", False),  # wrong letter
    (f"{THINK}<answer>lymphoma</answer>", False),  # wrong option text
    (f"{THINK}<answer>B) lymphoma</answer>", False),  # letter contradicts the text: two answers in one
    (f"{THINK}<answer></answer>", False),  # empty answer
    (f"{THINK}<answer>   </answer>", False),  # whitespace-only answer
    (f"{THINK}<answer>A, B, C, D</answer>", False),  # listing all letters
    (f"{THINK}<answer>A B C D</answer>", False),  # listing all letters without commas
    (f"{THINK}<answer>B or C</answer>", False),  # hedging between two letters
    (f"{THINK}<answer>{', '.join(OPTS)}</answer>", False),  # listing every option's text
    (f"{THINK}<answer>B</answer><answer>C</answer>", False),  # several answer tags
    (f"{THINK}<answer>B</answer><answer>B</answer>", False),  # several tags, even if they agree
    (f"{THINK}<answer>B<answer>C</answer>", False),  # a stray opening tag
    (f"{THINK}<answer>B", False),  # unclosed tag
    ("The answer is B.", False),  # answer outside the tags
    (f"{THINK} B", False),  # answer outside the tags after reasoning
    ("<think><answer>B</answer></think> C", True),  # the only span counts, text outside is ignored
    (f"{THINK}<answer>E</answer>", False),  # letter outside the option range
    (f"{THINK}<answer>adeno</answer>", False),  # partial option text is not an option
    (f"{THINK}<answer>a</answer>", False),  # letter A (reference is B)
    ("", False),  # empty completion
    (f"{THINK}<answer>B</answer>" + " " * MAX_COMPLETION_CHARS, False),  # huge output
    (f"{THINK}<answer>{'B ' * 600}</answer>", False),  # huge answer span
]


@pytest.mark.parametrize("completion,correct", MCQ_CASES)
def test_mcq_table(completion, correct):
    g = grade(completion, "B", "mcq", OPTS)
    assert g.correct is correct
    assert g.score == float(correct)


YESNO_CASES = [
    # (completion, reference, expected correct)
    (f"{THINK}<answer>yes</answer>", "yes", True),  # plain yes
    (f"{THINK}<answer>Yes.</answer>", "yes", True),  # capitalised with full stop
    (f"{THINK}<answer>Yes, glands are present</answer>", "yes", True),  # yes with a short justification
    (f"{THINK}<answer>no</answer>", "no", True),  # plain no
    (f"{THINK}<answer>not present, so no</answer>", "no", True),  # "not" is not a second answer
    (f"{THINK}<answer>no</answer>", "yes", False),  # wrong
    (f"{THINK}<answer>yes or no</answer>", "yes", False),  # both answers
    (f"{THINK}<answer>yes/no</answer>", "no", False),  # both answers, slash
    (f"{THINK}<answer>maybe</answer>", "no", False),  # neither
    (f"{THINK}<answer></answer>", "no", False),  # empty
    ("yes", "yes", False),  # outside the tags
    (f"{THINK}<answer>yes</answer><answer>no</answer>", "yes", False),  # several tags
]


@pytest.mark.parametrize("completion,reference,correct", YESNO_CASES)
def test_yesno_table(completion, reference, correct):
    assert grade(completion, reference, "yesno").correct is correct


OPEN_CASES = [
    # (completion, reference, expected score)
    ("<answer>Adenocarcinoma.</answer>", "adenocarcinoma", 1.0),  # normalised exact match
    ("<answer>the lymphoma</answer>", "lymphoma", 1.0),  # articles dropped
    ("<answer>colonic adenocarcinoma</answer>", "adenocarcinoma", 2 / 3),  # F1: p=1/2, r=1
    ("<answer>lymphoma</answer>", "adenocarcinoma", 0.0),  # no overlap
    ("<answer></answer>", "adenocarcinoma", 0.0),  # empty
]


@pytest.mark.parametrize("completion,reference,score", OPEN_CASES)
def test_open_table(completion, reference, score):
    g = grade(completion, reference, "open", template="nothink")
    assert g.score == pytest.approx(score)
    assert g.correct is (score == 1.0)


FORMAT_CASES = [
    # (text, template, expected)
    ("<think>dense nuclei</think><answer>B</answer>", "cot", True),  # canonical cot
    ("  <think>x</think>\n<answer>B</answer>\n", "cot", True),  # surrounding whitespace allowed
    ("<answer>B</answer>", "cot", False),  # cot without reasoning
    ("<think></think><answer>B</answer>", "cot", False),  # empty reasoning
    ("<think>x</think><answer>B</answer> trailing", "cot", False),  # text after the answer
    ("<think>x</think><think>y</think><answer>B</answer>", "cot", False),  # two think spans
    ("<think>x</think><answer></answer>", "cot", False),  # empty answer
    ("<answer>B</answer>", "nothink", True),  # canonical nothink
    ("<think>x</think><answer>B</answer>", "nothink", False),  # nothink must not think
    ("<think>dense nuclei; large nuclei</think><answer>B</answer>", "chain_of_draft", True),  # short drafts
    (f"<think>{'word ' * 30}</think><answer>B</answer>", "chain_of_draft", False),  # a step is not a draft
    ("Pink stroma with sparse nuclei.", "caption", True),  # a caption is plain text
    ("<answer>x</answer>", "caption", False),  # a caption carries no tags
    ("", "caption", False),  # empty caption
]


@pytest.mark.parametrize("text,template,expected", FORMAT_CASES)
def test_format_table(text, template, expected):
    assert format_ok(text, template) is expected


def test_grade_reports_extraction_and_format():
    g = grade("<think>r</think><answer> (B) </answer>", "B", "mcq", OPTS)
    assert (g.correct, g.score, g.extracted, g.format_ok) == (True, 1.0, "(B)", True)
    assert grade("<answer>B</answer>", "B", "mcq", OPTS).format_ok is False  # cot expects reasoning
    assert grade("<answer>B</answer>", "B", "mcq", OPTS, template="nothink").format_ok is True


def test_reference_may_be_a_solution_string_or_option_text():
    # R1-V style `solution` columns and option text as reference both grade the same as the letter.
    assert grade("<answer>B</answer>", "<answer> B </answer>", "mcq", OPTS).correct
    assert grade("<answer>B</answer>", "adenocarcinoma", "mcq", OPTS).correct


def test_mcq_without_options_accepts_letters_only():
    # R1-V problems embed the options in the question text: only the letter can be checked.
    assert grade("<answer>(c)</answer>", "C", "mcq").correct
    assert not grade("<answer>c lymphoma</answer>", "C", "mcq").correct  # no separator, no option list


def test_extract_answer_and_helpers():
    assert extract_answer("<think>a</think><answer>\n C \n</answer>") == "C"
    assert extract_answer(None) is None
    assert match_option("option d", OPTS) == "D"
    assert token_f1("a b c", "c b a") == 1.0


def test_unknown_kind_and_template_fail_loudly():
    with pytest.raises(ValueError, match="unknown question kind 'essay'"):
        grade("<answer>x</answer>", "x", "essay")
    with pytest.raises(ValueError, match="unknown template 'poem'"):
        format_ok("<answer>x</answer>", "poem")


def test_oversized_completion_is_refused_before_any_pattern_runs(monkeypatch):
    # RL grades every sampled completion: an over-long one (a runaway generation) must be scored 0 without a
    # regex scan over it. Asserted by behaviour (no pattern is touched), not by a wall-clock bound, which
    # failed on a loaded machine.
    import re

    import corpora.grading as grading

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"a pattern ({name}) ran over an oversized completion")

    for name, value in list(vars(grading).items()):
        if isinstance(value, re.Pattern):
            monkeypatch.setattr(grading, name, Untouchable())
    monkeypatch.setattr(grading, "re", Untouchable())
    huge = "x" * (MAX_COMPLETION_CHARS + 1)
    for kind, answer, options in (("mcq", "B", OPTS), ("yesno", "yes", ()), ("open", "lymphoma", ())):
        result = grade(huge, answer, kind, options)
        assert result.correct is False and result.score == 0.0 and result.format_ok is False


@pytest.mark.parametrize(
    "completion, kind, options, concluded",
    [
        ("<think>sparse... then very dense</think><answer>D</answer>", "mcq", ["sparse", "dense", "x", "very dense"], "D"),
        ("<think>very dense? no: dense.</think>", "mcq", ["sparse", "dense", "x", "very dense"], "B"),
        ("<think>Crowded irregular glands!</think>", "mcq", ["regular round glands", "crowded irregular glands"], "B"),
        ("<think>densely packed</think>", "mcq", ["dense"], None),  # whole words only
        ("<answer>A</answer>", "mcq", ["a"], None),  # no reasoning span
        ("<think>glands, so yes; malignant? no</think>", "yesno", [], "no"),
        ("<think>tubular adenoma</think>", "open", [], None),
        ("<think>" + "dense " * 5000 + "</think>", "mcq", ["dense"], None),  # over MAX_COMPLETION_CHARS
    ],
)
def test_reasoning_conclusion(completion, kind, options, concluded):
    assert reasoning_conclusion(completion, kind, options) == concluded


def test_answer_follows_reasoning():
    opts = ["normal", "lymphoma"]
    assert answer_follows_reasoning("<think>so lymphoma</think><answer>B</answer>", "mcq", opts) is True
    assert answer_follows_reasoning("<think>so lymphoma</think><answer>A</answer>", "mcq", opts) is False
    assert answer_follows_reasoning("<think>so lymphoma</think>", "mcq", opts) is False
    assert answer_follows_reasoning("<think>x</think><answer>y</answer>", "open") is None
