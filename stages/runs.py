"""What every training run shares: one vocabulary of settings (``RunConfig``, ``StepRunConfig``).

Pretraining, SFT, RL and PathoCLIP name the same knob the same way: ``run``, ``init``, ``data``, ``seed``,
``resume``, ``batch_size``, ``lr``, ``weight_decay``, ``logging_steps`` for all four, and ``max_steps``,
``stop_after``, ``save_every``, ``keep_last``, ``grad_accum``, ``scheduler``, ``warmup_ratio`` for the stages
that count optimizer steps (PathoCLIP counts open_clip_train epochs instead). Each entry point subclasses one of
these and changes only the defaults and its own fields.

Older names (``steps``, ``batch``, ``wd``, ...) still load from YAML and the command line: ``RENAMED`` maps them to
the new name, and ``stages.config.from_dict`` warns once with both names (``RenamedKeyWarning``).

Foundation module: imports nothing heavier than the standard library, so every CLI can read it in milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    """Settings every training entry point has, under one name each."""

    # old name -> new name; accepted from YAML / the command line with a RenamedKeyWarning
    RENAMED: ClassVar[dict[str, str]] = {"steps": "max_steps", "batch": "batch_size", "wd": "weight_decay"}

    run: str = _f("default", "Run name: registry entries go to <stage>/<run>/step-N.")
    init: str = _f("", "Input model: registry ref (sft:latest), folder or tiny preset.")
    data: str = _f("", "Training data file or folder; empty = the demo corpus.")
    seed: int = _f(0, "Seed for init, data order and sampling.")
    resume: str = _f("auto", "auto = continue this run from its newest checkpoint; never; or a registry ref.")
    batch_size: int = _f(4, "Per-device batch size.")
    lr: float = _f(2e-5, "Peak learning rate.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    logging_steps: int = _f(1, "Log metrics (TensorBoard + manifest) every N steps.")

    def __post_init__(self):
        if not self.run or "/" in self.run or self.run.startswith("."):
            raise ValueError(f"run must be a plain folder name, got {self.run!r}")
        for name in ("batch_size", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class StepRunConfig(RunConfig):
    """A run counted in optimizer steps (pretraining, SFT, RL)."""

    max_steps: int = _f(-1, "Planned optimizer steps.")
    stop_after: int = _f(0, "Stop (with a checkpoint) after this many steps without changing the planned schedule; "
                            "0 = run to the end. Simulates preemption.")
    save_every: int = _f(0, "Checkpoint every N steps (0 = only at the end).")
    keep_last: int = _f(0, "Keep only the newest N checkpoints of the run (0 = all).")
    grad_accum: int = _f(1, "Gradient accumulation steps.")
    scheduler: str = _f("cosine", "transformers lr_scheduler_type (cosine, linear, constant...).")
    warmup_ratio: float = _f(0.0, "Fraction of the planned steps spent warming up.")
    gradient_checkpointing: bool = _f(False, "Trade compute for activation memory.")

    def __post_init__(self):
        super().__post_init__()
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        for name in ("save_every", "keep_last", "stop_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


def renamed_keys(cls) -> dict[str, str]:
    """Old name -> new name for ``cls`` (only the renames whose new name is a field of ``cls``)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return {old: new for old, new in getattr(cls, "RENAMED", {}).items() if new in names and old not in names}


def with_current_names(cls, recorded: dict) -> dict:
    """A recorded config (e.g. an older manifest's) with its renamed keys under their current names, silently."""
    out = dict(recorded)
    for old, new in renamed_keys(cls).items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out
