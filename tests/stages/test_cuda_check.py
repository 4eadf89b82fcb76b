"""Fail fast where CUDA is unusable (stages/cuda_check.py): the decision on faked machines, the facts read from a
faked torch and nvidia-smi, and the real CLI refusing in seconds on this CPU machine."""
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from stages import cuda_check
from stages.cuda_check import CudaFacts, build_for_driver, cuda_problem, decide, gpu_reasons
from stages.rl import RLConfig
from stages.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[2]
WORKS = CudaFacts("2.13.0", "13.0", True, driver="580.82.07", gpus=8)
CPU_TORCH = CudaFacts("2.13.0", None, False, driver="550.54.14", gpus=8)
OLD_DRIVER = CudaFacts("2.13.0", "13.0", False, driver="550.54.14", gpus=8,
                       torch_warning="CUDA initialization: The NVIDIA driver on your system is too old")
NO_GPU = CudaFacts("2.13.0", "13.0", False)
HIDDEN = CudaFacts("2.13.0", "12.8", False, driver="570.86.10", gpus=2, visible_devices="")


@pytest.mark.parametrize("facts, expected", [
    (WORKS, None),
    (CPU_TORCH, "torch 2.13.0 is a CPU build (torch.version.cuda is None); install a CUDA build: "
                "make install-gpu CUDA=cu126"),
    (OLD_DRIVER, "NVIDIA driver 550.54.14 is too old for torch 2.13.0's CUDA 13.0 build (needs >= 580.65.06): "
                 "make install-gpu CUDA=cu126 installs a torch this driver runs, or upgrade the driver"),
    # a CUDA 12 build runs on any driver >= 525.60.13 (minor-version compatibility); older ones run no build at all
    (CudaFacts("2.13.0", "12.8", False, driver="470.82.01", gpus=1),
     "NVIDIA driver 470.82.01 is too old for torch 2.13.0's CUDA 12.8 build (needs >= 525.60.13): upgrade the "
     "driver (torch's oldest CUDA build, 12.6, needs >= 525.60.13)"),
    (NO_GPU, "no NVIDIA GPU or driver on this machine (no nvidia-smi, no /proc/driver/nvidia/version)"),
    (HIDDEN, "CUDA_VISIBLE_DEVICES='' hides every GPU"),
    (CudaFacts("2.13.0", "12.8", False, driver="570.86.10", gpus=1, torch_warning="CUDA error: no kernel image\nx"),
     "CUDA is unusable although driver 570.86.10 and 1 GPU(s) are present: torch says CUDA error: no kernel image"),
])
def test_the_cause_is_named(facts, expected):
    assert cuda_problem(facts) == expected


@pytest.mark.parametrize("driver, build", [("580.65.06", "cu130"), ("590.1", "cu130"), ("575.51.03", "cu128"),
                                           ("570.26", "cu128"), ("560.35.03", "cu126"), ("525.60.13", "cu126"),
                                           ("525.60.12", None), ("470.82.01", None)])
def test_the_build_a_driver_runs(driver, build):
    assert build_for_driver(driver) == build


@pytest.mark.parametrize("device, reasons, facts, refused", [
    ("cuda", [], WORKS, None),
    ("auto", ["model.dtype=bfloat16"], WORKS, None),
    ("cuda", [], OLD_DRIVER, "device=cuda but CUDA is unusable: NVIDIA driver 550.54.14 is too old"),
    ("auto", ["model.dtype=bfloat16"], NO_GPU, "model.dtype=bfloat16 asks for a GPU but CUDA is unusable: no NVIDIA"),
    ("auto", ["the launcher's mixed_precision: bf16"], CPU_TORCH, "the launcher's mixed_precision: bf16 asks for a GPU"),
    # a GPU machine whose CUDA is broken: never a silent CPU run, whatever the settings
    ("auto", [], OLD_DRIVER, "this machine has an NVIDIA GPU but CUDA is unusable: NVIDIA driver 550.54.14"),
    # a machine without GPUs, nothing asking for one: the CPU run
    ("auto", [], NO_GPU, None),
    # asked for: the CPU, also where CUDA is broken or works
    ("cpu", ["model.dtype=bfloat16"], OLD_DRIVER, None),
    ("cpu", [], WORKS, None),
    ("cpu", ["use_vllm=true"], WORKS, "device=cpu but use_vllm=true runs on GPUs only: set use_vllm=false"),
])
def test_the_decision(device, reasons, facts, refused):
    got = decide(device, reasons, facts)
    assert got == refused if refused is None else got.startswith(refused)
    if got and device == "auto":
        assert got.endswith("(device=cpu runs on the CPU anyway)")


