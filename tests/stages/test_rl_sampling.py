"""Dynamic sampling: the group filter, the multi-rank refill loop (two ranks in threads with a fake all-gather),
the refill draw, padding with inert rows, the token normaliser and the merge of TRL generation outputs."""
import threading

import pytest
import torch

from stages.rl.algos import group_rows, informative_groups, zero_std_fraction
from stages.rl.sampling import collect_informative, local_row_mask, refill_prompt_indices
from stages.rl.trl_batch import check_trl_version, loss_token_count, make_inert, merge_rows

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


# ---------------------------------------------------------------------------------------------- the rank's rows
def test_local_row_mask_takes_this_ranks_slice_of_the_global_mask():
    mask = torch.tensor([True, False, False, True])  # 4 groups of 2 rows over 2 ranks of 4 rows
    assert local_row_mask(mask, 2, rank=0, local_rows=4).tolist() == [True, True, False, False]
    assert local_row_mask(mask, 2, rank=1, local_rows=4).tolist() == [False, False, True, True]


def test_local_row_mask_when_a_group_straddles_two_ranks():
    mask = torch.tensor([True, False])  # 2 groups of 4 rows, ranks of 2 rows: group 0 is on ranks 0 and 1
    assert [local_row_mask(mask, 4, r, 2).tolist() for r in range(4)] == [[True] * 2, [True] * 2,
                                                                         [False] * 2, [False] * 2]
    with pytest.raises(ValueError, match="8 gathered rows do not split into ranks of 3 rows"):
        local_row_mask(mask, 4, 0, 3)


# ---------------------------------------------------------------------------------------------- one rank
def _feeder(reward_batches):
    """generate(round) that hands out the given (global) reward batches in order and counts calls."""
    calls = []

    def generate(round_index):
        assert round_index == len(calls)
        calls.append(round_index)
        return f"batch{round_index}", torch.tensor(reward_batches[round_index], dtype=torch.float)

    return generate, calls


def test_stops_after_one_round_when_every_group_is_informative():
    generate, calls = _feeder([[0, 1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 0]])  # three informative groups
    got = collect_informative(generate, G, quota_rows=12, max_gen_batches=3)
    assert got.kept == [("batch0", list(range(12)))] and len(calls) == 1
    assert got.padding == [] and not got.stats.skipped and got.stats.warnings == []
    assert (got.stats.groups_generated, got.stats.zero_std_groups, got.stats.rows_kept) == (3, 0, 12)


def test_refills_until_the_quota_and_trims_the_surplus():
    generate, calls = _feeder([
        [1, 1, 1, 1, 0, 1, 0, 0],  # 1 informative of 2
        [0, 0, 0, 0, 0, 0, 0, 0],  # none
        [1, 0, 1, 0, 0, 1, 1, 1],  # 2 informative, only 1 needed
    ])
    got = collect_informative(generate, G, quota_rows=8, max_gen_batches=5)
    assert got.kept == [("batch0", [4, 5, 6, 7]), ("batch2", [0, 1, 2, 3])]
    assert got.kept_rounds == [0, 2]
    assert got.summary().kept == [(None, [4, 5, 6, 7]), (None, [0, 1, 2, 3])]  # the record keeps no batch
    assert len(calls) == 3 and got.stats.gen_batches == 3 and got.padding == []
    assert got.stats.as_metrics()["dynamic_sampling/groups_kept"] == 2.0


def test_pads_a_shortfall_at_the_cap_with_rows_of_non_informative_groups():
    generate, _ = _feeder([[0, 1, 0, 0, 1, 1, 1, 1], [1] * 8])
    got = collect_informative(generate, G, quota_rows=8, max_gen_batches=2)
    assert got.kept == [("batch0", [0, 1, 2, 3])]
    assert got.padding == [("batch0", [4, 5, 6, 7])]  # the first non-informative rows, a whole group
    assert got.padding_rounds == [0]
    assert got.padding_rows == [4, 5, 6, 7] and got.stats.rows_padded == 4
    assert "only 4/8 informative rows over 1 rank(s) after 2 generation batches" in got.stats.warnings[0]


def test_skips_the_step_at_the_cap_when_no_group_is_informative():
    generate, calls = _feeder([[1] * 8] * 10)
    got = collect_informative(generate, G, quota_rows=8, max_gen_batches=3)
    assert got.stats.skipped and got.kept == [] and got.padding == [] and len(calls) == 3
    assert got.stats.zero_std_fraction == 1.0
    assert "no informative group on any rank after 3 generation batches" in got.stats.warnings[0]


# ---------------------------------------------------------------------------------------------- two ranks
class FakeProcessGroup:
    """An all-gather for ranks running in threads. A rank that calls it more often than another waits at the
    barrier until the timeout: exactly the hang a real mismatch of collectives would be."""

    def __init__(self, world: int):
        self.world, self.slots, self.calls = world, [None] * world, [0] * world
        self.barrier = threading.Barrier(world, timeout=5)

    def all_gather(self, rank):
        def gather(n):
            self.slots[rank] = n
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()
            self.calls[rank] += 1
            return out

        return gather


