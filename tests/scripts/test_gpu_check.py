"""``make gpu-check`` (scripts/gpu_check.py) and ``make gpu-wheels`` (scripts/gpu_wheels.sh).

The check: pretrain -> SFT -> RL, SFT under DeepSpeed ZeRO-2 on one rank, and the shared-prefix forward vs TRL's
under gradient checkpointing; peak memory per stage; one JSON line.

The GPU machine lacks most of pathor1's dependencies, so the carried wheel list is checked against a Python that
has only the GPU machine's packages (tests/scripts/gpu_box.py); the slow test runs the whole check there on the
CPU with the tiny preset; the gpu test runs the real check where CUDA is present."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts.gpu_box import make_box_python

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402

# Every module the check's stage processes import (the stages also import some lazily, inside run()).
USED = ["stages.model", "stages.config", "stages.engine", "stages.pretrain", "stages.sft", "stages.rl",
        "stages.rl.training", "stages.rl.trainer", "stages.rl.rewards", "stages.rl.prefix_cache", "corpora.demo",
        "corpora.readers", "corpora.validate", "deepspeed", "accelerate.commands.launch"]


def box_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")


def carried_distributions() -> list[str]:
    return sorted(set(gpu_check.CARRIED.values()) - {"pyarrow", "fsspec"})  # the GPU machine has these two


def test_the_wheel_script_downloads_exactly_the_carried_distributions():
    script = (REPO / "scripts" / "gpu_wheels.sh").read_text()
    packages = re.search(r'^PACKAGES="([^"]+)"', script, re.M).group(1).split()
    built = re.search(r'^BUILT="([^"]+)"', script, re.M).group(1).split()
    assert sorted(packages + built) == sorted(set(gpu_check.CARRIED.values()))
    assert built == list(gpu_check.BUILT) and "DS_BUILD_OPS=0 $PIP wheel" in script  # deepspeed: an sdist
    assert "--no-deps" in (REPO / "scripts" / "gpu_wheels.sh").read_text()
    assert "/.gpu-wheels/" in (REPO / ".gitignore").read_text().splitlines()


def test_the_carried_wheels_are_all_the_stages_need_on_the_gpu_machine(tmp_path):
    probe = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('imported')"
    bare = make_box_python(tmp_path / "bare")
    # the simulated machine really lacks them: TRL and datasets do not import
    out = subprocess.run([str(bare), "-c", probe, "trl"], capture_output=True, text=True, env=box_env(), timeout=120)
    assert "No module named 'trl'" in out.stderr
    out = subprocess.run([str(bare), "-c", probe, "datasets"], capture_output=True, text=True, env=box_env(),
                         timeout=120)
    assert "No module named 'datasets'" in out.stderr
    # with the carried distributions alone (no dependencies of theirs), everything the check uses imports
    box = make_box_python(tmp_path / "box", carried=carried_distributions())
    out = subprocess.run([str(box), "-c", probe, *USED], capture_output=True, text=True, env=box_env(), timeout=300)
    # (deepspeed logs its CPU-accelerator warning to stdout first)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "imported", out.stderr[-3000:]
    # and the check would install no more than that: nothing else is missing
    out = subprocess.run([str(box), "-c", f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import gpu_check; "
                          "print(gpu_check.missing_modules())"], capture_output=True, text=True, env=box_env(),
                         timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_a_machine_without_the_wheels_is_told_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "missing_modules", lambda: ["trl"])
    with pytest.raises(SystemExit, match=r"lacks \['trl'\] and .*nowhere has no wheel for them: run `make gpu-wheels`"):
        gpu_check.install_wheels(tmp_path / "nowhere", tmp_path / "site")


def _check_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, stdout[-3000:]  # ONE JSON line
    return json.loads(lines[0])


@pytest.mark.slow
def test_the_check_runs_on_the_cpu_with_the_tiny_preset_on_a_gpu_machine_python(tmp_path):
    """The dry run: the GPU machine's packages only. With PATHOR1_GPU_WHEELS (wheels for this Python, e.g.
    ``GPU_WHEELS_PYTHON=3.11 GPU_WHEELS_DIR=/tmp/w311 make gpu-wheels``) they are installed from the folder as on
    the GPU machine; without it the carried distributions are linked in instead."""
    wheels = os.environ.get("PATHOR1_GPU_WHEELS")
    box = make_box_python(tmp_path / "box", carried=() if wheels else carried_distributions())
    argv = [str(box), str(SCRIPT), "--device", "cpu", "--tiny", "--work", str(tmp_path / "work")]
    out = subprocess.run(argv + (["--wheels", wheels] if wheels else []), capture_output=True, text=True,
                         env=box_env(), timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    result = _check_json(out.stdout)
    assert result["ok"] and result["entries_load"] == {"pretrain": True, "sft": True, "rl": True, "sft_zero2": True}
    assert result["attention"] == "sdpa" and result["gradient_checkpointing"]
    for stage in ("pretrain", "sft", "rl", "sft_zero2"):
        s = result["stages"][stage]
        assert s["tokens_per_s"] > 0 and s["loss_first"] is not None and s["loss_last"] is not None, s
        assert s["peak_rss_gib"] > 0 and "peak_gpu_mem_gib" in s  # None on the CPU
    assert result["stages"]["sft"]["steps"] == 3 and result["stages"]["rl"]["steps"] == 1
    # DeepSpeed ZeRO-2 really ran the fourth stage (its manifest says so), on one rank
    assert result["stages"]["sft_zero2"]["engine"] == "deepspeed-zero2" and result["stages"]["sft_zero2"]["steps"] == 2
    assert result["stages"]["sft"]["engine"] == "single"
    # the shared-prefix forward ran under gradient checkpointing and matched TRL's (fp32 here: far inside bf16's)
    prefix = result["shared_prefix"]
    assert prefix["shared_forward_ran"] and prefix["checkpointed_layers"] > 0 and prefix["within_bf16_tolerance"]
    assert prefix["completion_tokens"] > 0 and prefix["logp_max_abs_diff"] < 1e-4 and prefix["grad_cosine"] > 0.9999
    # installed from the folder: exactly what the machine lacked; linked in: nothing was missing
    assert ({"trl", "datasets", "jsonlines"} <= set(result["carried_wheels"])) if wheels else not result["carried_wheels"]


@pytest.mark.gpu
def test_the_gpu_check_fits_its_budget(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path / "work")], capture_output=True,
                         text=True, env=box_env(), timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    result = _check_json(out.stdout)
    assert result["ok"] and result["wall_s"] <= 300 and result["dtype"] == "bfloat16"  # one command, < 5 min
    assert 4e8 <= result["parameters"] <= 7e8
    for s in result["stages"].values():
        assert s["peak_gpu_mem_gib"] > 0 and s["tokens_per_s"] > 0
    assert result["stages"]["sft_zero2"]["engine"] == "deepspeed-zero2"
    prefix = result["shared_prefix"]
    assert prefix["shared_forward_ran"] and prefix["within_bf16_tolerance"] and prefix["peak_gpu_mem_gib"] > 0