def test_what_asks_for_a_gpu_in_a_config_and_a_launcher():
    cfg = RLConfig(model={"dtype": "bfloat16"}, use_vllm=True)
    assert gpu_reasons(cfg, {}) == ["model.dtype=bfloat16", "use_vllm=true"]
    assert gpu_reasons(SFTConfig(), {"ACCELERATE_MIXED_PRECISION": "bf16"}) == ["the launcher's mixed_precision: bf16"]
    assert gpu_reasons(SFTConfig(), {"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_USE_CPU": "true"}) == []
    assert gpu_reasons(SFTConfig(), {"ACCELERATE_MIXED_PRECISION": "no"}) == []


def test_a_recipe_checks_only_the_stages_it_runs():
    from recipes.patho_r1 import PathoR1Config

    cfg = PathoR1Config(stages=["pretrain", "sft"])
    cfg.rl.use_vllm = True
    assert gpu_reasons(cfg, {}) == []
    cfg.stages = ["rl"]
    assert gpu_reasons(cfg, {}) == ["rl.use_vllm=true"]
    cfg.sft.device = "cuda"
    assert cuda_check.requested_device(cfg) == "auto"  # sft does not run
    cfg.stages = ["sft", "rl"]
    assert cuda_check.requested_device(cfg) == "cuda"


def test_device_cpu_hides_the_gpus_from_this_process_and_its_stages():
    environ = {}
    assert cuda_check.check(SFTConfig(device="cpu"), environ) is None
    assert environ["CUDA_VISIBLE_DEVICES"] == ""


def test_the_facts_come_from_torch_and_nvidia_smi(monkeypatch, tmp_path):
    """A driver too old for the installed torch, as torch 2.x reports it: is_available() False with a warning."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 550.54.14\necho 550.54.14\n")  # --query-gpu=driver_version: one line per GPU
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")

    def unavailable():
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 12040).")
        return False

    monkeypatch.setattr(torch.cuda, "is_available", unavailable)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    facts = cuda_check.gather()
    assert (facts.torch_cuda, facts.available, facts.driver, facts.gpus, facts.visible_devices) == \
        ("13.0", False, "550.54.14", 2, "0,1")
    assert "driver on your system is too old" in facts.torch_warning
    refusal = cuda_check.check(SFTConfig(device="cuda"), {}, facts)
    assert refusal.startswith("device=cuda but CUDA is unusable: NVIDIA driver 550.54.14 is too old for torch")


@pytest.mark.parametrize("module, args, cause", [
    ("recipes.sft", ["device=cuda"], "recipes.sft: error: device=cuda but CUDA is unusable: "),
    ("recipes.rl", ["model.dtype=bfloat16"], "recipes.rl: error: model.dtype=bfloat16 asks for a GPU but CUDA is "
                                             "unusable: "),
])
def test_the_cli_refuses_in_seconds_with_one_line(module, args, cause, tmp_path):
    """On this machine (CPU torch, no GPU) a run meant for GPUs stops before any model or data loads."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATHOR1_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and cause in lines[0], out.stderr
    assert not any(tmp_path.iterdir()), "nothing may be built or written before the refusal"
    assert time.monotonic() - started < 240  # seconds on an idle machine; this one is shared by 8 jobs
