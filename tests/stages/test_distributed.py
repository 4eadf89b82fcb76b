"""The engine adapter (stages/distributed.py) and the shared checkpoint policies (stages/checkpointing.py)."""
import json
import os
from types import SimpleNamespace

import pytest
import torch

from stages import distributed
from stages.checkpointing import resume_point, trained_steps
from stages.model import ModelConfig, LoraConfig, quantized_device_map
from stages.registry import Registry

LAUNCH_ENV = ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
              "ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_ACTIVATION_CHECKPOINTING", "WORLD_SIZE", "ACCELERATE_TORCH_DEVICE")


@pytest.fixture
def launcher(monkeypatch):
    """Set the environment accelerate launch would (nothing of it leaks from the test process itself)."""
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def set_env(**env):
        for k, v in env.items():
            monkeypatch.setenv(k, str(v))

    return set_env


@pytest.mark.parametrize("env, engine", [
    ({}, "single"),
    ({"WORLD_SIZE": 2}, "ddp"),
    ({"WORLD_SIZE": 2, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": 2}, "deepspeed-zero2"),
    ({"WORLD_SIZE": 2, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": 2}, "fsdp2"),
])
def test_requested_engine_from_the_launcher_environment(launcher, env, engine):
    launcher(**env)
    assert distributed.requested_engine() == engine


def test_zero_stage_comes_from_the_deepspeed_json_the_config_names(launcher, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    launcher(WORLD_SIZE=2, ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_CONFIG_FILE=ds)
    assert distributed.requested_engine() == "deepspeed-zero3"


def test_engine_arguments_on_cpu(launcher):
    launcher(WORLD_SIZE=2)
    assert distributed.engine_arguments() == {"use_cpu": True}  # DDP over gloo
    assert os.environ["ACCELERATE_TORCH_DEVICE"] == "cpu"  # not cpu:0, which transformers' resume cannot map to
    launcher(ACCELERATE_USE_DEEPSPEED="true")
    # DeepSpeed is skipped under use_cpu, and needs a backend to see the other ranks
    assert distributed.engine_arguments() == {"use_cpu": False, "ddp_backend": "gloo"}


def test_fsdp_activation_checkpointing_is_refused_for_the_one_switch(launcher):
    launcher(WORLD_SIZE=2, ACCELERATE_USE_FSDP="true", FSDP_VERSION=2, FSDP_ACTIVATION_CHECKPOINTING="true")
    with pytest.raises(ValueError, match="use the stage's gradient_checkpointing=true instead"):
        distributed.engine_arguments()


def test_an_engine_other_than_the_requested_one_is_refused(launcher):
    from accelerate.utils import DistributedType

    launcher(WORLD_SIZE=2, ACCELERATE_USE_FSDP="true", FSDP_VERSION=2)
    accelerator = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2)
    with pytest.raises(RuntimeError, match=r"the launcher asked for fsdp2 on 2 process\(es\) but the Trainer runs "
                                           r"ddp on 2: refusing to train with another engine"):
        distributed.check_engine(accelerator)
    launcher(ACCELERATE_USE_FSDP="false")
    assert distributed.check_engine(accelerator) == "ddp"


def test_trainable_half_weights_become_fp32_and_frozen_ones_stay():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.bfloat16)
    model[0].requires_grad_(False)
    assert distributed.upcast_trainable(model) == 2  # weight and bias of the trainable layer
    assert model[0].weight.dtype == torch.bfloat16 and model[1].weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the forward still runs (in bf16) under autocast
        assert model(torch.ones(1, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_qlora_loads_each_rank_onto_its_own_gpu(monkeypatch):
    qlora = ModelConfig(quantization="4bit", lora=LoraConfig(enabled=True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert quantized_device_map(qlora) == {"": "cuda:3"}
    assert quantized_device_map(ModelConfig()) is None  # unquantised: the Trainer places the model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert quantized_device_map(qlora) is None


def test_resume_policy_is_one_for_every_stage(tmp_path):
    registry = Registry(tmp_path)
    assert resume_point("rl", "r", "auto", registry) is None and resume_point("rl", "r", "never", registry) is None
    with registry.writer("rl", "r", 2) as w:
        (w.path / "trainer_state").mkdir()
        (w.path / "trainer_state" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    entry = registry.latest("rl", "r")
    assert resume_point("rl", "r", "auto", registry) == entry and trained_steps(entry) == 2
    assert resume_point("sft", "x", "rl:r/2", registry) == entry
    with pytest.raises(ValueError, match="run rl/r already has checkpoints; pass resume=auto"):
        resume_point("rl", "r", "never", registry)


def test_engine_settings_that_save_no_full_weights_are_refused_at_start():
    from stages.checkpointing import _check_full_weights_saved

    from accelerate.utils import DistributedType

    def accelerator(**state):
        kind = DistributedType.FSDP if "fsdp_plugin" in state else DistributedType.DEEPSPEED
        return SimpleNamespace(state=SimpleNamespace(**state), distributed_type=kind)

    zero3 = SimpleNamespace(zero_stage=3, deepspeed_config={"zero_optimization": {"stage": 3}})
    with pytest.raises(ValueError, match="ZeRO-3 without stage3_gather_16bit_weights_on_model_save saves no full "
                                         "weights: set zero3_save_16bit_model: true"):
        _check_full_weights_saved(accelerator(deepspeed_plugin=zero3))
    zero3.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    _check_full_weights_saved(accelerator(deepspeed_plugin=zero3))
    with pytest.raises(ValueError, match="FSDP1 with SHARDED_STATE_DICT saves no full weights: set "
                                         "fsdp_state_dict_type: FULL_STATE_DICT, or use fsdp_version: 2"):
        _check_full_weights_saved(accelerator(fsdp_plugin=SimpleNamespace(state_dict_type="SHARDED_STATE_DICT",
                                                                          fsdp_version=1)))
    _check_full_weights_saved(accelerator(fsdp_plugin=SimpleNamespace(state_dict_type="FULL_STATE_DICT",
                                                                      fsdp_version=1)))
    # FSDP2: sharded checkpoints for resume, the model gathered for each published entry (PublishingTrainer)
    _check_full_weights_saved(accelerator(fsdp_plugin=SimpleNamespace(state_dict_type="SHARDED_STATE_DICT",
                                                                      fsdp_version=2)))
