"""The paired stage-vs-stage comparison behind "each step by a margin the CI supports"."""
import random

import pytest

from evaluation.metrics import paired_comparison, wilson_interval


def outcomes(both, fixed, broken, neither):
    """before/after correctness maps with the given 2x2 counts (ids shuffled so order cannot matter)."""
    cells = [(True, True)] * both + [(False, True)] * fixed + [(True, False)] * broken + [(False, False)] * neither
    random.Random(0).shuffle(cells)
    return ({f"q{i}": b for i, (b, _) in enumerate(cells)}, {f"q{i}": a for i, (_, a) in enumerate(cells)})


def test_counts_difference_and_direction():
    before, after = outcomes(80, 20, 4, 56)
    c = paired_comparison(before, after)
    assert (c["n"], c["fixed"], c["broken"]) == (160, 20, 4)
    assert c["difference"] == pytest.approx(16 / 160)
    lo, hi = c["ci95"]
    assert 0 < lo < c["difference"] < hi and c["supported"]
    swapped = paired_comparison(after, before)  # the mirror image: same interval, negated
    assert swapped["ci95"] == pytest.approx([-hi, -lo]) and not swapped["supported"]


def test_pairing_is_sharper_than_comparing_two_wilson_intervals():
    # +7.5 points with only fixes: the separate Wilson intervals overlap, the paired interval excludes zero
    before, after = outcomes(90, 12, 0, 58)
    c = paired_comparison(before, after)
    assert wilson_interval(102, 160)[0] < wilson_interval(90, 160)[1]  # unpaired view: overlapping
    assert c["supported"] and c["ci95"][0] > 0.03


def test_no_change_or_balanced_changes_is_not_supported():
    same, _ = outcomes(100, 0, 0, 60)
    assert paired_comparison(same, same)["supported"] is False
    assert paired_comparison(same, same)["mcnemar_p"] == 1.0
    before, after = outcomes(80, 15, 15, 50)
    c = paired_comparison(before, after)
    assert c["difference"] == 0 and c["ci95"][0] < 0 < c["ci95"][1] and not c["supported"]


def test_mcnemar_p_matches_the_exact_binomial_test():
    stats = pytest.importorskip("scipy.stats")
    for fixed, broken in ((20, 4), (7, 3), (30, 29), (1, 0)):
        before, after = outcomes(50, fixed, broken, 40)
        expected = stats.binomtest(min(fixed, broken), fixed + broken, 0.5).pvalue
        assert paired_comparison(before, after)["mcnemar_p"] == pytest.approx(expected)


def test_interval_agrees_with_a_paired_bootstrap():
    before, after = outcomes(70, 25, 10, 55)
    c = paired_comparison(before, after)
    ids = sorted(before)
    rng = random.Random(1)
    diffs = sorted(sum(after[i] - before[i] for i in (rng.choice(ids) for _ in ids)) / len(ids) for _ in range(4000))
    assert c["ci95"][0] == pytest.approx(diffs[100], abs=0.015)
    assert c["ci95"][1] == pytest.approx(diffs[3899], abs=0.015)


def test_different_question_sets_are_refused():
    with pytest.raises(ValueError, match="same questions"):
        paired_comparison({"a": True, "b": False}, {"a": True, "c": True})
