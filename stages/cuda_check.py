"""Fail fast when a run meant for GPUs meets a machine where CUDA is unusable, and say why.

Without it, an NVIDIA driver older than torch's CUDA build makes ``torch.cuda.is_available()`` False and every
"auto" choice quietly turns to the CPU: a 7B run trained in fp32 over gloo, filling host RAM, for hours. Here the
run stops before any model loads with one line naming the cause, one of

- torch is a CPU build (``torch.version.cuda`` is None);
- no NVIDIA GPU / driver on the machine;
- the driver is older than torch's CUDA build needs (CUDA 13 builds need >= 580, CUDA 12 >= 525);
- ``CUDA_VISIBLE_DEVICES`` hides every GPU, or CUDA failed for another reason (torch's own warning quoted).

``device`` (stage and recipe configs): ``cuda`` needs CUDA; ``cpu`` trains on the CPU even where a GPU works (the
demo configs say so); ``auto`` takes CUDA when usable and the CPU only on a machine without any NVIDIA GPU and
when nothing in the run asks for a GPU (bf16/fp16 weights, vLLM, a launcher with bf16/fp16 mixed precision).

The decision is a pure function of :class:`CudaFacts` (tests fake them); :func:`gather` reads the real ones
(torch, ``nvidia-smi``, ``/proc/driver/nvidia/version``) in about a second. The CUDA build table is shared
with ``scripts/install_gpu.py`` (which torch index ``make install-gpu`` uses for a driver); no heavy import at
module level so that script can use it before torch is installed.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEVICES = ("auto", "cuda", "cpu")
# torch CUDA build tag -> (CUDA version, the driver `make install-gpu` wants for it), newest first: the default
# build is the first one the driver reaches. cu130 and cu128 take their toolkit's own driver (580.65.06, 570.26:
# NVIDIA's CUDA toolkit release notes, table 3); cu126 runs on any driver >= 525.60.13 through CUDA's minor-version
# compatibility, which is also all the fail-fast check asks of a CUDA 12 build (_MIN_DRIVER_BY_MAJOR).
CUDA_BUILDS = {"cu130": ("13.0", (580, 65, 6)), "cu128": ("12.8", (570, 26)), "cu126": ("12.6", (525, 60, 13))}
_MIN_DRIVER_BY_MAJOR = {"12": (525, 60, 13), "13": (580, 65, 6)}


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def min_driver(cuda: str) -> tuple[int, ...] | None:
    """The oldest driver that runs a torch built for CUDA ``cuda`` (e.g. "13.0"), None when unknown."""
    return _MIN_DRIVER_BY_MAJOR.get(cuda.split(".")[0])


def build_for_driver(driver: str) -> str | None:
    """The newest torch CUDA build (cu130 / cu128 / cu126) the driver runs, None when it runs none of them."""
    have = version_tuple(driver)
    return next((tag for tag, (_, need) in CUDA_BUILDS.items() if have >= need), None)


def _dotted(v: tuple[int, ...]) -> str:
    return ".".join(f"{p:02d}" if i else str(p) for i, p in enumerate(v))


@dataclass(frozen=True)
class CudaFacts:
    """What decides whether CUDA works here."""

    torch_version: str
    torch_cuda: str | None  # torch.version.cuda; None for a CPU build
    available: bool  # torch.cuda.is_available()
    driver: str | None = None  # NVIDIA driver version; None: no driver found
    gpus: int = 0  # NVIDIA GPUs the driver lists (whatever CUDA_VISIBLE_DEVICES says)
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES as set
    torch_warning: str = ""  # what torch warned while initialising CUDA


def cuda_problem(f: CudaFacts) -> str | None:
    """Why CUDA is unusable here (one clause, with the fix), or None when it works."""
    if f.available:
        return None
    if f.torch_cuda is None:
        fix = f"make install-gpu CUDA={build_for_driver(f.driver)}" if f.driver and build_for_driver(f.driver) else \
            "make install-gpu"
        return f"torch {f.torch_version} is a CPU build (torch.version.cuda is None); install a CUDA build: {fix}"
    if f.driver is None and not f.gpus:
        return "no NVIDIA GPU or driver on this machine (no nvidia-smi, no /proc/driver/nvidia/version)"
    need = min_driver(f.torch_cuda)
    if f.driver and need and version_tuple(f.driver) < need:
        build = build_for_driver(f.driver)
        fix = (f"make install-gpu CUDA={build} installs a torch this driver runs, or upgrade the driver" if build else
               f"upgrade the driver (torch's oldest CUDA build, {CUDA_BUILDS['cu126'][0]}, needs "
               f">= {_dotted(CUDA_BUILDS['cu126'][1])})")
        return (f"NVIDIA driver {f.driver} is too old for torch {f.torch_version}'s CUDA {f.torch_cuda} build "
                f"(needs >= {_dotted(need)}): {fix}")
    if f.visible_devices is not None and f.visible_devices.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={f.visible_devices!r} hides every GPU"
    said = f": torch says {f.torch_warning.strip().splitlines()[0]}" if f.torch_warning.strip() else ""
    return f"CUDA is unusable although driver {f.driver or '?'} and {f.gpus} GPU(s) are present{said}"


def decide(device: str, gpu_reasons: list[str], facts: CudaFacts) -> str | None:
    """None when the run may go on this machine, else the one-line refusal."""
    if device not in DEVICES:
        return f"device must be one of {'|'.join(DEVICES)}, got {device!r}"
    if device == "cpu":
        vllm = [r for r in gpu_reasons if "vllm" in r]
        return f"device=cpu but {vllm[0]} runs on GPUs only: set use_vllm=false" if vllm else None
    problem = cuda_problem(facts)
    if problem is None:
        return None
    if device == "cuda":
        return f"device=cuda but CUDA is unusable: {problem}"
    if gpu_reasons:
        return f"{gpu_reasons[0]} asks for a GPU but CUDA is unusable: {problem} (device=cpu runs on the CPU anyway)"
    if facts.driver or facts.gpus:
        return (f"this machine has an NVIDIA GPU but CUDA is unusable: {problem} (device=cpu runs on the CPU "
                f"anyway)")
    return None  # a machine without GPUs and nothing asking for one: the CPU run


# ------------------------------------------------------------------------------------- reading a config
def requested_device(cfg, stages: tuple[str, ...] | None = None) -> str:
    """The ``device`` a (recipe or stage) config asks for: cuda if any part says cuda, else cpu if any says cpu."""
    found = set(_fields(cfg, "device"))
    return "cuda" if "cuda" in found else "cpu" if "cpu" in found else "auto"


def gpu_reasons(cfg, environ=None) -> list[str]:
    """The settings of ``cfg`` and of the launcher that only make sense on GPUs, e.g. ``model.dtype=bfloat16``."""
    environ = os.environ if environ is None else environ
    reasons = [f"{path}={value}" for path, value in _paths(cfg, "") if
               (path.endswith("dtype") and value in ("bfloat16", "float16"))
               or (path.endswith("use_vllm") and value is True)]
    reasons = [r.replace("=True", "=true") for r in reasons]
    precision = str(environ.get("ACCELERATE_MIXED_PRECISION", "no")).lower()
    if precision in ("bf16", "fp16") and str(environ.get("ACCELERATE_USE_CPU", "")).lower() not in ("1", "true"):
        reasons.append(f"the launcher's mixed_precision: {precision}")
    return reasons


# recipe config field -> stage name in its `stages` list (as stages/preflight.py walks it)
_STAGE_FIELDS = {"pretrain": "pretrain", "sft": "sft", "rl": "rl", "clip": "pathoclip"}


def _paths(cfg, prefix: str):
    if not dataclasses.is_dataclass(cfg):
        return
    running = getattr(cfg, "stages", None)
    for f in dataclasses.fields(cfg):
        if isinstance(running, (list, tuple)) and f.name in _STAGE_FIELDS and _STAGE_FIELDS[f.name] not in running:
            continue  # a stage this recipe will not run
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _paths(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def _fields(cfg, name: str):
    return [value for path, value in _paths(cfg, "") if path.split(".")[-1] == name]


# ------------------------------------------------------------------------------------- the real machine
def nvidia_driver() -> tuple[str | None, int]:
    """(driver version, GPUs listed) from nvidia-smi, else from the kernel module's /proc file."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20).stdout.split()
            if out:
                return out[0], len(out)
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None, 0
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    gpus = len(list(Path("/proc/driver/nvidia/gpus").glob("*"))) if Path("/proc/driver/nvidia/gpus").is_dir() else 0
    return (m.group(1) if m else None), gpus


def gather() -> CudaFacts:
    """The facts of this machine (imports torch; ``torch.cuda.is_available()`` with its warnings caught)."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    driver, gpus = nvidia_driver()
    return CudaFacts(torch_version=torch.__version__.split("+")[0], torch_cuda=torch.version.cuda,
                     available=available, driver=driver, gpus=gpus,
                     visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                     torch_warning="\n".join(str(w.message) for w in caught))


def check(cfg, environ=None, facts: CudaFacts | None = None) -> str | None:
    """The refusal for ``cfg`` on this machine, or None. ``device=cpu`` also hides the GPUs from this process and
    its children (before CUDA initialises), so every "auto" choice below -- dtype, engine, attention -- is the CPU's."""
    environ = os.environ if environ is None else environ
    device = requested_device(cfg)
    reasons = gpu_reasons(cfg, environ)
    if device == "cpu":
        refusal = decide(device, reasons, facts or CudaFacts("?", None, False))
        if refusal is None:
            environ["CUDA_VISIBLE_DEVICES"] = ""
        return refusal
    return decide(device, reasons, facts or gather())
