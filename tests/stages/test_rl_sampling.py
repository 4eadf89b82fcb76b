"""Dynamic sampling: the group filter, the refill loop and the merge of TRL generation outputs."""
import pytest
import torch

from stages.rl.algos import group_rows, informative_groups, zero_std_fraction
from stages.rl.sampling import collect_informative, merge_rows

G = 4


@pytest.mark.parametrize(
    "group, informative",
    [
        ([1.0, 1.0, 1.0, 1.0], False),  # all correct: zero advantage everywhere
        ([0.0, 0.0, 0.0, 0.0], False),  # all wrong
        ([0.0, 0.0, 0.0, 1.0], True),  # one success is a signal
        ([0.1, 0.1, 0.1, 0.1000001], False),  # float noise below tolerance
        ([float("nan"), 1.0, 1.0, 1.0], False),  # unscorable row ignored; the rest agree
        ([float("nan"), 1.0, 0.0, 1.0], True),  # unscorable row ignored; the rest differ
        ([float("nan")] * 3 + [1.0], False),  # a single finite reward cannot vary
        ([-1.0, 1.0, -1.0, 1.0], True),  # length-aware reward +-1
    ],
)
def test_informative_groups_table(group, informative):
    assert informative_groups(torch.tensor(group), G).tolist() == [informative]


def test_informative_groups_over_a_batch_and_zero_std_fraction():
    rewards = torch.tensor([1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 2, 1, 2, 2], dtype=torch.float)
    assert informative_groups(rewards, G).tolist() == [False, True, False, True]
    assert zero_std_fraction(rewards, G) == 0.5


def test_ragged_rewards_are_refused():
    with pytest.raises(ValueError, match="multiple of num_generations=4"):
        informative_groups(torch.zeros(6), G)


def test_group_rows():
    assert group_rows([0, 2], 2) == [0, 1, 4, 5]


def _feeder(reward_batches):
    """generate() that hands out the given reward batches in order and counts calls."""
    calls = []

    def generate():
        rewards = torch.tensor(reward_batches[len(calls)], dtype=torch.float)
        calls.append(len(calls))
        return f"batch{len(calls) - 1}", rewards

    return generate, calls


def test_keeps_exactly_the_informative_groups_when_the_first_batch_suffices():
    generate, calls = _feeder([[0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 0]])  # groups: yes, no, yes
    kept, stats = collect_informative(generate, G, target_groups=2, max_gen_batches=3)
    assert kept == [("batch0", [0, 2])] and len(calls) == 1
    assert (stats.groups_generated, stats.groups_kept, stats.groups_dropped) == (3, 2, 1)
    assert stats.zero_std_fraction == pytest.approx(1 / 3) and stats.warnings == []


def test_refills_until_the_target_and_trims_the_surplus():
    generate, calls = _feeder([
        [1, 1, 1, 1, 0, 1, 0, 0],  # 1 informative of 2
        [0, 0, 0, 0, 0, 0, 0, 0],  # none
        [1, 0, 1, 0, 0, 1, 1, 1],  # 2 informative, only 1 needed
    ])
    kept, stats = collect_informative(generate, G, target_groups=2, max_gen_batches=5)
    assert kept == [("batch0", [1]), ("batch2", [0])]
    assert len(calls) == 3 and stats.gen_batches == 3
    assert (stats.groups_generated, stats.groups_kept, stats.groups_dropped) == (6, 2, 4)


def test_stops_at_the_limit_when_every_group_is_degenerate():
    generate, calls = _feeder([[1] * 8] * 10)
    kept, stats = collect_informative(generate, G, target_groups=2, max_gen_batches=3)
    assert kept == [] and len(calls) == 3
    assert stats.zero_std_fraction == 1.0
    assert "only 0/2 informative groups after 3 generation batches" in stats.warnings[0]
    assert "skipping this update" in stats.warnings[0]


def test_proceeds_with_a_partial_batch_and_warns():
    generate, _ = _feeder([[0, 1, 0, 0, 1, 1, 1, 1], [1] * 8])
    kept, stats = collect_informative(generate, G, target_groups=2, max_gen_batches=2)
    assert kept == [("batch0", [0])]
    assert "training on what there is" in stats.warnings[0]


def _trl_output(prompt_lens, completion_lens, pad=9, seed=0):
    """A TRL-shaped generation output: left-padded prompts, right-padded completions, one 2x2 image per row."""
    g = torch.Generator().manual_seed(seed)
    B, P, C = len(prompt_lens), max(prompt_lens), max(completion_lens)
    prompt_ids = torch.full((B, P), pad)
    prompt_mask = torch.zeros(B, P, dtype=torch.long)
    completion_ids = torch.full((B, C), pad)
    completion_mask = torch.zeros(B, C, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
        prompt_ids[i, P - p:] = torch.randint(0, 9, (p,), generator=g)
        prompt_mask[i, P - p:] = 1
        completion_ids[i, :c] = torch.randint(0, 9, (c,), generator=g)
        completion_mask[i, :c] = 1
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "old_per_token_logps": torch.randn(B, C, generator=g) * completion_mask,
        "advantages": torch.randn(B, generator=g),
        "num_items_in_batch": completion_mask.sum(),
        "pixel_values": torch.randn(B * 4, 3, generator=g),
        "image_grid_thw": torch.tensor([[1, 2, 2]] * B),
        "num_images": [1] * B,
    }


def test_merge_rows_repads_and_keeps_images_aligned():
    a = _trl_output([3, 2, 3, 1], [2, 4, 1, 3], seed=1)
    b = _trl_output([5, 5], [1, 1], seed=2)
    merged = merge_rows([(a, [1, 3]), (b, [0])], pad_token_id=9)
    assert merged["prompt_ids"].shape == (3, 5) and merged["completion_ids"].shape == (3, 4)
    # prompts stay left-padded, completions right-padded, each row unchanged where it has tokens
    assert merged["prompt_ids"][0].tolist() == [9, 9, 9] + a["prompt_ids"][1, -2:].tolist()
    assert merged["prompt_mask"][0].tolist() == [0, 0, 0, 1, 1]
    assert merged["completion_ids"][2].tolist() == b["completion_ids"][0, :1].tolist() + [9, 9, 9]
    assert merged["completion_mask"].sum().item() == 4 + 3 + 1
    assert merged["num_items_in_batch"].item() == 8
    assert torch.equal(merged["advantages"], torch.stack([a["advantages"][1], a["advantages"][3], b["advantages"][0]]))
    # pixel rows follow their sample: 4 rows per image
    assert torch.equal(merged["pixel_values"][:4], a["pixel_values"][4:8])
    assert torch.equal(merged["pixel_values"][4:8], a["pixel_values"][12:16])
    assert torch.equal(merged["pixel_values"][8:], b["pixel_values"][:4])
    assert merged["num_images"] == [1, 1, 1] and merged["image_grid_thw"].shape == (3, 3)
    assert merged["old_per_token_logps"][2, 1:].abs().sum() == 0
