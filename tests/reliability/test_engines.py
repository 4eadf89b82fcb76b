"""SFT and RL as 2-rank gloo jobs under every engine (DDP, DeepSpeed ZeRO-2, ZeRO-3, FSDP2), on CPU.

Checked for each engine x stage (slow tier): the job ends (a rank-0-only collective save would hang it: each run
has a timeout); one entry per saved step and no unpublished ``checkpoint-N`` left behind; the published entry
holds exactly the parameters the ranks gathered after training, as full weights that plain
``AutoModelForImageTextToText`` loads, and its manifest names the engine; a run stopped after step 1 and resumed
through the library's own resume (ZeRO's ``global_stepN``, FSDP's state dict, every rank's RNG) ends with the
weights of the uninterrupted run (tolerance 1e-6, absolute). LoRA under ZeRO-3 publishes the merged weights
(checked against W + scale * B @ A computed by hand from the gathered adapter). The default tier runs one
ZeRO-3 SFT save + load.
"""
from pathlib import Path

import pytest

from stages.registry import Registry
from tests.reliability.engines import (ENGINES, assert_same_weights, check_published, launch, moved,
                                       plain_weights)

RESUME_ATOL = 1e-6


def sft_job(demo, tiny, steps: int = 3) -> tuple[str, list[str], int]:
    return "recipes.sft", [f"data={demo.root}", f"init={tiny}", f"max_steps={steps}", "save_every=1",
                           "batch_size=2", "lr=1e-3", "warmup_ratio=0"], steps


def rl_job(demo, tiny, steps: int = 2) -> tuple[str, list[str], int]:
    return "recipes.rl", [f"data={demo.root}", f"init={tiny}", "algorithm=grpo", f"max_steps={steps}", "save_every=1",
                          "num_generations=4", "batch_size=1", "max_completion_length=8", "lr=1e-3", "log_completions=0",
                          "rewards=['tests.reliability.launch:token_parity_reward']", "reward_weights=[1.0]"], steps


JOBS = {"sft": sft_job, "rl": rl_job}


def published_steps(stage: str, run: str) -> list[int]:
    return [e["step"] for e in Registry().entries(stage) if e["run"] == run]


def no_unpublished_checkpoints(stage: str, run: str) -> None:
    logs = Registry().root / "logs" / stage / run
    assert not list(logs.glob("checkpoint-*")), "a library checkpoint was left unpublished"


def test_zero3_sft_publishes_the_gathered_weights(demo, tiny, tmp_path):
    module, args, _ = sft_job(demo, tiny, steps=1)
    launch("deepspeed-zero3", module, [*args, "run=z3"], gathered=tmp_path / "probe")
    entry = Registry().latest("sft", "z3")
    assert published_steps("sft", "z3") == [1]
    weights = check_published(entry, tmp_path / "probe", "deepspeed-zero3")
    assert moved(plain_weights(tiny), weights)  # it trained (the vision tower is frozen, the rest moved)
    assert (entry / "trainer_state" / "global_step1").is_dir()  # DeepSpeed's own resume state is kept
    no_unpublished_checkpoints("sft", "z3")


@pytest.mark.slow
@pytest.mark.parametrize("stage", JOBS)
@pytest.mark.parametrize("engine", ENGINES)
def test_publish_and_resume(engine, stage, demo, tiny, tmp_path):
    module, args, steps = JOBS[stage](demo, tiny)
    launch(engine, module, [*args, "run=full"], gathered=tmp_path / "probe")
    assert published_steps(stage, "full") == list(range(1, steps + 1))
    no_unpublished_checkpoints(stage, "full")
    final = Registry().latest(stage, "full")
    weights = check_published(final, tmp_path / "probe", engine)
    assert moved(plain_weights(tiny), weights)

    launch(engine, module, [*args, "run=part", "stop_after=1"])
    assert published_steps(stage, "part") == [1]
    launch(engine, module, [*args, "run=part"])
    resumed = Registry().latest(stage, "part")
    assert resumed.name == final.name
    assert_same_weights(weights, plain_weights(resumed), atol=RESUME_ATOL)


@pytest.mark.slow
def test_lora_under_zero3_publishes_merged_weights(demo, tiny, tmp_path):
    module, args, _ = sft_job(demo, tiny, steps=2)
    r, alpha = 4, 8
    launch("deepspeed-zero3", module, [*args, "run=lora", "model.lora.enabled=true", f"model.lora.r={r}",
                                       f"model.lora.alpha={alpha}", "model.lora.dropout=0.0"],
           gathered=tmp_path / "probe")
    entry = Registry().latest("sft", "lora")
    merged = check_published(entry, tmp_path / "probe", "deepspeed-zero3", lora_scale=alpha / r)
    changed = moved(plain_weights(tiny), merged)
    assert any(".self_attn." in k for k in changed) and any("visual.merger" in k for k in changed), changed
    assert {p.name for p in (entry / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert Registry().manifest(entry)["extra"]["lora"] is True
    assert not Path(entry / "adapter_config.json").exists()  # the top level is a plain full-weights folder


@pytest.mark.slow
def test_image_feature_centering_folds_into_the_saved_bias_under_every_engine(demo, tiny, tmp_path):
    """The demo's `center_image_features` folds a share of each step's projector-output mean into the projector
    bias. Under ZeRO the optimizer's fp32 master copy overwrites the model's parameter each step, and under ZeRO-3 /
    FSDP2 the bias is sharded: the published bias must carry the same folds as under DDP. A vanishing learning
    rate leaves the fold as the only change to the weights."""
    module, args, steps = sft_job(demo, tiny, steps=3)
    args = [a for a in args if not a.startswith("lr=")] + ["lr=1e-30", "center_image_features=true"]
    bias = "model.visual.merger.mlp.2.bias"
    initial = plain_weights(tiny)
    published = {}
    for engine in ENGINES:
        launch(engine, module, [*args, f"run=centre-{engine}"])
        published[engine] = plain_weights(Registry().latest("sft", f"centre-{engine}"))
    reference = published["ddp"]
    changed = {k for k in initial if (initial[k] - reference[k]).abs().max() > 1e-6}
    assert changed == {bias}  # the folds, and nothing else (a zero bias moves by ~lr, not by more)
    for engine, weights in published.items():
        assert_same_weights(weights, reference, atol=1e-5)
