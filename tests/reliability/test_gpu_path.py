"""The GPU path, decided on CPU: with CUDA (and flash-attn) mocked, ``dtype=auto`` resolves to bfloat16, attention
to flash_attention_2 when flash-attn is importable and half precision is used (else sdpa), and the Trainer / TRL /
open_clip_train arguments ask for bf16 / amp on CUDA and for nothing of the kind on CPU. The ``gpu`` test runs a
tiny SFT in bf16 for real and is skipped without CUDA."""
import importlib.util
from pathlib import Path

import pytest
import torch

from pathoclip.train import CLIPTrainConfig, open_clip_argv
from stages import engine
from stages import model as factory
from stages.model import ModelConfig, load_model
from stages.rl import RLConfig
from stages.rl import training as rl_training
from stages.sft import SFTConfig

REAL_FIND_SPEC = importlib.util.find_spec


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA machine, as far as the code paths that choose dtype and attention can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture
def flash_attn(monkeypatch):
    """flash-attn importable (without importing it)."""
    def find_spec(name, *args):
        return object() if name == "flash_attn" else REAL_FIND_SPEC(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def no_flash_attn(monkeypatch):
    def find_spec(name, *args):
        return None if name == "flash_attn" else REAL_FIND_SPEC(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_auto_dtype_is_bf16_on_cuda_and_fp32_on_cpu(gpu):
    assert factory._resolve_dtype("auto") is torch.bfloat16
    assert factory._resolve_dtype("float32") is torch.float32  # an explicit choice is kept


def test_auto_dtype_on_cpu():
    assert not torch.cuda.is_available()
    assert factory._resolve_dtype("auto") is torch.float32


@pytest.mark.parametrize("dtype, expected", [(torch.bfloat16, "flash_attention_2"), (torch.float16, "flash_attention_2"),
                                             (torch.float32, "sdpa")])  # flash-attn kernels are half precision only
def test_auto_attention_with_flash_attn_on_cuda(gpu, flash_attn, dtype, expected):
    assert factory._resolve_attention("auto", dtype) == expected
    assert factory._resolve_attention("eager", dtype) == "eager"


def test_auto_attention_without_flash_attn_is_sdpa(gpu, no_flash_attn):
    assert factory._resolve_attention("auto", torch.bfloat16) == "sdpa"


def test_auto_attention_on_cpu_is_sdpa_even_with_flash_attn(flash_attn):
    assert factory._resolve_attention("auto", torch.bfloat16) == "sdpa"


def test_load_model_auto_on_cuda_loads_bf16_with_sdpa(gpu, no_flash_attn, tiny):
    model, _ = load_model(ModelConfig(name_or_path=str(tiny)))  # the weights stay on the CPU: only choices are mocked
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "sdpa"


def capture_kwargs(monkeypatch, owner, name) -> dict:
    seen = {}
    monkeypatch.setattr(owner, name, lambda **kwargs: seen.update(kwargs) or kwargs)
    return seen


@pytest.mark.parametrize("cuda", [True, False])
def test_trainer_arguments_ask_for_bf16_only_on_cuda(cuda, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    stage = capture_kwargs(monkeypatch, engine, "TrainingArguments")
    engine.training_arguments(SFTConfig(), tmp_path)
    assert stage["bf16"] is cuda and stage["use_cpu"] is (not cuda) and stage["dataloader_pin_memory"] is cuda
    # an explicit fp32 model is not trained in bf16 on CUDA either
    engine.training_arguments(SFTConfig(model=ModelConfig(dtype="float32")), tmp_path)
    assert stage["bf16"] is False

    import trl

    rl = capture_kwargs(monkeypatch, trl, "GRPOConfig")
    rl_training.grpo_args(RLConfig().resolved(), tmp_path)
    assert rl["bf16"] is cuda and rl["use_cpu"] is (not cuda)


@pytest.mark.parametrize("cuda, device, precision", [(True, "cuda", "amp"), (False, "cpu", "fp32")])
def test_pathoclip_picks_device_and_precision(cuda, device, precision, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    argv = open_clip_argv(CLIPTrainConfig(), tmp_path, "b", [], 1, "PathoCLIP-Tiny", None)
    assert argv[argv.index("--device") + 1] == device and argv[argv.index("--precision") + 1] == precision


@pytest.mark.gpu
def test_tiny_sft_trains_in_bf16_on_a_gpu(demo, tiny, capsys):
    from recipes import sft as sft_recipe

    assert sft_recipe.main([f"data={demo.root}", f"init={tiny}", "max_steps=2", "batch_size=2"]) == 0
    final = Path(capsys.readouterr().out.strip().splitlines()[-1])
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(final / "model.safetensors").values()} == {torch.bfloat16}
