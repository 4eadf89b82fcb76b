"""The RL stage end to end on CPU: tiny Qwen2.5-VL, demo corpus, registry lineage rl <- sft, resume."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from corpora.demo import build_demo
from stages.model import build_tiny
from stages.registry import Registry
from stages.rl import RLConfig, run
from stages.rl.trainer import TRAINER_STATE_DIR
from stages.runs import RunError


def token_parity_reward(completions, completion_ids, **columns):
    """A reward a random tiny model can move: the share of even token ids (varies from sample to sample)."""
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


@pytest.fixture
def sft_entry(tmp_path):
    """A stand-in `sft` checkpoint (the tiny base registered as stage sft), so lineage can be checked."""
    base = build_tiny("qwen2_5_vl", tmp_path / "tiny")
    with Registry().writer("sft", "demo", 5, parent="tiny:qwen2_5_vl") as w:
        for f in base.iterdir():
            shutil.copy(f, w.path / f.name)
        w.extra["template"] = "cot"
    return Registry().latest("sft", "demo")


@pytest.fixture
def demo(tmp_path):
    return build_demo(tmp_path / "demo", n_train=16, n_eval=4, image_size=56)


def test_two_steps_then_resume_ends_with_the_weights_of_an_uninterrupted_run(sft_entry, demo):
    common = dict(algorithm="dapo", data=str(demo.root), num_generations=4, batch_size=1, max_completion_length=8,
                  lr=1e-3, run="ci", max_num_gen_batches=2,
                  # DAPO as preset, but gated on the total reward (the random policy never answers right) and with
                  # truncated completions kept (every one ends at max_completion_length): otherwise it never trains
                  dynamic_sampling_metric="total", mask_truncated_completions=False,
                  rewards=["format", "accuracy", "tests.stages.test_rl_integration:token_parity_reward"])
    first = run(RLConfig(max_steps=3, stop_after=2, **common))
    assert first.name == "step-00000002"
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["stage"] == "rl" and manifest["extra"]["template"] == "cot"
    lineage = [e.get("stage") for e in Registry().lineage(str(first))]
    assert lineage[:2] == ["rl", "sft"]
    assert (first / "model.safetensors").exists() and (first / TRAINER_STATE_DIR / "optimizer.pt").exists()
    assert manifest["config"]["epsilon_high"] == 0.28  # the resolved preset is what the manifest records
    assert manifest["finished"] is False  # stopped at 2 of 3 planned steps
    with pytest.raises(RunError, match=r"rl/ci .* other settings: lr: recorded 0.001, now 0.002"):
        run(RLConfig(max_steps=3, **{**common, "lr": 2e-3}))  # refused before any model loads

    final = run(RLConfig(max_steps=3, **common))  # resume=auto continues the run from step 2
    assert final.name == "step-00000003" and Registry().manifest(final)["finished"] is True
    state = json.loads((final / TRAINER_STATE_DIR / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3]
    sampled = [h for h in state["log_history"] if "dynamic_sampling/groups_generated" in h]
    assert sampled and all(h["dynamic_sampling/groups_generated"] >= 1 for h in sampled)
    trained = [h for h in state["log_history"] if "loss" in h]
    assert all(h["grad_norm"] > 0 and h["prefix_share/shared_forwards"] >= 1 for h in trained)  # shared path ran

    # The same 3 DAPO steps uninterrupted: every parameter equal (sampling resumed from the restored RNG states).
    full = run(RLConfig(max_steps=3, **{**common, "run": "full"}))
    uninterrupted, resumed = load_file(full / "model.safetensors"), load_file(final / "model.safetensors")
    assert uninterrupted.keys() == resumed.keys()
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=1e-6, msg=lambda m: f"{key}: {m}")
    start = load_file(sft_entry / "model.safetensors")
    assert any(not torch.equal(start[k], uninterrupted[k]) for k in start)  # the policy moved


@pytest.mark.slow
def test_mean_reward_rises(sft_entry, demo):
    steps = 30
    final = run(RLConfig(algorithm="grpo", beta=0.0, data=str(demo.root), num_generations=8, batch_size=2,
                         max_completion_length=12, lr=3e-3, max_steps=steps, run="rise", temperature=1.0,
                         rewards=["tests.stages.test_rl_integration:token_parity_reward"], reward_weights=[1.0]))
    history = json.loads((final / TRAINER_STATE_DIR / "trainer_state.json").read_text())["log_history"]
    rewards = [h["reward"] for h in history if "reward" in h]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"mean reward first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert last > first + 0.1
