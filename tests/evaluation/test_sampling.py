"""pass@k against hand-computed cases, majority voting in canonical answer form, the decoding settings."""
import math

import pytest

from evaluation.distributed import interleave, shard
from evaluation.generate import Decoding
from evaluation.sampling import ks_for, majority_index, pass_at_k, sampling_summary


def test_pass_at_k_hand_computed():
    # n=5 samples, c=2 right, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)  # pass@1 is the share of right samples
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 1, 5) == 1.0
    assert pass_at_k(4, 3, 2) == 1.0  # only one wrong answer: any two drawn include a right one
    # large n: the product form agrees with the binomial form and does not overflow
    assert pass_at_k(200, 7, 10) == pytest.approx(1 - math.comb(193, 10) / math.comb(200, 10))
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 4)


def test_ks_reported():
    assert ks_for(1) == [1] and ks_for(5) == [1, 2, 4, 5] and ks_for(8) == [1, 2, 4, 8]


def test_majority_counts_canonical_answers():
    opts = ["Adenocarcinoma", "Lymphoma", "Normal"]
    # "B", "(b)" and "Lymphoma" are one vote for B; A twice; None is not a vote
    assert majority_index(["A", "B", None, "(b)", "A", "Lymphoma"], "mcq", opts) == 1
    assert majority_index(["A", "B"], "mcq", opts) == 0  # a tie goes to the answer given first
    assert majority_index([None, None], "yesno") is None
    assert majority_index(["no", "Yes.", "yes"], "yesno") == 1
    assert majority_index(["Chronic inflammation", "granuloma", "chronic  inflammation."], "open") == 0


def test_sampling_summary_averages_over_questions():
    def row(*correct, majority):
        return {"samples": [{"correct": c} for c in correct], "majority_correct": majority}

    rows = [row(True, False, False, True, majority=True), row(False, False, False, False, majority=False)]
    s = sampling_summary(rows)
    assert s["n_samples"] == 4
    assert s["pass@1"] == pytest.approx((2 / 4 + 0) / 2)
    assert s["pass@2"] == pytest.approx((1 - math.comb(2, 2) / math.comb(4, 2)) / 2)
    assert s["pass@4"] == pytest.approx(0.5) and s["majority@4"] == 0.5
    assert sampling_summary([{"correct": True}]) == {}  # greedy rows only: nothing to report


def test_decoding_is_validated_and_recorded():
    assert Decoding(max_new_tokens=9).record() == {"mode": "greedy", "max_new_tokens": 9}
    assert Decoding(samples=4, temperature=0.7, top_p=0.9).record() == {
        "mode": "sample", "samples": 4, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 0, "max_new_tokens": 256}
    with pytest.raises(ValueError, match="needs temperature > 0"):
        Decoding(samples=4, temperature=0)
    with pytest.raises(ValueError, match="top_p must be in"):
        Decoding(top_p=0)


def test_shard_and_interleave_are_inverse():
    items = list(range(11))
    for world in (1, 2, 3, 4):
        parts = [shard(items, r, world) for r in range(world)]
        assert sorted(x for p in parts for x in p) == items  # every question once
        assert interleave(parts) == items
