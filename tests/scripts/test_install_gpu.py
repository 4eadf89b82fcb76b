"""`make install-gpu CUDA=...`, `make install-flash-attn` and the claimed Pythons (scripts/install_gpu.py, locks.py).

No CUDA index is reachable here, so these check the commands built: which torch index and vLLM wheel each CUDA
build gets, what the lock keeps, the stamps that make FLASH_ATTN=1 after a plain install do something, and the
messages where no build fits. The resolutions themselves are `make gpu-lock CHECK=1` (network, ~10 min each).
"""
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import install_gpu  # noqa: E402
import locks  # noqa: E402

LOCK = (ROOT / "requirements-gpu.lock").read_text()


def test_cu130_installs_the_lock_as_resolved():
    text, commands = install_gpu.install_commands("cu130", "py", LOCK, Path("requirements-gpu.lock"))
    assert text == LOCK
    assert commands == [["py", "-m", "pip", "install", "-c", "requirements-gpu.lock", "-r", "requirements-gpu.lock"]]


@pytest.mark.parametrize("cuda", ["cu126", "cu128"])
def test_a_cuda_12_build_takes_torch_index_and_vllms_wheel_in_one_resolution(cuda, tmp_path):
    text, commands = install_gpu.install_commands(cuda, "py", LOCK, tmp_path / "req.txt")
    kept, locked = locks.pins(text), locks.pins(LOCK)
    # every pin that is not CUDA 13 specific stays: the same transformers / trl / deepspeed as the CPU tests
    assert {k: v for k, v in locked.items() if k in kept} == kept
    assert kept["transformers"] == locked["transformers"] and kept["deepspeed"] == locked["deepspeed"]
    gone = sorted(set(locked) - set(kept))
    assert {"torch", "torchvision", "vllm", "nvidia-nccl-cu13", "cuda-toolkit"} <= set(gone)
    assert all(re.match(r"(torch|torchvision|torchaudio|vllm|nvidia-|cuda-)", g) for g in gone), gone
    [command] = commands
    assert command[:4] == ["py", "-m", "pip", "install"]
    assert command[command.index("--extra-index-url") + 1] == f"https://download.pytorch.org/whl/{cuda}"
    assert f"torch==2.13.0+{cuda}" in command and f"torchvision==0.28.0+{cuda}" in command
    assert command[-1] == (f"vllm @ https://github.com/vllm-project/vllm/releases/download/v0.31.0/"
                           f"vllm-0.31.0+{cuda}-cp38-abi3-manylinux_2_35_x86_64.whl")


