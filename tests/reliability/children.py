"""Start pathor1 entry points in child processes through ``tests.reliability.launch`` (and its probes)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def child_env(**probes) -> dict:
    """This process's environment ($PATHOR1_HOME is the test's own) plus probe switches, offline."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({f"PATHOR1_PROBE_{k.upper()}": str(v) for k, v in probes.items()})
    return env


def launch_argv(module: str, args: list[str], *, ranks: int = 1) -> list[str]:
    """``python -m tests.reliability.launch MODULE ARGS``, under ``torchrun --standalone`` for several ranks."""
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] \
        if ranks > 1 else [sys.executable]
    return [*runner, "-m", "tests.reliability.launch", module, *args]


def run_child(module: str, args: list[str], *, ranks: int = 1, timeout: int = 300, **probes):
    """Run to completion; fail the test with the child's output tail if it did not exit 0."""
    proc = subprocess.run(launch_argv(module, args, ranks=ranks), cwd=REPO, env=child_env(**probes),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{module} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc


def start_child(module: str, args: list[str], log: Path, **probes) -> subprocess.Popen:
    """Start in the background (output to ``log``), for tests that kill it."""
    with open(log, "w") as out:
        return subprocess.Popen(launch_argv(module, args), cwd=REPO, env=child_env(**probes),
                                stdout=out, stderr=subprocess.STDOUT)
