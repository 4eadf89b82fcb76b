"""SFT and RL as real 2-rank gloo DDP jobs on CPU: SFT under ``accelerate launch`` with
``recipes/configs/accelerate/cpu_ddp2.yaml``, RL under ``torchrun --standalone --nproc_per_node 2``.

Checked: both processes joined one process group of 2 and trained on different samples; after training both
hold the same weights (gradients were all-reduced), which are the weights of the last checkpoint; only rank 0
published: exactly one complete registry entry per saved step (with every rank's RNG state), no staging folder
left, LATEST on the last step; RL ran its shared-prefix forward at every step. The default tier runs one RL step
(``test_rl_one_step_on_two_ranks_shares_the_prompt``); the slow tier the rest, with resume equal to uninterrupted.
"""
from collections import defaultdict

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from stages.registry import Registry
from tests.reliability.children import run_child
from tests.reliability.engines import assert_prefix_shared
from tests.reliability.launch import parameter_digest

RANKS = 2


def probe_lines(folder):
    """{rank: {"world": {...}, "samples": [...], "weights": [...]}} from the probe files of every rank."""
    seen = defaultdict(lambda: {"world": set(), "samples": [], "weights": []})
    for f in folder.glob("rank-*.txt"):
        for line in f.read_text().splitlines():
            rank, world, what, value = line.split(" ", 3)
            seen[int(rank)]["world"].add(int(world))
            seen[int(rank)]["samples" if what == "sample" else "weights"].append(value)
    return seen


def digest_of(folder) -> str:
    return parameter_digest(AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32))


def check_only_rank0_wrote(stage: str, run: str, steps: list[int], rng_states: set[str]):
    registry = Registry()
    entries = registry.entries(stage)
    assert [e["step"] for e in entries] == steps  # one entry per saved step, none twice
    run_dir = registry.root / stage / run
    assert sorted(p.name for p in run_dir.iterdir()) == ["LATEST"] + [f"step-{s:08d}" for s in steps]  # no staging
    assert registry.latest(stage, run).name == f"step-{steps[-1]:08d}"
    for e in entries:  # complete: weights, optimizer, trainer state, and the RNG states asked for
        state = {p.name for p in (run_dir / f"step-{e['step']:08d}" / "trainer_state").iterdir()}
        assert {"optimizer.pt", "trainer_state.json"} <= state and {s for s in state if "rng" in s} == rng_states
        assert (run_dir / f"step-{e['step']:08d}" / "model.safetensors").is_file()
    return registry.latest(stage, run)


def check_both_ranks_trained(probe, final, initial_digest: str, min_samples: int):
    seen = probe_lines(probe)
    assert sorted(seen) == list(range(RANKS)), f"ranks that trained: {sorted(seen)}"
    for rank, s in seen.items():
        assert s["world"] == {RANKS}, f"rank {rank} trained outside a {RANKS}-process group: world {s['world']}"
        assert len(s["samples"]) >= min_samples, (rank, s["samples"])
    assert not set(seen[0]["samples"]) & set(seen[1]["samples"]), "the ranks trained on the same samples"
    digests = {s["weights"][-1] for s in seen.values()}
    assert len(digests) == 1, "rank weights diverged: gradients were not synchronised"
    assert digests == {digest_of(final)} and digests != {initial_digest}  # what rank 0 saved, and it moved


@pytest.mark.slow
def test_sft_two_ranks(demo, tiny, tmp_path):
    steps, batch = 3, 2
    args = [f"data={demo.root}", f"init={tiny}", f"max_steps={steps}", "save_every=1", f"batch_size={batch}",
            "lr=1e-3", "warmup_ratio=0"]
    run_child("recipes.sft", [*args, "run=ddp"], ranks=RANKS, launcher="accelerate", samples=tmp_path / "probe")
    final = check_only_rank0_wrote("sft", "ddp", [1, 2, 3], {"rng_state_0.pth", "rng_state_1.pth"})
    check_both_ranks_trained(tmp_path / "probe", final, digest_of(tiny), min_samples=steps * batch)
    assert Registry().manifest(final)["parent"] == str(tiny)

    # Stopped after step 1 and resumed on 2 ranks: each rank skips exactly the batches it already trained on,
    # so the run ends with the weights of the uninterrupted one.
    run_child("recipes.sft", [*args, "run=part", "stop_after=1"], ranks=RANKS)
    run_child("recipes.sft", [*args, "run=part"], ranks=RANKS)
    resumed = Registry().latest("sft", "part")
    assert resumed.name == final.name
    assert_same_weights(final, resumed)


def assert_same_weights(a, b):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=lambda m: f"{key}: {m}")


def rl_args(demo, tiny, steps: int, generations: int) -> list[str]:
    return [f"data={demo.root}", f"init={tiny}", "algorithm=grpo", f"max_steps={steps}", "save_every=1",
            f"num_generations={generations}", "batch_size=1", "max_completion_length=8", "lr=1e-3",
            "log_completions=0", "rewards=['tests.reliability.launch:token_parity_reward']", "reward_weights=[1.0]"]


def test_rl_one_step_on_two_ranks_shares_the_prompt(demo, tiny, tmp_path):
    """The default tier's 2-rank RL check: one step, both ranks in one group of 2 on different samples and ending
    with the published weights, and the shared-prefix forward ran (its counter in rank 0's log), not only the job."""
    run_child("recipes.rl", [*rl_args(demo, tiny, steps=1, generations=4), "run=ddp"], ranks=RANKS,
              samples=tmp_path / "probe")
    final = check_only_rank0_wrote("rl", "ddp", [1], {"rng_state_0.pth", "rng_state_1.pth"})
    check_both_ranks_trained(tmp_path / "probe", final, digest_of(tiny), min_samples=4)
    assert_prefix_shared(final, steps=1)


@pytest.mark.slow
def test_rl_two_ranks(demo, tiny, tmp_path):
    steps, generations = 2, 4
    args = rl_args(demo, tiny, steps, generations)
    run_child("recipes.rl", [*args, "run=ddp"], ranks=RANKS, samples=tmp_path / "probe")
    final = check_only_rank0_wrote("rl", "ddp", [1, 2], {"rng_state_0.pth", "rng_state_1.pth"})
    # Each rank scores its own completions: one group of G per step here.
    check_both_ranks_trained(tmp_path / "probe", final, digest_of(tiny), min_samples=steps * generations)
    assert_prefix_shared(final, steps)

    # Stopped after step 1 and resumed: every rank samples its completions from its own restored RNG state.
    run_child("recipes.rl", [*args, "run=part", "stop_after=1"], ranks=RANKS)
    run_child("recipes.rl", [*args, "run=part"], ranks=RANKS)
    assert_same_weights(final, Registry().latest("rl", "part"))