def test_install_writes_the_build_requirements_and_prints_the_command(tmp_path, capsys):
    req = tmp_path / "req-cu126.txt"
    assert install_gpu.main(["install", "--cuda", "cu126", "--python", "py", "--requirements", str(req),
                             "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "install-gpu: CUDA build cu126"
    assert out[1].startswith("DS_BUILD_OPS=0 py -m pip install --extra-index-url https://download.pytorch.org/whl/cu126")
    assert "torch" not in locks.pins(req.read_text()) and locks.pins(req.read_text())["trl"] == "1.16.0"


@pytest.mark.parametrize("driver, expected", [
    ("580.82.07", "cu130"), ("570.133.20", "cu128"), ("550.54.14", "cu126"),
    (None, "no NVIDIA driver found"), ("470.82.01", "NVIDIA driver 470.82.01 runs none of torch 2.13's CUDA builds"),
])
def test_the_default_build_comes_from_the_driver(driver, expected):
    if expected.startswith("cu"):
        assert install_gpu.detect(driver) == expected
    else:
        with pytest.raises(install_gpu.InstallError, match=expected):
            install_gpu.detect(driver)


def test_an_unknown_build_is_refused(capsys):
    assert install_gpu.main(["install", "--cuda", "cu118", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == \
        "scripts/install_gpu.py: error: CUDA must be one of cu130|cu128|cu126, got 'cu118'"


@pytest.mark.parametrize("torch_cuda, nvcc, message", [
    (None, "13.0", "flash-attn needs a CUDA build of torch: run make install-gpu first"),
    ("13.0", None, "publishes no wheel for torch 2.13, so pip compiles it, which needs nvcc from a CUDA 13 toolkit "
                   "(none on PATH)"),
    ("12.8", "13.0", "nvcc is CUDA 13.0 but torch is built for CUDA 12.8"),
])
def test_flash_attn_says_why_it_cannot_build(torch_cuda, nvcc, message):
    with pytest.raises(install_gpu.InstallError, match=re.escape(message)):
        install_gpu.flash_attn_commands("py", torch_cuda, nvcc)


def test_flash_attn_builds_against_the_installed_torch():
    assert install_gpu.flash_attn_commands("py", "12.8", "12.6") == [
        ["py", "-m", "pip", "install", "--no-build-isolation", "flash-attn==2.8.3.post2"]]


def _make(tmp_path, *args):
    out = subprocess.run(["make", "-n", "--no-print-directory", f"VENV={tmp_path}", "PYTHON=python3", *args],
                         cwd=ROOT, capture_output=True, text=True)
    return out.returncode, out.stdout + out.stderr


def _stamp(path: Path):
    path.touch()
    later = max((ROOT / f).stat().st_mtime for f in ("pyproject.toml", "requirements.lock", "requirements-gpu.lock")) + 10
    os.utime(path, (later, later))


def test_make_stamps_each_option(tmp_path):
    _stamp(tmp_path / ".pathor1-installed")
    code, out = _make(tmp_path, "install-gpu", "CUDA=cu128")
    assert code == 0 and "scripts/install_gpu.py install --cuda cu128" in out and "install_gpu.py flash-attn" not in out
    _stamp(tmp_path / ".pathor1-gpu-cu128")  # the plain install done
    code, out = _make(tmp_path, "install-gpu", "CUDA=cu128")
    assert code == 0 and "install_gpu.py" not in out  # nothing left to do
    code, out = _make(tmp_path, "install-gpu", "CUDA=cu128", "FLASH_ATTN=1")
    assert code == 0 and "scripts/install_gpu.py flash-attn" in out and "install --cuda" not in out
    code, out = _make(tmp_path, "install-gpu", "CUDA=cu130")  # another build: reinstall, flash-attn stamp dropped
    assert "install --cuda cu130" in out and ".pathor1-flash-attn" in out


def test_make_without_a_build_says_how_to_choose(tmp_path):
    code, out = _make(tmp_path, "install-gpu", "CUDA=cu99")
    assert "install-gpu: CUDA='cu99': choose CUDA=cu126|cu128|cu130" in out


def test_make_gpu_lock_check_resolves_under_every_claimed_python():
    out = subprocess.run(["make", "-n", "--no-print-directory", "gpu-lock", "CHECK=1", "PYTHON=python3"], cwd=ROOT, capture_output=True,
                         text=True).stdout.split()
    assert out[:3] == ["python3", "scripts/locks.py", "check"]
    versions = [subprocess.run([p, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                               text=True).stdout.strip() if Path(p).exists() else p for p in out[3:]]
    assert versions == locks.claimed_minors() == ["3.11", "3.12", "3.13"]


def test_the_claimed_pythons_are_the_ones_the_locked_packages_accept():
    """requires-python is true to the locks: every locked package installed here admits every claimed Python, and
    the lowest claimed is the one the strictest of them needs (numpy 2.4 / pandas 3.1 / scipy 1.17: 3.11)."""
    from packaging.specifiers import SpecifierSet

    claimed = locks.claimed_minors()
    lowest_needed = "3.0"
    for name, version in locks.pins((ROOT / "requirements.lock").read_text()).items():
        try:
            meta = importlib.metadata.metadata(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if meta["Version"] != version or not meta.get("Requires-Python"):
            continue
        spec = SpecifierSet(meta["Requires-Python"])
        assert all(spec.contains(f"{v}.0") for v in claimed), f"{name} {version} requires Python {spec}"
        for minor in range(8, 14):
            if not spec.contains(f"3.{minor}.0"):
                lowest_needed = max(lowest_needed, f"3.{minor + 1}", key=lambda v: tuple(map(int, v.split("."))))
    assert claimed[0] == lowest_needed == "3.11"


def test_the_check_compares_the_resolution_with_the_lock():
    assert locks.compare({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "2"}) == []  # c: a marker excludes it
    assert locks.compare({"a": "1"}, {"a": "2", "x": "9"}) == [
        "a: lock 1, resolved 2", "x==9: resolved but not in the lock (would install unpinned)"]


def test_the_gpu_lock_keeps_setuptools_below_what_vllm_forbids_on_312():
    """vllm 0.31.0 requires setuptools<81 on Python > 3.11: a lock with 84 could not install on 3.12."""
    pins = locks.pins(LOCK)
    assert pins["vllm"] == "0.31.0" and tuple(map(int, pins["setuptools"].split(".")[:1])) < (81,)


def test_gpu_base_drops_what_the_gpu_in_repins():
    assert locks.gpu_base("numpy==2.4.6\ntorch==2.13.0\n# c\n", "numpy==2.3.5\n") == "torch==2.13.0\n# c\n"
