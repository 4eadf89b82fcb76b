"""Run a stage as a 2-rank gloo job under one of the engines, and check what it published.

Each engine is one shipped accelerate config (recipes/configs/accelerate/cpu_*.yaml) started with
``accelerate launch``; the run goes through ``tests.reliability.launch`` so the ``gathered`` probe can dump the
parameters every rank gathered together after ``train()`` (what the engine really trained).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from stages.registry import Registry
from tests.reliability.children import REPO, child_env, free_port

RANKS = 2
CONFIGS = REPO / "recipes" / "configs" / "accelerate"
ENGINES = {
    "ddp": CONFIGS / "cpu_ddp2.yaml",
    "deepspeed-zero2": CONFIGS / "cpu_zero2.yaml",
    "deepspeed-zero3": CONFIGS / "cpu_zero3.yaml",
    "fsdp2": CONFIGS / "cpu_fsdp2.yaml",
}
# DeepSpeed JIT-compiles deepspeed_shm_comm on its first CPU run (~2 min, cached under ~/.cache/torch_extensions).
TIMEOUT = 900


def launch(engine: str, module: str, args: list[str], *, timeout: int = TIMEOUT, config: Path | None = None,
           **probes) -> str:
    """Run ``module`` under ``engine`` (or the accelerate ``config`` given) on 2 ranks; fail the test on a hang
    (timeout) or a non-zero exit."""
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config or ENGINES[engine]),
            "--num_processes", str(RANKS), "--main_process_port", str(free_port()),
            "-m", "tests.reliability.launch", module, *args]
    try:
        proc = subprocess.run(argv, cwd=REPO, env=child_env(**probes), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        pytest.fail(f"{module} under {engine} hung (no exit within {timeout} s):\n{out[-6000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{module} under {engine} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc.stdout + proc.stderr


def plain_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder loaded the way a user would: plain AutoModelForImageTextToText, nothing of pathor1."""
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def merged_from_gathered(gathered: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Full weights computed by hand from a gathered peft state dict: W + scale * B @ A for every adapted layer,
    the trained copy for every module to save (an independent check of peft's merge)."""
    prefix, out = "base_model.model.", {}
    for key, value in gathered.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if ".lora_" in name or ".original_module." in name:
            continue
        if ".base_layer." in name:
            layer = name.split(".base_layer.")[0]
            name = name.replace(".base_layer.", ".")
            if name.endswith(".weight"):
                a, b = gathered[f"{prefix}{layer}.lora_A.default.weight"], gathered[f"{prefix}{layer}.lora_B.default.weight"]
                value = value + scale * (b @ a)
        name = name.replace(".modules_to_save.default.", ".")
        out[name] = value
    return out


def check_published(entry: Path, probe: Path, engine: str, *, lora_scale: float | None = None) -> dict:
    """The entry holds the gathered parameters as full HF weights (exactly), loads with plain transformers, and
    its manifest records the engine. Returns the loaded weights."""
    manifest = Registry().manifest(entry)
    assert manifest["extra"]["training"] == {"engine": engine, "world_size": RANKS, "mixed_precision": "no"}
    sharded = engine in ("deepspeed-zero3", "fsdp2")  # the parameters themselves were split across the ranks
    assert json.loads((probe / "engine.json").read_text()) == {"engine": engine, "world_size": RANKS,
                                                                "sharded": sharded}
    assert (entry / "README.md").read_text().count(manifest["data_fingerprint"]) == 1  # the model card
    published = plain_weights(entry)
    gathered = load_file(probe / "gathered.safetensors")
    expected = gathered if lora_scale is None else merged_from_gathered(gathered, lora_scale)
    assert published.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(published[key], value, rtol=0, atol=1e-6 if lora_scale else 0,
                                   msg=lambda m: f"{key}: {m}")
    return published


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=lambda m: f"{key}: {m}")


def moved(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def logged(entry: Path, metric: str) -> list[float]:
    """What rank 0 logged of ``metric`` at each trained step up to ``entry`` (its trainer_state's log history)."""
    state = json.loads((entry / "trainer_state" / "trainer_state.json").read_text())
    return [h[metric] for h in state["log_history"] if "loss" in h and metric in h]


def assert_prefix_shared(entry: Path, steps: int) -> None:
    """The RL shared-prefix forward (stages.rl.prefix_share) ran at every step, not only the job finished: its
    counter (cumulative in the process) grew each step, and the prompt tokens it saved are logged."""
    shared = logged(entry, "prefix_share/shared_forwards")
    assert len(shared) == steps and shared[0] >= 1 and shared == sorted(set(shared)), shared
    assert all(saving > 0 for saving in logged(entry, "prefix_share/token_saving"))
