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

Only local rank 0 of each node acts (start the driver with one process per node: ``torchrun --nproc_per_node 1``,
``srun --ntasks-per-node 1``), so N ranks never start N jobs. On several nodes (``WORLD_SIZE`` > ``LOCAL_WORLD_SIZE``,
e.g. ``torchrun --nnodes 2 --nproc_per_node 1 -m recipes.patho_r1 launch.num_processes=8``, scripts/slurm/) the
driver runs on every node: every node makes the same skip / resume decisions from the shared registry
(``PATHOR1_HOME`` must be one folder all nodes see) and starts each stage with its own launcher arguments --
``torchrun --nnodes N --node_rank R --master_addr <the driver's MASTER_ADDR> --master_port <MASTER_PORT + k>``
(``accelerate launch --num_machines N --machine_rank R --main_process_ip ... --main_process_port ...``) for the k-th
stage -- so the stage's ranks on all nodes meet in one rendezvous. Node 0 alone evaluates and writes the report.

SIGTERM / SIGUSR1 to the driver is passed on to the running stage, which checkpoints at its next step boundary and
exits 75 (stages/preemption.py); the driver then exits 75 too, and the same command resumes.

A stage whose run already has a complete entry with the same resolved config and data fingerprint (both recorded
in its manifest) is skipped; a run with incomplete entries (killed mid-way) is re-launched with ``resume=auto``
and continues from its newest checkpoint; a run trained with a different config is refused, never overwritten.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from stages.config import save_yaml, to_dict
from stages.compat import PREEMPTED_EXIT
from stages.registry import Registry, fingerprint_files, is_finished, step_dir
from stages.runs import config_differences, with_current_names

LAUNCHERS = ("auto", "python", "torchrun", "accelerate")
# Set by torchrun / accelerate for the driver's own ranks; a stage job gets fresh ones from its launcher.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                   "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(RuntimeError):
    """A stage could not be launched, failed, or its run holds a different config."""


class Preempted(LaunchError):
    """A stage stopped for SIGTERM / SIGUSR1 after saving a checkpoint: the driver exits ``PREEMPTED_EXIT`` too."""


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
    nodes: int = 1
    node_rank: int = 0
    port_base: int = 0  # several nodes: the k-th stage meets on port_base + k (the same number on every node)
    launches: int = 0

    def command(self, module: str, config_file: Path) -> list[str]:
        port = []
        if self.nodes > 1:  # every node must name the same port: derived, never picked
            flag = "--main_process_port" if self.kind == "accelerate" else "--master_port"
            port = [flag, str(self.port_base + self.launches)]
            self.launches += 1
        elif self.kind == "accelerate":  # a fresh free port per job (the driver's own launcher may still hold its port)
            port = ["--main_process_port", str(free_port())]
        return [*self.prefix, *port, "-m", module, "--config", str(config_file)]

    @property
    def drives(self) -> bool:
        """Node 0 evaluates, reports and writes the recipe's metrics; other nodes only take part in the stages."""
        return self.node_rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_driver(env=None) -> bool:
    """True for a plain process and for local rank 0 of each node of a launched one (see the module docstring)."""
    env = os.environ if env is None else env
    return int(env.get("LOCAL_RANK", env.get("RANK", "0"))) == 0


# torchrun passes these on to its workers (its default list lacks SIGUSR1, which would kill torchrun itself)
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def forget_driver_ranks(env=None) -> None:
    """Drop the rank variables of the driver's own launcher once the plan is made: what the driver itself runs
    afterwards (evaluation) is one process, and would otherwise wait for a process group no other driver joins."""
    env = os.environ if env is None else env
    for name in [k for k in env if k in _RANK_VARIABLES or k.startswith("TORCHELASTIC_")]:
        del env[name]


def _nodes(env) -> tuple[int, int]:
    """(nodes, this node's rank) of a launched driver; torchrun names them GROUP_WORLD_SIZE / GROUP_RANK."""
    world = int(env.get("WORLD_SIZE", "1"))
    local_world = max(int(env.get("LOCAL_WORLD_SIZE", world)), 1)
    nodes = int(env.get("GROUP_WORLD_SIZE", world // local_world))
    return nodes, int(env.get("GROUP_RANK", int(env.get("RANK", "0")) // local_world))


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
    nodes, node_rank = _nodes(env)
    if nodes > 1:
        return _multi_node_plan(cfg, env, nodes, node_rank, local_world, parent_config)
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
        prefix = [*python, "-m", "torch.distributed.run", "--standalone", f"--signals-to-handle={TORCHRUN_SIGNALS}",
                  f"--nproc_per_node={n}"]
        return Plan("torchrun", prefix, _child_env(env, keep_accelerate=True), n)
    return Plan("python", python, _child_env(env, keep_accelerate=True))


def _multi_node_plan(cfg: LaunchConfig, env: dict, nodes: int, node_rank: int, local_world: int,
                     parent_config: str | None) -> Plan:
    """Every node's stage launcher: the same rendezvous (the driver's MASTER_ADDR, MASTER_PORT + 1 + k), this
    node's rank, ``launch.num_processes`` per node (default: the driver's processes per node)."""
    if cfg.launcher == "python":
        raise LaunchError(f"launch.launcher=python cannot span {nodes} nodes: use torchrun or an accelerate config")
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    if not addr or not port:
        raise LaunchError(f"the driver runs on {nodes} nodes but MASTER_ADDR / MASTER_PORT are not set: start it "
                          f"under torchrun --nnodes {nodes} (scripts/slurm/)")
    per_node = cfg.num_processes or local_world
    python = [sys.executable]
    accelerate_config = cfg.accelerate_config or (
        (parent_config if parent_config is not None else _parent_accelerate_config()) if cfg.launcher == "auto" else "")
    where = dict(nodes=nodes, node_rank=node_rank, port_base=int(port) + 1)
    if accelerate_config:
        prefix = [*python, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
                  "--num_machines", str(nodes), "--machine_rank", str(node_rank), "--main_process_ip", addr,
                  "--num_processes", str(per_node * nodes)]
        return Plan("accelerate", prefix, _child_env(env, keep_accelerate=False), per_node, **where)
    prefix = [*python, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--node_rank={node_rank}",
              f"--nproc_per_node={per_node}", f"--master_addr={addr}", f"--signals-to-handle={TORCHRUN_SIGNALS}"]
    return Plan("torchrun", prefix, _child_env(env, keep_accelerate=True), per_node, **where)


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
    """The job's exit code, or None when it ran past ``plan.timeout`` and was stopped. SIGTERM / SIGUSR1 to the
    driver meanwhile reach the job as SIGTERM (which every launcher passes on to its workers; they checkpoint and
    exit 75), and the driver waits for it."""
    proc = subprocess.Popen(command, env=plan.env)
    forward = lambda signum, frame: proc.send_signal(signal.SIGTERM)  # noqa: E731
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
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
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    if returncode == PREEMPTED_EXIT:
        raise Preempted(f"stage {stage} was stopped by a signal and saved a checkpoint (exit {PREEMPTED_EXIT}); "
                        f"rerun the same command to resume it")
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
