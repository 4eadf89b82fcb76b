#!/usr/bin/env python3
"""`make install-gpu [CUDA=cu126|cu128|cu130]` and `make install-flash-attn`: the pip commands for this machine's CUDA.

    python scripts/install_gpu.py detect                       # the build this machine's NVIDIA driver runs
    python scripts/install_gpu.py install --cuda cu128 [--dry-run]
    python scripts/install_gpu.py flash-attn [--dry-run]

Why: torch 2.13 on PyPI is the CUDA 13.0 build (driver >= 580); on an older driver ``torch.cuda.is_available()`` is
False and every run would fall to the CPU. torch publishes the CUDA 12 builds on its own per-CUDA indexes
(download.pytorch.org/whl/cuXXX, versions ``2.13.0+cuXXX``) and vLLM attaches per-CUDA wheels to its GitHub
releases (``vllm-V+cuXXX-cp38-abi3-manylinux_2_35_x86_64.whl``, the pattern vLLM's install guide gives); PyPI's
vllm is built for PyPI's torch. So:

- cu130: requirements-gpu.lock exactly as resolved (PyPI torch, PyPI vllm, the CUDA 13 nvidia-* wheels);
- cu128 / cu126: the same lock without its CUDA-13-only pins (torch, torchvision, torchaudio, vllm, nvidia-*, cuda-*),
  plus ``torch==2.13.0+cuXXX`` (and torchvision, torchaudio) from torch's index and vLLM's cuXXX wheel, in ONE pip
  resolution; the nvidia-* CUDA 12 runtime wheels are whatever those torch / vLLM builds require.

flash-attn ships no wheel for torch 2.13 (its release wheels stop at older torch), so pip builds it from source
against the installed torch: that needs ``nvcc`` of the same CUDA major as torch's build. ``flash-attn`` checks
that first and says what to do instead (attn_implementation=sdpa, the default without flash-attn, works).
This script needs only the standard library (it runs before torch is installed); the driver table is
``stages.cuda_check.CUDA_BUILDS``, shared with the fail-fast check.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stages.cuda_check import CUDA_BUILDS, nvidia_driver, build_for_driver  # noqa: E402

from locks import normalize, pins as lock_pins  # noqa: E402  (scripts/locks.py, beside this file)

GPU_LOCK = ROOT / "requirements-gpu.lock"
PYPI_BUILD = "cu130"  # the CUDA build of torch 2.13.0 and vllm 0.31.0 on PyPI
TORCH_INDEX = "https://download.pytorch.org/whl/{cuda}"
VLLM_WHEEL = ("https://github.com/vllm-project/vllm/releases/download/v{version}/"
              "vllm-{version}+{cuda}-cp38-abi3-manylinux_2_35_x86_64.whl")
# pins of the GPU lock that belong to PyPI's CUDA 13 build and are replaced for another CUDA
_CUDA_SPECIFIC = re.compile(r"^(torch|torchvision|torchaudio|vllm|nvidia-.*|cuda-.*|cupy-cuda.*)$")
_TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
FLASH_ATTN_VERSION = "2.8.3.post2"


class InstallError(RuntimeError):
    """The machine cannot take this install; the message says what to do."""


def detect(driver: str | None) -> str:
    """The CUDA build for a driver version (nvidia-smi's), or InstallError naming why there is none."""
    if driver is None:
        raise InstallError("no NVIDIA driver found (no nvidia-smi, no /proc/driver/nvidia/version): on a GPU machine "
                           "name the build yourself, make install-gpu CUDA=cu126|cu128|cu130")
    build = build_for_driver(driver)
    if build is None:
        oldest = ".".join(map(str, CUDA_BUILDS["cu126"][1]))
        raise InstallError(f"NVIDIA driver {driver} runs none of torch 2.13's CUDA builds (the oldest, cu126, needs "
                           f">= {oldest}): upgrade the driver")
    return build


def install_commands(cuda: str, python: str, lock_text: str, requirements: Path) -> tuple[str, list[list[str]]]:
    """(the requirements file's text, the pip commands) that install the GPU lock for ``cuda``."""
    if cuda not in CUDA_BUILDS:
        raise InstallError(f"CUDA must be one of {'|'.join(CUDA_BUILDS)}, got {cuda!r}")
    pip = [python, "-m", "pip", "install"]
    if cuda == PYPI_BUILD:
        return lock_text, [[*pip, "-c", str(requirements), "-r", str(requirements)]]
    pins = lock_pins(lock_text)
    kept = [line for line in lock_text.splitlines(keepends=True)
            if not ("==" in line and _CUDA_SPECIFIC.match(normalize(line.split("==")[0].strip())))]
    cuda_pins = [f"{name}=={pins[name].split('+')[0]}+{cuda}" for name in _TORCH_FAMILY if name in pins]
    vllm = VLLM_WHEEL.format(version=pins["vllm"], cuda=cuda)
    header = (f"# requirements-gpu.lock for {cuda}: its CUDA 13 pins (torch, vllm, nvidia-*, cuda-*) replaced by "
              f"torch's {cuda} index and vLLM's {cuda} wheel (scripts/install_gpu.py)\n")
    return header + "".join(kept), [[*pip, "--extra-index-url", TORCH_INDEX.format(cuda=cuda), "-c",
                                     str(requirements), "-r", str(requirements), *cuda_pins, f"vllm @ {vllm}"]]


def flash_attn_commands(python: str, torch_cuda: str | None, nvcc_version: str | None) -> list[list[str]]:
    """The pip command that builds flash-attn against the installed torch, or InstallError saying why it cannot."""
    if torch_cuda is None:
        raise InstallError("flash-attn needs a CUDA build of torch: run make install-gpu first")
    if nvcc_version is None:
        raise InstallError(f"flash-attn {FLASH_ATTN_VERSION} publishes no wheel for torch 2.13, so pip compiles it, "
                           f"which needs nvcc from a CUDA {torch_cuda.split('.')[0]} toolkit (none on PATH): install "
                           f"the toolkit (or set CUDA_HOME), or keep attn_implementation=sdpa (the default without "
                           f"flash-attn)")
    if nvcc_version.split(".")[0] != torch_cuda.split(".")[0]:
        raise InstallError(f"nvcc is CUDA {nvcc_version} but torch is built for CUDA {torch_cuda}: flash-attn must "
                           f"be compiled with the same CUDA major; put the CUDA {torch_cuda.split('.')[0]} nvcc first "
                           f"on PATH (or set CUDA_HOME)")
    # --no-build-isolation: the build imports the installed torch; MAX_JOBS keeps the compile within host RAM
    return [[python, "-m", "pip", "install", "--no-build-isolation", f"flash-attn=={FLASH_ATTN_VERSION}"]]


def _nvcc_version() -> str | None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def _torch_cuda(python: str) -> str | None:
    out = subprocess.run([python, "-c", "import torch; print(torch.version.cuda)"], capture_output=True, text=True)
    value = out.stdout.strip()
    return None if out.returncode or value in ("", "None") else value


def _run(commands: list[list[str]], dry_run: bool, env_note: str = "") -> int:
    for command in commands:
        print(f"{env_note}{shlex.join(command)}", flush=True)
        if not dry_run:
            code = subprocess.run(command, env={**os.environ, "DS_BUILD_OPS": "0"}).returncode
            if code:
                return code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/install_gpu.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("detect", help="print the CUDA build (cu126|cu128|cu130) this machine's NVIDIA driver runs")
    inst = sub.add_parser("install", help="install requirements-gpu.lock for one CUDA build")
    inst.add_argument("--cuda", default="", help="cu126|cu128|cu130; empty = from the driver")
    inst.add_argument("--python", default=sys.executable)
    inst.add_argument("--requirements", type=Path, help="where to write the requirements file for this build")
    inst.add_argument("--dry-run", action="store_true", help="print the commands only")
    fa = sub.add_parser("flash-attn", help="build flash-attn against the installed torch")
    fa.add_argument("--python", default=sys.executable)
    fa.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "detect":
            print(detect(nvidia_driver()[0]))
            return 0
        if args.command == "install":
            cuda = args.cuda or detect(nvidia_driver()[0])
            requirements = GPU_LOCK if cuda == PYPI_BUILD else \
                args.requirements or Path(args.python).parent.parent / f"requirements-gpu-{cuda}.txt"
            text, commands = install_commands(cuda, args.python, GPU_LOCK.read_text(), requirements)
            if requirements != GPU_LOCK:
                requirements.parent.mkdir(parents=True, exist_ok=True)
                requirements.write_text(text)
            print(f"install-gpu: CUDA build {cuda}" + ("" if args.cuda else " (from the NVIDIA driver)"), flush=True)
            return _run(commands, args.dry_run, "DS_BUILD_OPS=0 ")
        return _run(flash_attn_commands(args.python, _torch_cuda(args.python), _nvcc_version()), args.dry_run)
    except InstallError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
