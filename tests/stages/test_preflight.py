"""stages.preflight: every recipe fails in seconds, before any stage runs, when a package it will need is missing."""
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages import preflight
from stages.model import LoraConfig, ModelConfig
from stages.preflight import PreflightError, check, needs
from stages.rl.config import RLConfig
from stages.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def missing(monkeypatch):
    """Make the named packages look absent to importlib.util.find_spec (everything else as installed)."""
    absent: set[str] = set()
    real = importlib.util.find_spec
    monkeypatch.setattr(preflight.importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in absent else real(name, *a, **k))
    return absent


def qlora_sft() -> SFTConfig:
    return SFTConfig(model=ModelConfig(quantization="4bit", lora=LoraConfig(enabled=True)))


@pytest.mark.parametrize("package, cfg, environ, expected", [
    ("vllm", RLConfig(use_vllm=True), {},
     "  - vllm (needed by use_vllm=true): make install-gpu  (or: pip install -c requirements-gpu.lock vllm==0.31.0)"),
    ("bitsandbytes", qlora_sft(), {},
     "  - bitsandbytes (needed by model.quantization=4bit): pip install -c requirements.lock bitsandbytes  "
     "(make install pins it)"),
    ("flash_attn", RLConfig(model=ModelConfig(attn_implementation="flash_attention_2")), {},
     "  - flash_attn (needed by model.attn_implementation=flash_attention_2): make install-gpu FLASH_ATTN=1  "
     "(or: pip install --no-build-isolation flash-attn)"),
    ("deepspeed", RLConfig(), {"ACCELERATE_USE_DEEPSPEED": "true"},
     "  - deepspeed (needed by the launcher (accelerate config with distributed_type: DEEPSPEED)): make install-gpu  "
     "(or: DS_BUILD_OPS=0 pip install -c requirements-gpu.lock deepspeed==0.19.8)"),
])
def test_each_missing_package_is_named_with_its_install_command(missing, package, cfg, environ, expected):
    missing.add(package)
    with pytest.raises(PreflightError) as e:
        check(cfg, environ)
    assert str(e.value) == ("preflight: this run needs packages that are missing, install them before anything "
                            "trains:\n" + expected)


def test_nothing_is_needed_by_a_plain_cpu_run(missing):
    missing.update(preflight.INSTALL)  # even with every optional package absent
    assert needs(RLConfig(), {}) == [] and needs(SFTConfig(), {}) == []
    check(RLConfig(), {})


def test_installed_packages_pass(missing):
    check(qlora_sft(), {"ACCELERATE_USE_DEEPSPEED": "true"})  # bitsandbytes and deepspeed are in the test venv


def test_a_vllm_outside_trls_range_is_refused(missing, monkeypatch):
    real_find, real_version = importlib.util.find_spec, importlib.metadata.version
    monkeypatch.setattr(preflight.importlib.util, "find_spec",
                        lambda name, *a, **k: object() if name == "vllm" else real_find(name, *a, **k))
    monkeypatch.setattr(preflight.importlib.metadata, "version",
                        lambda name: "0.33.0" if name == "vllm" else real_version(name))
    with pytest.raises(PreflightError, match=r"vllm 0.33.0 is installed but TRL 1.16 runs 0.22.0-0.31.0 "
                                             r"\(needed by use_vllm=true\)"):
        check(RLConfig(use_vllm=True), {})
    monkeypatch.setattr(preflight.importlib.metadata, "version", lambda name: "0.31.0+cu129")
    check(RLConfig(use_vllm=True), {})


def test_a_recipe_is_checked_only_for_the_stages_it_runs():
    from recipes.patho_r1 import PathoR1Config

    cfg = PathoR1Config(rl=RLConfig(use_vllm=True), stages=["pretrain", "sft"])
    assert needs(cfg, {}) == []
    cfg.stages = ["pretrain", "sft", "rl"]
    assert [(n.package, n.reason) for n in needs(cfg, {})] == [("vllm", "rl.use_vllm=true")]


@pytest.mark.parametrize("recipe, args", [
    ("recipes.patho_r1", ["rl.use_vllm=true"]),
    ("recipes.medvlm_r1", ["rl.use_vllm=true"]),
    ("recipes.med_r1", ["rl.use_vllm=true"]),
    ("recipes.rl", ["use_vllm=true"]),
    ("recipes.sft", ["model.attn_implementation=flash_attention_2"]),
    ("recipes.pretrain", ["model.attn_implementation=flash_attention_2"]),
])
def test_every_recipe_main_stops_before_any_stage(missing, monkeypatch, capsys, tmp_path, recipe, args):
    import importlib

    module = importlib.import_module(recipe)
    missing.update({"vllm", "flash_attn"})
    monkeypatch.setattr(module, "run", lambda *a, **k: pytest.fail("a stage ran"), raising=False)
    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        module.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    package = "vllm" if "vllm" in args[0] else "flash_attn"
    assert err.startswith(f"python -m {recipe}: error: preflight: this run needs packages that are missing")
    assert f"  - {package} (needed by {args[0]}): make install-gpu" in err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_the_rl_command_fails_in_seconds_without_vllm(tmp_path):
    env = {**os.environ, "PATHOR1_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "recipes.rl", "use_vllm=true"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "  - vllm (needed by use_vllm=true): make install-gpu" in out.stderr
    assert not (tmp_path / "home").exists()  # nothing was built, loaded or written
    assert time.monotonic() - start < 60
