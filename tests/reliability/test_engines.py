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
import json
from pathlib import Path

import pytest

from stages.registry import Registry
from tests.reliability.engines import (ENGINES, assert_prefix_shared, assert_same_weights, check_published,
                                       launch, moved, plain_weights)

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
    if stage == "rl":  # GRPO's KL reference forward shares under every engine (FSDP2 runs the trained one unshared)
        assert_prefix_shared(final, steps)

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


def dcp_chunks(folder: Path) -> dict[str, int]:
    """{tensor name: number of rank chunks} of a torch.distributed.checkpoint folder."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(folder)).read_metadata()
    return {k: len(v.chunks) for k, v in metadata.state_dict_metadata.items() if hasattr(v, "chunks")}


@pytest.mark.slow
def test_fsdp2_sharded_state_dict_checkpoints_shards_and_publishes_full_weights(demo, tiny, tmp_path):
    """A user's own FSDP2 config with ``fsdp_state_dict_type: SHARDED_STATE_DICT`` (the usual 7B setting) trains:
    every checkpoint's resume state is torch.distributed.checkpoint shards written by each rank (model and
    optimizer: no ``optimizer.bin`` gathered on rank 0), each published entry holds the gathered full weights,
    and a run stopped after step 1 resumes from the shards to the uninterrupted run's weights."""
    config = tmp_path / "fsdp2_sharded.yaml"
    shipped = ENGINES["fsdp2"].read_text()
    assert "fsdp_state_dict_type: FULL_STATE_DICT" in shipped
    config.write_text(shipped.replace("FULL_STATE_DICT", "SHARDED_STATE_DICT"))
    module, args, steps = sft_job(demo, tiny, steps=2)
    launch("fsdp2", module, [*args, "run=sharded"], config=config, gathered=tmp_path / "probe")
    assert published_steps("sft", "sharded") == [1, 2]
    no_unpublished_checkpoints("sft", "sharded")
    final = Registry().latest("sft", "sharded")
    weights = check_published(final, tmp_path / "probe", "fsdp2")
    assert moved(plain_weights(tiny), weights)
    state = final / "trainer_state"
    assert not list(state.glob("optimizer*.bin")) and not list(state.glob("pytorch_model_fsdp*.bin"))
    for name in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (state / name).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        chunks = dcp_chunks(state / name)
        split = [k for k, n in chunks.items() if n == 2]  # written half by each rank
        assert split and all(n in (1, 2) for n in chunks.values()), chunks
    assert any("exp_avg" in k for k in dcp_chunks(state / "optimizer_0"))  # Adam's moments, in shards

    launch("fsdp2", module, [*args, "run=sharded-part", "stop_after=1"], config=config)
    assert published_steps("sft", "sharded-part") == [1]
    launch("fsdp2", module, [*args, "run=sharded-part"], config=config)
    resumed = Registry().latest("sft", "sharded-part")
    assert resumed.name == final.name
    assert_same_weights(weights, plain_weights(resumed), atol=RESUME_ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("stage", JOBS)
def test_zero3_init_loads_the_model_partitioned_from_the_start(stage, demo, tiny, tmp_path):
    """``zero3_init_flag: true`` in the user's ZeRO-3 accelerate config: the stage's ``from_pretrained`` already
    builds every parameter as a ZeRO-3 partition (each rank holds half the elements), the weights it loaded are
    the checkpoint's (a vanishing learning rate publishes them unchanged), and the run publishes the gathered
    weights. The shipped CPU config (flag false) still loads whole."""
    config = zero3_init_config(tmp_path)
    module, args, _ = JOBS[stage](demo, tiny, 1)
    args = [a for a in args if not a.startswith(("lr=", "save_every="))] + ["lr=1e-30", "save_every=0"]
    launch("deepspeed-zero3", module, [*args, "run=z3init"], config=config, gathered=tmp_path / "probe",
           memory=tmp_path / "memory")
    for rank in (0, 1):
        loaded = json.loads((tmp_path / "memory" / f"memory-{rank}.jsonl").read_text().splitlines()[0])
        assert loaded["event"] == "loaded" and loaded["partitioned"], loaded
        assert loaded["local_numel"] <= loaded["numel"] // 2 + 64, loaded  # half (+ padding) on each rank
    entry = Registry().latest(stage, "z3init")
    weights = check_published(entry, tmp_path / "probe", "deepspeed-zero3")
    assert_same_weights(plain_weights(tiny), weights, atol=1e-6)  # what from_pretrained loaded, not a fresh init

    launch("deepspeed-zero3", module, [*args, "run=z3whole"], memory=tmp_path / "whole")
    loaded = json.loads((tmp_path / "whole" / "memory-0.jsonl").read_text().splitlines()[0])
    assert not loaded["partitioned"] and loaded["local_numel"] == loaded["numel"]


def zero3_init_config(tmp_path) -> Path:
    config = tmp_path / "zero3_init.yaml"
    shipped = ENGINES["deepspeed-zero3"].read_text()
    assert "zero3_init_flag: false" in shipped
    config.write_text(shipped.replace("zero3_init_flag: false", "zero3_init_flag: true"))
    return config


@pytest.mark.slow
def test_zero3_init_resumes_exactly(demo, tiny, tmp_path):
    """The user's ZeRO-3 config with zero3_init_flag: an SFT run stopped after step 1 and resumed (the resumed run
    loads the step-1 weights partitioned, then DeepSpeed's own global_step1 state) ends with the weights of the
    uninterrupted run."""
    config = zero3_init_config(tmp_path)
    module, args, steps = sft_job(demo, tiny, steps=2)
    launch("deepspeed-zero3", module, [*args, "run=full"], config=config)
    launch("deepspeed-zero3", module, [*args, "run=part", "stop_after=1"], config=config)
    assert published_steps("sft", "part") == [1]
    launch("deepspeed-zero3", module, [*args, "run=part"], config=config)
    final, resumed = Registry().latest("sft", "full"), Registry().latest("sft", "part")
    assert resumed.name == final.name == "step-00000002"
    assert_same_weights(plain_weights(final), plain_weights(resumed), atol=RESUME_ATOL)
    assert moved(plain_weights(tiny), plain_weights(final))
