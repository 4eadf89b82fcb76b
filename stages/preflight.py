"""Preflight: before any stage runs, check that every optional package the run will need is installed.

Without it a missing vLLM surfaces only when TRL's GRPOTrainer starts -- after pretraining and SFT have run for
hours. ``check(cfg)`` (run by every CLI through ``stages.cli.run_cli``) walks the whole (recipe or stage) config, collects what each stage that will run
needs, and fails in seconds with the install command:

* ``vllm`` (within TRL 1.16's range 0.22.0-0.31.0) for every RL config with ``use_vllm=true``;
* ``bitsandbytes`` for every model with ``quantization`` 4bit / 8bit;
* ``flash_attn`` for every model with ``attn_implementation=flash_attention_2``;
* ``deepspeed`` when the launcher asks for it: ``accelerate launch`` with a DeepSpeed config exports
  ``ACCELERATE_USE_DEEPSPEED=true`` to every process.

Packages are looked up with ``importlib.util.find_spec`` (nothing is imported, so the check costs milliseconds).
A recipe config that lists its ``stages`` is checked only for the stages it will run.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass

# TRL 1.16 supports these vLLM releases only (trl/import_utils.py: is_vllm_available)
VLLM_RANGE = ((0, 22, 0), (0, 31, 0))
GPU_INSTALL = "make install-gpu"
INSTALL = {
    "vllm": f"{GPU_INSTALL}  (or: pip install -c requirements-gpu.lock vllm==0.31.0)",
    "deepspeed": f"{GPU_INSTALL}  (or: DS_BUILD_OPS=0 pip install -c requirements-gpu.lock deepspeed==0.19.8)",
    "bitsandbytes": "pip install -c requirements.lock bitsandbytes  (make install pins it)",
    "flash_attn": f"{GPU_INSTALL} FLASH_ATTN=1  (or: pip install --no-build-isolation flash-attn)",
}
# recipe config field -> the stage name its `stages` list uses
_STAGE_FIELDS = {"pretrain": "pretrain", "sft": "sft", "rl": "rl", "clip": "pathoclip"}


class PreflightError(RuntimeError):
    """A package the run will need is missing (the message lists each with its install command)."""


@dataclass(frozen=True)
class Need:
    package: str  # import name
    reason: str  # the config setting (or launcher) that asks for it

    def line(self) -> str:
        return f"  - {self.package} (needed by {self.reason}): {INSTALL[self.package]}"


def needs(cfg, environ=None) -> list[Need]:
    """What ``cfg`` will need, in config order, one entry per (package, setting)."""
    environ = os.environ if environ is None else environ
    found: list[Need] = []
    _walk(cfg, "", found)
    if str(environ.get("ACCELERATE_USE_DEEPSPEED", "")).lower() in ("1", "true"):
        found.append(Need("deepspeed", "the launcher (accelerate config with distributed_type: DEEPSPEED)"))
    return list(dict.fromkeys(found))


def _walk(cfg, prefix: str, found: list[Need]) -> None:
    if not dataclasses.is_dataclass(cfg):
        return
    names = {f.name for f in dataclasses.fields(cfg)}
    running = getattr(cfg, "stages", None) if "stages" in names else None
    if getattr(cfg, "use_vllm", False) is True:
        found.append(Need("vllm", f"{prefix}use_vllm=true"))
    if getattr(cfg, "quantization", "none") not in ("none", None):
        found.append(Need("bitsandbytes", f"{prefix}quantization={cfg.quantization}"))
    if getattr(cfg, "attn_implementation", None) == "flash_attention_2":
        found.append(Need("flash_attn", f"{prefix}attn_implementation=flash_attention_2"))
    for f in dataclasses.fields(cfg):
        if isinstance(running, (list, tuple)) and f.name in _STAGE_FIELDS and _STAGE_FIELDS[f.name] not in running:
            continue  # a stage this recipe will not run
        _walk(getattr(cfg, f.name), f"{prefix}{f.name}.", found)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def problem(need: Need) -> str | None:
    """Why ``need`` is not met (one line with the install command), or None."""
    if importlib.util.find_spec(need.package) is None:
        return need.line()
    if need.package == "vllm":
        version = importlib.metadata.version("vllm")
        low, high = VLLM_RANGE
        if not low <= _version_tuple(version) <= high:
            return (f"  - vllm {version} is installed but TRL 1.16 runs 0.22.0-0.31.0 (needed by {need.reason}): "
                    f"{INSTALL['vllm']}")
    return None


def check(cfg, environ=None) -> None:
    """Raise PreflightError listing every missing package the run will need."""
    problems = [p for p in (problem(n) for n in needs(cfg, environ)) if p]
    if problems:
        raise PreflightError("preflight: this run needs packages that are missing, install them before "
                             "anything trains:\n" + "\n".join(problems))


def check_all(cfg) -> None:
    """``check``, then whether CUDA works where the run needs it (stages/cuda_check.py); PreflightError for either.
    Run by every training CLI (``stages.cli.run_cli``) before anything is written."""
    check(cfg)
    from stages import cuda_check

    refusal = cuda_check.check(cfg)
    if refusal:
        raise PreflightError(refusal)
