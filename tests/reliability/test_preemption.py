"""Preemption (stages/preemption.py) and several nodes (recipes/launch.py).

Fast: the callback turns SIGTERM / SIGUSR1 into "save, stop" at the next step boundary and exit 75; the driver
passes a signal on to its running stage and reports the stage's 75.
Slow: two "nodes" x one rank on loopback -- two ``torchrun --nnodes 2 --node_rank R --nproc_per_node 1
--master_addr 127.0.0.1`` launchers training ``recipes.sft`` together (gloo). SIGTERM to both launchers mid-run:
both ranks stop at the same step with one complete checkpoint and exit 75; the same command again finishes, and
the weights equal an uninterrupted two-node run.
"""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from recipes.launch import Plan, _run
from stages import preemption
from stages.compat import PREEMPTED_EXIT
from stages.preemption import Preemption
from stages.registry import Registry
from tests.reliability.children import REPO, child_env, descendants, free_port, kill_tree

ARGS = SimpleNamespace(device="cpu")


@pytest.fixture(autouse=True)
def no_stop_left_over():
    preemption._stopped.clear()
    yield
    preemption._stopped.clear()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_saves_and_stops_at_the_next_step_boundary(sig):
    before = signal.getsignal(sig)
    callback, state = Preemption(), TrainerState(max_steps=10)
    callback.on_train_begin(ARGS, state, TrainerControl())
    state.global_step = 3
    control = callback.on_step_end(ARGS, state, TrainerControl())
    assert not (control.should_save or control.should_training_stop)  # no signal yet: train on
    os.kill(os.getpid(), sig)  # the process survives: the handler only remembers it
    assert preemption.exit_code() == 0
    state.global_step = 4
    control = callback.on_step_end(ARGS, state, TrainerControl())
    assert control.should_save and control.should_training_stop and callback.stopped_at == 4
    assert preemption.exit_code() == PREEMPTED_EXIT == 75
    callback.on_train_end(ARGS, state, TrainerControl())
    assert signal.getsignal(sig) is before  # the process's own handling is back after training


def test_a_signal_after_the_last_step_is_a_normal_end():
    callback, state = Preemption(), TrainerState(max_steps=5)
    callback.on_train_begin(ARGS, state, TrainerControl())
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        state.global_step = 5
        callback.on_step_end(ARGS, state, TrainerControl())
    finally:
        callback.on_train_end(ARGS, state, TrainerControl())
    assert preemption.exit_code() == 0  # complete: the final checkpoint is the run's end, nothing to resume


def test_the_driver_passes_a_signal_on_to_its_stage_and_reports_its_exit():
    """A stage that saves and exits 75 on SIGTERM (as stages do); the driver gets the SIGTERM, not the stage."""
    stage = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
             "print('up', flush=True)\n"
             "time.sleep(60)\n")
    plan = Plan("python", [sys.executable, "-c", stage], dict(os.environ))
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    started = time.monotonic()
    try:
        assert _run(plan.prefix, plan) == PREEMPTED_EXIT
    finally:
        timer.cancel()
    assert time.monotonic() - started < 30
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the driver's handler is gone afterwards


# ------------------------------------------------------------------------------------------- two nodes (slow)
SFT = ["max_steps=6", "batch_size=2", "eval_fraction=0", "lr=1e-3", "warmup_ratio=0", "save_every=0",
       "group_by_length=false", "device=cpu"]


def start_nodes(run: str, demo, tiny, log_dir: Path, step_delay: str = "") -> list[subprocess.Popen]:
    """Two torchrun launchers, node ranks 0 and 1, one rank each, meeting on 127.0.0.1 (each in its own session,
    as on two machines; their workers are in sessions of their own too)."""
    port = free_port()
    env = child_env(**({"step_delay": step_delay} if step_delay else {}))
    env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = "300"  # time to save after SIGTERM (torchrun's default is 30 s)
    procs = []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                   "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
                   "-m", "tests.reliability.launch", "recipes.sft", f"data={demo.root}", f"init={tiny}",
                   f"run={run}", *SFT]
        with open(log_dir / f"{run}-node{node}.log", "a") as out:
            procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    return procs


def wait_all(procs, logs: list[Path], timeout: float = 900) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            kill_tree(p)
        pytest.fail("the two nodes did not finish:\n" + "\n".join(log.read_text()[-3000:] for log in logs))


@pytest.mark.slow
def test_two_nodes_survive_sigterm_and_resume_exactly(demo, tiny, tmp_path):
    from tests.reliability.test_crash_resume import assert_same_weights

    steps = tmp_path / "steps"
    logs = [tmp_path / f"pre-node{n}.log" for n in (0, 1)]
    nodes = start_nodes("pre", demo, tiny, tmp_path, step_delay=f"1.5:{steps}")
    deadline = time.monotonic() + 600
    while not all((steps / f"step-2-rank-{r}").exists() for r in (0, 1)):  # both ranks past step 2 of 6
        if any(p.poll() is not None for p in nodes) or time.monotonic() > deadline:
            for p in nodes:
                kill_tree(p)
            pytest.fail("SFT never reached step 2:\n" + "\n".join(log.read_text()[-3000:] for log in logs))
        time.sleep(0.1)
    workers = [d for p in nodes for d in descendants(p.pid)]
    for p in nodes:  # what a scheduler does: signal each node's launcher
        p.send_signal(signal.SIGTERM)
    codes = wait_all(nodes, logs)
    text = [log.read_text() for log in logs]
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived its launcher"
    assert all(c != 0 for c in codes), codes  # torchrun itself ends "killed by SIGTERM"

    registry = Registry()
    saved = registry.latest("sft", "pre")
    manifest = registry.manifest(saved)
    stopped = manifest["step"]
    assert 2 <= stopped < 6 and manifest["extra"]["planned_steps"] == 6
    # both ranks stopped at the same step boundary, after it was checkpointed, and chose exit 75 (torchrun, itself
    # shutting down for the signal, does not report its workers' codes)
    for t in text:
        assert f"preempted: checkpoint saved at step {stopped} of 6; run the same command again to resume " \
               f"(exit {PREEMPTED_EXIT})" in t, t[-3000:]
    assert not (steps / f"step-{stopped + 1}-rank-0").exists() and not (steps / f"step-{stopped + 1}-rank-1").exists()
    assert [e["step"] for e in registry.entries("sft") if e["run"] == "pre"] == [stopped]

    assert wait_all(start_nodes("pre", demo, tiny, tmp_path), logs) == [0, 0]  # the same command again
    resumed = registry.latest("sft", "pre")
    assert registry.manifest(resumed)["step"] == 6
    assert wait_all(start_nodes("ref", demo, tiny, tmp_path), [tmp_path / f"ref-node{n}.log" for n in (0, 1)]) \
        == [0, 0]
    assert_same_weights(resumed, registry.latest("sft", "ref"))
