"""One process per stage: the recipes' driver launches every stage as its own job, under the launcher the user chose.

Why a process per stage: each stage builds its own ``TrainingArguments`` and accelerate refuses a second
DeepSpeed plugin in one process; vLLM engines and CUDA memory would leak from one stage into the next too.

The launcher is taken, in this order, from
1. the recipe's ``launch`` fields (``launch.accelerate_config=zero2.yaml`` -> ``accelerate launch --config_file``;
   ``launch.launcher=torchrun launch.num_processes=8``);
2. the launcher the driver itself was started with: under ``accelerate launch --config_file F`` (read from the
   parent process's command line) every stage runs under ``accelerate launch --config_file F``; under ``torchrun``
   (or an accelerate launch whose config we cannot read) under ``torchrun --standalone`` with the same number of
   processes and the ``ACCELERATE_*`` / ``FSDP_*`` variables accelerate exported (those carry its config);
3. none: a plain ``python -m recipes.<stage>`` child.

Only global rank 0 of a launched driver drives: the other ranks return at once, so N ranks never start N jobs.
Several nodes are refused: every node needs its own launcher, so run the stage commands on each node.

A stage whose run already has a complete entry with the same resolved config and data fingerprint (both recorded
in its manifest) is skipped; a run with incomplete entries (killed mid-way) is re-launched with ``resume=auto``
and continues from its newest checkpoint; a run trained with a different config is refused, never overwritten.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from stages.config import save_yaml, to_dict
from stages.registry import Registry, fingerprint_files, is_finished, step_dir
from stages.runs import config_differences, with_current_names

LAUNCHERS = ("auto", "python", "torchrun", "accelerate")
# Set by torchrun / accelerate for the driver's own ranks; a stage job gets fresh ones from its launcher.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                   "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(RuntimeError):
    """A stage could not be launched, failed, or its run holds a different config."""


@dataclass
class LaunchConfig:
    launcher: Literal["auto", "python", "torchrun", "accelerate"] = field(
        default="auto", metadata={"help": "How each stage process starts: auto = like this driver was started "
                                          "(accelerate launch / torchrun / plain python), or force one."})
    accelerate_config: str = field(default="", metadata={
        "help": "accelerate config file for every stage (accelerate launch --config_file); implies launcher=accelerate."})
    num_processes: int = field(default=0, metadata={
        "help": "Processes per stage; 0 = the driver's launcher's (or the accelerate config's)."})
    timeout: int = field(default=0, metadata={"help": "Seconds a stage process may run before it is stopped; 0 = no limit."})

    def __post_init__(self):
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launch.launcher must be one of {'|'.join(LAUNCHERS)}, got {self.launcher!r}")
        if self.accelerate_config and self.launcher not in ("auto", "accelerate"):
            raise ValueError(f"launch.accelerate_config needs launch.launcher=accelerate (or auto), got "
                             f"{self.launcher!r}")
        if self.accelerate_config and not Path(self.accelerate_config).is_file():
            raise ValueError(f"launch.accelerate_config: no such file {self.accelerate_config}")
        if self.launcher == "accelerate" and not self.accelerate_config:
            raise ValueError("launch.launcher=accelerate needs launch.accelerate_config=FILE")
        if self.num_processes < 0 or self.timeout < 0:
            raise ValueError("launch.num_processes and launch.timeout must be >= 0")


@dataclass
class Plan:
    """How the stage processes start: ``prefix + ["-m", module, "--config", yaml]`` in ``env``."""

    kind: str  # python | torchrun | accelerate
    prefix: list[str]
    env: dict
    processes: int = 1  # 0: as the accelerate config says
    timeout: int = 0  # seconds per stage process; 0 = no limit

    def command(self, module: str, config_file: Path) -> list[str]:
        # accelerate's rendezvous port: a fresh free one per job (the driver's own launcher may still hold its port)
        port = ["--main_process_port", str(free_port())] if self.kind == "accelerate" else []
        return [*self.prefix, *port, "-m", module, "--config", str(config_file)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_driver(env=None) -> bool:
    """True for a plain process and for global rank 0 of a launched one."""
    env = os.environ if env is None else env
    return int(env.get("RANK", "0")) == 0


def _parent_accelerate_config(ppid: int | None = None) -> str | None:
    """The ``--config_file`` of an ``accelerate launch`` that started this process (Linux /proc), if any."""
    proc = Path(f"/proc/{ppid or os.getppid()}")
    try:
        argv = (proc / "cmdline").read_bytes().decode().split("\0")
        cwd = (proc / "cwd").resolve()
    except OSError:
        return None
    if not any(a.endswith("accelerate") or "accelerate.commands" in a or a == "launch" for a in argv):
        return None
    for i, a in enumerate(argv):
        if a == "--config_file" and i + 1 < len(argv):
            return str(cwd / argv[i + 1])  # as the launcher saw it: relative to its working folder
        if a.startswith("--config_file="):
            return str(cwd / a.split("=", 1)[1])
    return None


def _child_env(env, *, keep_accelerate: bool) -> dict:
    out = {k: v for k, v in env.items() if k not in _RANK_VARIABLES and not k.startswith("TORCHELASTIC_")}
    if not keep_accelerate:  # accelerate launch writes its own; stale ones from the driver's launcher must not win
        out = {k: v for k, v in out.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    return out


def plan_launch(cfg: LaunchConfig, env=None, parent_config: str | None = None) -> Plan:
    """Decide how stage processes start (see the module docstring for the order)."""
    plan = _plan(cfg, env, parent_config)
    plan.timeout = cfg.timeout
    return plan


def _plan(cfg: LaunchConfig, env, parent_config: str | None) -> Plan:
    env = dict(os.environ if env is None else env)
    world = int(env.get("WORLD_SIZE", "1"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    if world != local_world:
        raise LaunchError(f"the driver runs on several nodes (WORLD_SIZE={world}, LOCAL_WORLD_SIZE={local_world}): "
                          f"start each stage yourself on every node (python -m recipes.pretrain / sft / rl under "
                          f"your launcher, init=<previous stage's registry ref>)")
    python = [sys.executable]
    if cfg.launcher == "python":
        return Plan("python", python, _child_env(env, keep_accelerate=True))
    launched = "LOCAL_RANK" in env  # torchrun and accelerate launch set it for every worker, even a single one
    accelerate_config = cfg.accelerate_config
    if not accelerate_config and cfg.launcher == "auto" and launched:
        accelerate_config = parent_config if parent_config is not None else _parent_accelerate_config()
    if accelerate_config:
        n = cfg.num_processes or (world if world > 1 else 0)
        prefix = [*python, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
                  *(["--num_processes", str(n)] if n else [])]
        return Plan("accelerate", prefix, _child_env(env, keep_accelerate=False), n)  # 0: as the config says
    n = cfg.num_processes or local_world
    if cfg.launcher == "torchrun" or launched or n > 1:  # a launched driver's stages get a launcher too (DeepSpeed
        # on one GPU still needs the rendezvous variables torchrun sets)
        prefix = [*python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
        return Plan("torchrun", prefix, _child_env(env, keep_accelerate=True), n)
    return Plan("python", python, _child_env(env, keep_accelerate=True))


# ------------------------------------------------------------------------------------------- skip / resume


def entry_id(folder: str | Path) -> str:
    """``stage/run/step-N`` of a registry entry folder: the reference the next stage gets as ``init``."""
    m = Registry().manifest(str(folder))
    return f"{m['stage']}/{m['run']}/{step_dir(m['step'])}"


def published(stage: str, cfg, data: Path) -> Path | None:
    """The complete entry of ``stage/<cfg.run>`` trained with this config and data, or None when the stage has to
    run (no entry yet, or a run killed mid-way, which ``resume=auto`` continues). Raises LaunchError for a run
    trained with another config or data: it is never resumed or overwritten silently."""
    newest = Registry().latest(stage, cfg.run)
    if newest is None:
        return None
    manifest = Registry().manifest(newest)
    where = f"{stage}/{cfg.run} ({newest})"
    fingerprint = fingerprint_files(data)
    if manifest.get("data_fingerprint") != fingerprint:
        raise LaunchError(f"{where} was trained on other data ({manifest.get('data_fingerprint')}, now {fingerprint} "
                          f"for {data}): choose another run=NAME")
    diff = config_differences(with_current_names(type(cfg), manifest.get("config") or {}), to_dict(cfg))
    if diff:
        raise LaunchError(f"{where} was trained with another config ({'; '.join(diff)}): choose another run=NAME")
    return newest if is_finished(manifest) else None


def _run(command: list[str], plan: Plan) -> int | None:
    """The job's exit code, or None when it ran past ``plan.timeout`` and was stopped."""
    proc = subprocess.Popen(command, env=plan.env)
    try:
        return proc.wait(timeout=plan.timeout or None)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun / accelerate launch pass SIGTERM on to their workers
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return None