def run_ranks(global_rewards, quota_rows, max_gen_batches, world=2):
    """Every rank sees the same gathered rewards per round (as TRL's reward gather gives them)."""
    group, results, errors = FakeProcessGroup(world), [None] * world, []

    def rank_main(rank):
        def generate(round_index):
            return f"round{round_index}/rank{rank}", torch.tensor(global_rewards[round_index], dtype=torch.float)

        try:
            results[rank] = collect_informative(generate, G, quota_rows, max_gen_batches, rank=rank,
                                                all_gather=group.all_gather(rank))
        except Exception as exc:  # noqa: BLE001 -- re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors, errors
    assert group.calls == [group.calls[0]] * world  # the same number of collectives on every rank
    return results


def _rows(groups):
    """Global rewards for a list of groups: True = informative (0,1,0,1), False = all zero."""
    return [x for informative in groups for x in ([0, 1, 0, 1] if informative else [0, 0, 0, 0])]


def test_two_ranks_run_the_same_rounds_until_the_slowest_has_its_quota():
    # each rank holds 2 groups (8 rows); rank 0's groups are the first two of every round
    rounds = [_rows([True, True, False, False]),  # rank 0 full at once, rank 1 has nothing
              _rows([True, False, False, False]),  # rank 1 still nothing
              _rows([False, True, True, False]),  # rank 1 gets one group
              _rows([True, True, False, True])]  # rank 1 gets its second
    r0, r1 = run_ranks(rounds, quota_rows=8, max_gen_batches=10)
    assert r0.stats.gen_batches == r1.stats.gen_batches == 4
    assert r0.kept == [("round0/rank0", list(range(8)))]  # later informative rows of rank 0 are surplus
    assert r1.kept == [("round2/rank1", [0, 1, 2, 3]), ("round3/rank1", [4, 5, 6, 7])]
    assert r0.padding == r1.padding == [] and not r0.stats.warnings and not r1.stats.warnings
    # every kept row belongs to a group that is informative in the global mask of its round
    for rank, got in enumerate((r0, r1)):
        for batch, rows in got.kept:
            round_index = int(batch.split("/")[0][5:])
            mask = local_row_mask(informative_groups(torch.tensor(rounds[round_index], dtype=torch.float), G),
                                  G, rank, 8)
            assert all(mask[r] for r in rows)


def test_two_ranks_at_the_cap_pad_the_short_rank_and_nobody_is_empty():
    rounds = [_rows([True, True, False, False]), _rows([False, False, False, False])]
    r0, r1 = run_ranks(rounds, quota_rows=8, max_gen_batches=2)
    assert r0.stats.gen_batches == r1.stats.gen_batches == 2
    assert not r0.stats.skipped and not r1.stats.skipped
    assert r0.stats.rows_kept == 8 and r0.padding == []
    assert r1.kept == [] and r1.padding == [("round0/rank1", list(range(8)))] and r1.padding_rows == list(range(8))
    assert "only 8/16 informative rows over 2 rank(s)" in r1.stats.warnings[0]


def test_two_ranks_skip_together_when_no_group_is_informative_anywhere():
    r0, r1 = run_ranks([_rows([False] * 4)] * 3, quota_rows=8, max_gen_batches=3)
    assert r0.stats.skipped and r1.stats.skipped
    assert r0.stats.gen_batches == r1.stats.gen_batches == 3
    assert r0.parts == r1.parts == []


def test_groups_straddling_two_ranks_are_kept_or_dropped_on_both():
    # G=4 rows per group, 2 rows per rank: group 0 lives on ranks 0 and 1
    r0, r1 = run_ranks([[0, 1, 0, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 1, 1, 1]], quota_rows=2, max_gen_batches=2)
    assert r0.kept == [("round0/rank0", [0, 1])] and r1.kept == [("round0/rank1", [0, 1])]
    assert r0.stats.gen_batches == r1.stats.gen_batches == 1


# ---------------------------------------------------------------------------------------------- refill draw
def test_refill_prompts_differ_across_ranks_and_repeat_for_the_same_key():
    draw = [refill_prompt_indices(50, 8, G, rank, 2, seed=3, key=(5, 0, 1)) for rank in range(2)]
    assert all(len(d) == 8 for d in draw)
    assert draw[0][:4] == [draw[0][0]] * 4  # one prompt per group of G rows (RepeatSampler layout)
    assert not set(draw[0]) & set(draw[1])  # ranks draw different prompts
    assert draw[0] == refill_prompt_indices(50, 8, G, 0, 2, seed=3, key=(5, 0, 1))  # resume draws the same
    assert draw[0] != refill_prompt_indices(50, 8, G, 0, 2, seed=3, key=(5, 0, 2))  # next round, new prompts
    assert draw[0] != refill_prompt_indices(50, 8, G, 0, 2, seed=4, key=(5, 0, 1))


