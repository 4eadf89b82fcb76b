"""Wilson intervals, breakdowns, and a grading regression table run through evaluation's grading path."""
import math

import pytest

from evaluation.generate import Completion
from evaluation.metrics import markdown_summary, summarize, wilson_interval
from evaluation.run import grade_rows, load_callable

OPTS = ["Adenocarcinoma", "Lymphoma", "Normal tissue", "Sarcoma"]
# (kind, reference, options, completion, correct, score, format_ok) -- one comment per case
TABLE = [
    ("mcq", "B", OPTS, "<think>atypical lymphoid cells</think><answer>B</answer>", True, 1.0, True),  # plain letter
    ("mcq", "B", OPTS, "<think>x</think><answer>(b)</answer>", True, 1.0, True),  # lower case in brackets
    ("mcq", "B", OPTS, "<think>x</think><answer>Lymphoma</answer>", True, 1.0, True),  # option text for letter
    ("mcq", "B", OPTS, "<think>x</think><answer>A</answer>", False, 0.0, True),  # wrong letter
    ("mcq", "B", OPTS, "<think>x</think><answer>A or B</answer>", False, 0.0, True),  # hedging is wrong
    ("mcq", "B", OPTS, "<answer>B</answer>", True, 1.0, False),  # right, but no think block
    ("mcq", "B", OPTS, "The answer is B", False, 0.0, False),  # no answer tags: not rescued
    ("mcq", "B", OPTS, "<think>x</think><answer>B</answer><answer>C</answer>", False, 0.0, False),  # two answers
    ("yesno", "yes", [], "<think>necrosis seen</think><answer>Yes</answer>", True, 1.0, True),  # case-insensitive
    ("yesno", "no", [], "<think>x</think><answer>yes</answer>", False, 0.0, True),  # wrong
    ("yesno", "no", [], "<think>x</think><answer>yes and no</answer>", False, 0.0, True),  # both is wrong
    ("open", "granulomatous inflammation", [], "<think>x</think><answer>Granulomatous inflammation.</answer>",
     True, 1.0, True),  # exact after normalisation
    ("open", "granulomatous inflammation", [], "<think>x</think><answer>chronic inflammation</answer>",
     False, 2 * 0.5 * 0.5 / (0.5 + 0.5), True),  # partial token F1 = 0.5
]


def sample(i, kind, answer, options, subset=""):
    return {"id": str(i), "images": [], "question": "q?", "options": options, "answer": answer, "kind": kind,
            "subset": subset}


def test_grading_regression_table():
    samples = [sample(i, k, a, o) for i, (k, a, o, *_rest) in enumerate(TABLE)]
    rows = grade_rows(samples, [Completion(t[3], 7) for t in TABLE], "cot")
    got = [(r["correct"], pytest.approx(r["score"]), r["format_ok"]) for r in rows]
    assert got == [(c, s, f) for *_head, c, s, f in TABLE]


def echo_judge(question, prediction, reference):
    return 1.0 if "inflammation" in prediction else 0.0


def test_judge_hook_replaces_f1_for_open_questions():
    judge = load_callable(f"{__name__}:echo_judge")  # judges are given by dotted path on the CLI
    samples = [sample(0, "open", "granulomatous inflammation", []), sample(1, "mcq", "A", OPTS)]
    completions = [Completion("<think>x</think><answer>chronic inflammation</answer>", 5),
                   Completion("<think>x</think><answer>B</answer>", 5)]
    rows = grade_rows(samples, completions, "cot", judge)
    assert [(r["correct"], r["score"]) for r in rows] == [(True, 1.0), (False, 0.0)]  # mcq untouched by judge


def test_load_callable_dotted_paths():
    assert load_callable("math:sqrt") is math.sqrt
    assert load_callable("os.path.join").__name__ == "join"
    with pytest.raises(ValueError, match="cannot load callable 'nope.mod:f'"):
        load_callable("nope.mod:f")


def test_wilson_interval_known_values():
    # 8/10 -> [0.4902, 0.9433] (Wilson 1927; the textbook example)
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 0) == (0.0, 0.0)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2  # never a zero-width interval at 0%
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(1 - hi)  # symmetric around 0.5


@pytest.mark.parametrize("n", [20, 160, 400, 1000])
def test_wilson_interval_contains_the_estimate_at_the_extremes(n):
    # at n = 400 the float formula gave a lower bound of 8.7e-19 for 0 correct, above the estimate itself,
    # and the report's error-bar plot crashed on the negative error (found in the full demo run)
    assert wilson_interval(0, n)[0] == 0.0
    assert wilson_interval(n, n)[1] == 1.0


def test_summarize_breaks_down_by_subset_and_kind():
    rows = [
        {"correct": True, "score": 1.0, "format_ok": True, "n_tokens": 10, "subset": "CT", "kind": "mcq"},
        {"correct": False, "score": 0.0, "format_ok": True, "n_tokens": 20, "subset": "CT", "kind": "mcq"},
        {"correct": True, "score": 1.0, "format_ok": False, "n_tokens": 30, "subset": "MRI", "kind": "yesno"},
        {"correct": True, "score": 0.5, "format_ok": False, "n_tokens": 40, "subset": "", "kind": "open"},
    ]
    m = summarize(rows)
    assert m["overall"]["n"] == 4 and m["overall"]["accuracy"] == 0.75
    assert m["overall"]["format_rate"] == 0.5 and m["overall"]["mean_tokens"] == 25.0
    assert m["overall"]["mean_score"] == pytest.approx(2.5 / 4)
    assert {k: v["accuracy"] for k, v in m["by_subset"].items()} == {"(none)": 1.0, "CT": 0.5, "MRI": 1.0}
    assert {k: v["n"] for k, v in m["by_kind"].items()} == {"mcq": 2, "open": 1, "yesno": 1}
    assert m["by_subset"]["CT"]["ci95"] == list(wilson_interval(1, 2))
    md = markdown_summary({**m, "suite": "omnimed", "model": "rl:ct", "template": "cot", "max_new_tokens": 64})
    assert "| overall | 4 | 75.0 |" in md and "| CT | 2 | 50.0 |" in md and "## by question kind" in md