def run_stage(plan: Plan, *, stage: str, module: str, cfg, data: Path, config_dir: Path) -> Path:
    """Run one stage as its own process (skipped when already published) and return its final entry folder."""
    done = published(stage, cfg, data)
    if done is not None:
        print(f"== {stage}: {entry_id(done)} already published with this config and data, skipped", flush=True)
        return done
    cfg = dataclasses.replace(cfg, resume="auto")  # a run killed mid-way continues from its newest checkpoint
    command = plan.command(module, save_yaml(cfg, Path(config_dir) / f"{stage}-{cfg.run}.yaml"))
    print(f"== {stage}: {shlex.join(command)}", flush=True)
    returncode = _run(command, plan)
    if returncode is None:
        raise LaunchError(f"stage {stage} ran past {plan.timeout} s and was stopped; rerun the same command to "
                          f"continue it from its newest checkpoint")
    if returncode != 0:
        raise LaunchError(f"stage {stage} exited {returncode} ({shlex.join(command)}); rerun the same command: "
                          f"finished stages are skipped and {stage} resumes from its newest checkpoint")
    final = Registry().latest(stage, cfg.run)
    if final is None:
        raise LaunchError(f"stage {stage} exited 0 but published nothing under {stage}/{cfg.run}")
    return final


def run_module(plan: Plan, module: str, cfg, config_file: Path, *, what: str) -> None:
    """Run an entry point that keeps its own skip/resume logic (PathoCLIP) as its own process."""
    command = plan.command(module, save_yaml(cfg, config_file))
    print(f"== {what}: {shlex.join(command)}", flush=True)
    returncode = _run(command, plan)
    if returncode != 0:
        raise LaunchError(f"{what} exited {returncode} ({shlex.join(command)})" if returncode is not None else
                          f"{what} ran past {plan.timeout} s and was stopped")
