"""Start pathor1 entry points in child processes through ``tests.reliability.launch`` (and its probes)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CPU_DDP_CONFIG = REPO / "recipes" / "configs" / "accelerate" / "cpu_ddp2.yaml"


def child_env(**probes) -> dict:
    """This process's environment ($PATHOR1_HOME is the test's own) plus probe switches, offline."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({f"PATHOR1_PROBE_{k.upper()}": str(v) for k, v in probes.items()})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_argv(module: str, args: list[str], *, ranks: int = 1, launcher: str = "torchrun") -> list[str]:
    """``python -m tests.reliability.launch MODULE ARGS``; for several ranks under ``torchrun --standalone`` or
    ``accelerate launch`` with the 2-rank CPU config (on a free port: other jobs may hold its default)."""
    if ranks == 1:
        runner = [sys.executable]
    elif launcher == "torchrun":
        runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    else:
        runner = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_DDP_CONFIG),
                  "--num_processes", str(ranks), "--main_process_port", str(free_port())]
    return [*runner, "-m", "tests.reliability.launch", module, *args]


def run_child(module: str, args: list[str], *, ranks: int = 1, launcher: str = "torchrun", timeout: int = 300,
              **probes):
    """Run to completion; fail the test with the child's output tail if it did not exit 0."""
    proc = subprocess.run(launch_argv(module, args, ranks=ranks, launcher=launcher), cwd=REPO,
                          env=child_env(**probes), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{module} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc


def start_child(module: str, args: list[str], log: Path, **probes) -> subprocess.Popen:
    """Start in the background (output to ``log``), for tests that kill it."""
    with open(log, "w") as out:
        return subprocess.Popen(launch_argv(module, args), cwd=REPO, env=child_env(**probes),
                                stdout=out, stderr=subprocess.STDOUT)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in new sessions, so a process group is not enough)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
