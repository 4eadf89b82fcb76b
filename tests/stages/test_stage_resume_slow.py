"""Longer resume checks (``make test-slow``): LoRA adapters with gradient accumulation, stopped at an epoch
boundary, end with the weights of an uninterrupted run; the merged checkpoint is a plain HF folder."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from corpora.demo import build_demo
from recipes import sft as sft_recipe
from stages.engine import TRAINER_STATE_DIR

pytestmark = pytest.mark.slow


def run(argv, capsys) -> Path:
    assert sft_recipe.main(argv) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def test_lora_resume_with_grad_accum_matches_uninterrupted(tmp_path, capsys):
    demo = build_demo(tmp_path / "demo", n_train=6, n_eval=4, image_size=56)  # 12 SFT samples: 3 steps of 2x2 per epoch
    common = [f"data={demo.sft}", "max_steps=6", "batch_size=2", "grad_accum=2", "lr=1e-3", "warmup_ratio=0",
              "model.lora.enabled=true", "model.lora.r=4", "model.lora.dropout=0.1", "train=projector_llm"]
    full = run([*common, "run=full"], capsys)
    assert run([*common, "run=part", "stop_after=3"], capsys).name == "step-00000003"
    resumed = run([*common, "run=part"], capsys)
    assert (resumed / TRAINER_STATE_DIR / "adapter_model.safetensors").is_file()
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    merged = AutoModelForImageTextToText.from_pretrained(resumed)  # LoRA merged: no peft needed to load it
    assert not any("lora" in name for name, _ in merged.named_parameters())
