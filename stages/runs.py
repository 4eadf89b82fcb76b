"""What every training run shares: one vocabulary of settings (``RunConfig``, ``StepRunConfig``).

Pretraining, SFT, RL and PathoCLIP name the same knob the same way: ``run``, ``init``, ``data``, ``seed``,
``resume``, ``batch_size``, ``lr``, ``weight_decay``, ``logging_steps`` for all four, and ``max_steps``,
``stop_after``, ``save_every``, ``keep_last``, ``grad_accum``, ``scheduler``, ``warmup_ratio`` for the stages
that count optimizer steps (PathoCLIP counts open_clip_train epochs instead). Each entry point subclasses one of
these and changes only the defaults and its own fields.

Older names (``steps``, ``batch``, ``wd``, ...) still load from YAML and the command line: ``RENAMED`` maps them to
the new name, and ``stages.config.from_dict`` warns once with both names (``RenamedKeyWarning``).

Foundation module: imports only the standard library and stages.config (stages.registry inside functions), so
every CLI reads it in milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from stages.config import renamed_keys, to_dict


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


def with_current_names(cls, recorded: dict) -> dict:
    """A recorded config (e.g. an older manifest's) with its renamed keys under their current names, silently."""
    out = dict(recorded)
    for old, new in renamed_keys(cls).items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out


# ------------------------------------------------------------------------------------------------ RunPlan
# Fields that change how a run is driven, not what it trains: they never block a resume or a skip.
OPERATIONAL = frozenset({"resume", "stop_after", "save_every", "keep_last", "logging_steps", "log_completions",
                         "workers", "device"})


class RunError(ValueError):
    """A run cannot start as asked (its recorded config differs, resume=never on an existing run, ...)."""


@dataclass(frozen=True)
class RunPlan:
    """How a run starts: the one rule every stage, the recipes' launcher and PathoCLIP follow.

    ``init``: the input model (on resume: the one the run was started from, as its manifest records);
    ``resume_from``: the registry entry to continue from, or None for a fresh start; ``finished``: that entry is
    the run's planned end (``stages.registry.is_finished``), so there is nothing to train."""

    stage: str
    run: str
    init: str
    resume_from: Path | None = None
    finished: bool = False
    step: int = 0  # of resume_from

    def describe(self) -> str:
        if self.resume_from is None:
            return f"{self.stage}/{self.run}: fresh start from {self.init}"
        if self.finished:
            return f"{self.stage}/{self.run} already finished at step {self.step}: nothing to do"
        return f"{self.stage}/{self.run}: continuing from step {self.step} ({self.resume_from})"


def resume_point(stage: str, run: str, resume: str, registry=None) -> Path | None:
    """The registry entry a run continues from. ``auto``: the run's newest entry, or none (a fresh start);
    ``never``: a fresh start, refused if the run already has entries (it would collide with them); anything
    else: a registry reference (``sft:RUN/STEP``) to continue from."""
    from stages.registry import Registry

    registry = registry or Registry()
    if resume == "auto":
        return registry.latest(stage, run)
    if resume == "never":
        if registry.latest(stage, run) is not None:
            raise RunError(f"run {stage}/{run} already has checkpoints; pass resume=auto to continue it "
                           f"or choose another run=NAME")
        return None
    return registry.resolve(resume)


def _same_model(a, b, registry) -> bool:
    if a == b:
        return True
    from stages.registry import RegistryError

    try:
        return registry.resolve(a).resolve() == registry.resolve(b).resolve()
    except (RegistryError, OSError):
        return False


def config_differences(recorded: dict, now: dict, registry=None, prefix: str = "") -> list[str]:
    """``field: recorded X, now Y`` for each field set now that the entry recorded with another value. ``None``
    (filled later from a preset) and OPERATIONAL fields are not compared; ``init`` compares the folders."""
    from stages.registry import Registry

    registry = registry or Registry()
    out = []
    for key, value in now.items():
        name = prefix + key
        if value is None or key in OPERATIONAL:
            continue
        have = recorded.get(key, "<missing>")
        if isinstance(value, dict) and isinstance(have, dict):
            out += config_differences(have, value, registry, name + ".")
        elif key == "init" and _same_model(have, value, registry):
            continue
        elif have != value:
            out.append(f"{name}: recorded {have!r}, now {value!r}")
    return out


def plan_run(stage: str, cfg, *, init: str, config: dict | None = None, registry=None) -> RunPlan:
    """The RunPlan of ``cfg`` (a RunConfig) for ``stage``. ``config``: the config as the stage records it in its
    manifests (default ``to_dict(cfg)``); continuing the run's own entries with other values of a
    non-operational field is refused with every changed field named (it would silently mix two runs). ``init`` is
    not compared: a resumed run always continues from the input model its manifest records (``sft:latest`` may
    name a newer entry by now)."""
    from stages.registry import Registry, is_finished

    registry = registry or Registry()
    resume_from = resume_point(stage, cfg.run, cfg.resume, registry)
    if resume_from is None:
        return RunPlan(stage, cfg.run, init)
    manifest = registry.manifest(resume_from)
    if (manifest.get("stage"), manifest.get("run")) == (stage, cfg.run):
        now = dict(config if config is not None else to_dict(cfg))
        now.pop("init", None)
        changed = config_differences(with_current_names(type(cfg), manifest.get("config") or {}), now, registry)
        if changed:
            raise RunError(f"{stage}/{cfg.run} ({resume_from}) was trained with other settings: {'; '.join(changed)}. "
                           f"Continue it with the recorded values, or start another run=NAME")
    return RunPlan(stage, cfg.run, manifest.get("parent") or init, resume_from, is_finished(manifest),
                   int(manifest.get("step", 0)))