def test_refill_keeps_a_straddling_group_on_one_prompt_and_wraps_a_small_dataset():
    draw = [refill_prompt_indices(3, 2, G, rank, 4, seed=0, key=(0, 0, 1)) for rank in range(4)]
    assert draw[0] + draw[1] == [draw[0][0]] * 4 and draw[2] + draw[3] == [draw[2][0]] * 4
    assert len(refill_prompt_indices(3, 16, G, 0, 1, seed=0, key=(0,))) == 16  # 4 prompts from 3: wraps
    with pytest.raises(ValueError, match="2 rank\\(s\\) x 3 rows is not a whole number of groups of 4"):
        refill_prompt_indices(10, 3, G, 0, 2, seed=0, key=(0,))


# ---------------------------------------------------------------------------------------------- TRL batch
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
    assert loss_token_count(merged).item() == 4 + 3 + 1
    assert "num_items_in_batch" not in merged  # a cross-rank sum: the trainer recomputes it
    assert torch.equal(merged["advantages"], torch.stack([a["advantages"][1], a["advantages"][3], b["advantages"][0]]))
    # pixel rows follow their sample: 4 rows per image
    assert torch.equal(merged["pixel_values"][:4], a["pixel_values"][4:8])
    assert torch.equal(merged["pixel_values"][4:8], a["pixel_values"][12:16])
    assert torch.equal(merged["pixel_values"][8:], b["pixel_values"][:4])
    assert merged["num_images"] == [1, 1, 1] and merged["image_grid_thw"].shape == (3, 3)
    assert merged["old_per_token_logps"][2, 1:].abs().sum() == 0


@pytest.mark.parametrize("tools", [False, True])
def test_padding_rows_are_inert_and_leave_the_normaliser(tools):
    a = _trl_output([3, 2, 3, 1], [2, 4, 1, 3], seed=1)
    if tools:
        a["tool_mask"] = torch.ones_like(a["completion_mask"])
    inert = make_inert(a, [1, 3])
    assert inert["advantages"][[1, 3]].tolist() == [0.0, 0.0]
    assert torch.equal(inert["advantages"][[0, 2]], a["advantages"][[0, 2]])
    loss_mask = inert["completion_mask"] * inert.get("tool_mask", 1)  # what TRL's loss multiplies by
    assert loss_mask[[1, 3]].sum() == 0 and torch.equal(loss_mask[[0, 2]], a["completion_mask"][[0, 2]])
    if tools:  # the attention mask (prompt + completion mask) still covers the tool results and their views
        assert torch.equal(inert["completion_mask"], a["completion_mask"])
    assert loss_token_count(inert).item() == 2 + 1  # rows 0 and 2 only
    assert torch.equal(inert["completion_ids"], a["completion_ids"])  # still run through the forward
    assert a["completion_mask"].sum() == 10  # the input is not modified


def test_dapo_normaliser_summed_over_ranks_gives_a_mean_over_every_kept_token():
    """TRL's dapo loss on rank r is sum_r / (N / world) with N the normaliser; DDP averages over ranks. With N the
    all-gathered sum of kept tokens that is the token mean over both ranks -- with the local count it is not."""
    ranks = [make_inert(_trl_output([2] * 4, [3, 1, 2, 4], seed=s), pad) for s, pad in ((1, []), (2, [0, 1, 2]))]
    per_token = [torch.full(r["completion_mask"].shape, float(i + 1)) for i, r in enumerate(ranks)]
    counts = [loss_token_count(r) for r in ranks]  # 10 and 4 tokens
    normaliser = torch.stack(counts).sum()  # what the all-gather in the trainer computes
    losses = [(t * r["completion_mask"]).sum() / (normaliser / 2) for t, r in zip(per_token, ranks)]
    ddp_mean = sum(losses) / 2
    token_mean = sum((t * r["completion_mask"]).sum() for t, r in zip(per_token, ranks)) / normaliser
    assert ddp_mean.item() == pytest.approx(token_mean.item()) == pytest.approx((10 * 1 + 4 * 2) / 14)
    local = sum((t * r["completion_mask"]).sum() / c for t, r, c in zip(per_token, ranks, counts)) / 2
    assert local.item() != pytest.approx(token_mean.item())


def test_an_untested_trl_version_is_refused_with_the_file_to_check():
    check_trl_version("1.16.0")
    with pytest.raises(RuntimeError, match="written for trl 1.16; installed trl 1.17.0.*stages/rl/trl_batch.py"):
        check_trl_version("1.17.0")
    with pytest.raises(RuntimeError):
        check_trl_version("1.160.0")


@pytest.mark.parametrize("name", ["patho_r1_qwen2_5_vl_7b", "patho_r1_qwen2_5_vl_3b"])
def test_shipped_multi_gpu_dapo_configs_keep_dynamic_sampling(name):
    """They used to switch it off because it raised on several ranks; the DAPO preset's refills now run there."""
    from pathlib import Path

    from stages.config import config_class_of, load_config

    path = Path(__file__).resolve().parents[2] / "recipes" / "configs" / f"{name}.yaml"
    cfg = load_config(config_class_of(path), ["--config", str(path)])
    assert cfg.rl.algorithm == "dapo" and cfg.rl.resolved().dynamic_sampling is True
