"""DAPO dynamic sampling as a real 2-rank gloo DDP job on CPU (``torchrun --standalone --nproc_per_node 2``).

The reward (``tests.reliability.launch:refill_forcing_reward``) scores the first round of every step alike, so
every step refills; it scores every round of step index 1 alike, so that step has no informative group on any
rank; and every round of step index 2 alike on rank 1 only, so there one rank trains and the other finds
nothing. Two accumulation steps per optimizer step (TRL then splits each generation batch in two). A second,
continuous reward (token parity) differs inside almost every group; ``dynamic_sampling_metric`` names the first, so
groups are judged on it alone (on the weighted total the first round would be informative and step 1 would train).
Checked from the ``PATHOR1_PROBE_DYNAMIC`` lines of both ranks: the run ends (no collective hangs, under a
timeout); both ranks ran the same number of rounds in every step; every kept group is informative; refill
prompts differ between the ranks; the empty step is skipped on both ranks (their weights do not move through
it) while the others train; the rank that found nothing trains on inert padding alongside the other; the token
normaliser is the sum over both ranks; and a run stopped after step 2 and resumed ends with the weights of the
uninterrupted run.
"""
import json
from collections import defaultdict

import pytest

from stages.registry import Registry
from tests.reliability.children import run_child
from tests.reliability.test_ddp import assert_same_weights

pytestmark = pytest.mark.slow
RANKS, G, STEPS, SKIPPED_STEP, LOPSIDED_STEP = 2, 4, 4, 1, 2
ROWS = 2 * G  # per rank and generation: batch_size=1 group x grad_accum=2


def probe_lines(folder) -> dict[int, dict[int, dict]]:
    """{step: {rank: line}} from every rank's probe file."""
    by_step = defaultdict(dict)
    for f in sorted(folder.glob("dynamic-*.jsonl")):
        for line in f.read_text().splitlines():
            record = json.loads(line)
            by_step[record["step"]][record["rank"]] = record
    return by_step


def test_dynamic_sampling_two_ranks(demo, tiny, tmp_path, monkeypatch):
    # Under gloo, accelerate names the device cpu:0, and transformers 5.17 resumes the optimizer with
    # torch.load(map_location=cpu:0), which torch refuses; a plain "cpu" device avoids it (reported, not ours).
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "cpu")
    args = [f"data={demo.root}", f"init={tiny}", "algorithm=dapo", f"max_steps={STEPS}", "save_every=1",
            f"num_generations={G}", "batch_size=1", "grad_accum=2", "max_completion_length=6", "lr=1e-3", "log_completions=0",
            "max_num_gen_batches=3", "mask_truncated_completions=false",
            "rewards=['tests.reliability.launch:refill_forcing_reward','tests.reliability.launch:token_parity_reward']",
            "reward_weights=[1.0,1.0]", "dynamic_sampling_metric=tests.reliability.launch:refill_forcing_reward"]
    run_child("recipes.rl", [*args, "run=ds"], ranks=RANKS, timeout=900, dynamic=tmp_path / "probe")
    steps = probe_lines(tmp_path / "probe")
    assert sorted(steps) == list(range(STEPS)) and all(sorted(s) == [0, 1] for s in steps.values())

    for step, ranks in steps.items():
        assert {r["world"] for r in ranks.values()} == {RANKS}
        rounds = {len(r["rounds"]) for r in ranks.values()}
        assert len(rounds) == 1, f"step {step}: ranks ran {rounds} rounds"  # in step, or a collective would hang
        assert rounds.pop() >= 2  # the first round is never informative: every step refilled
        for rank, r in ranks.items():
            for kept in r["kept"]:  # every kept group informative: its G rewards (of the metric) differ
                rewards = r["rounds"][kept["round"]]["rewards"]
                for start in range(0, len(kept["rows"]), G):
                    group = [rewards[i] for i in kept["rows"][start:start + G]]
                    assert len(group) == G and max(group) > min(group), (step, rank, group)
            assert r["inert_padding"]
            assert r["rows"] == (0 if r["skipped"] else ROWS)  # the planned batch, never empty but to skip
        for k in range(1, len(ranks[0]["rounds"])):  # refills: different prompts on the two ranks
            ids = [set(ranks[rank]["rounds"][k]["ids"]) for rank in (0, 1)]
            assert not ids[0] & ids[1], f"step {step} round {k}: both ranks refilled with {ids[0] & ids[1]}"
        tokens = sum(r["local_tokens"] for r in ranks.values())
        assert all(r["num_items_in_batch"] == tokens for r in ranks.values())  # normaliser over both ranks

    skipped = steps[SKIPPED_STEP]
    assert skipped[0]["skipped"] and skipped[1]["skipped"] and len(skipped[0]["rounds"]) == 3  # at the cap
    assert not any(r["skipped"] for s in steps if s != SKIPPED_STEP for r in steps[s].values())
    lopsided = steps[LOPSIDED_STEP]
    assert len(lopsided[0]["rounds"]) == 3  # rank 1 never fills: both run to the cap
    assert sum(len(k["rows"]) for k in lopsided[0]["kept"]) == ROWS and lopsided[0]["padding"] == []
    assert lopsided[1]["kept"] == [] and sum(len(p["rows"]) for p in lopsided[1]["padding"]) == ROWS
    assert lopsided[1]["local_tokens"] == 0 and lopsided[1]["num_items_in_batch"] == lopsided[0]["local_tokens"]
    digests = [steps[s][0]["digest"] for s in range(STEPS)]
    assert digests[0] != digests[1] == digests[2] != digests[3], "steps 0 and 2 train, the skipped step 1 does not"
    assert all(steps[s][0]["digest"] == steps[s][1]["digest"] for s in range(STEPS))  # ranks stay in sync

    # Stopped after step 2 and resumed through the lopsided step: the refill draw is keyed by step, RNG states
    # are per rank.
    run_child("recipes.rl", [*args, "run=part", "stop_after=2"], ranks=RANKS, timeout=900)
    run_child("recipes.rl", [*args, "run=part"], ranks=RANKS, timeout=900)
    final, resumed = Registry().latest("rl", "ds"), Registry().latest("rl", "part")
    assert final.name == resumed.name == f"step-{STEPS:08d}"
    assert_same_weights(final, resumed)
