"""A 2-rank PathoCLIP run (``torchrun``, gloo on CPU) killed between checkpoints of phase B, then rerun: it resumes
from the newest checkpoint and ends with the weights of an uninterrupted 2-rank run."""
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stages.registry import Registry
from tests.reliability.children import REPO, child_env, kill_tree, launch_argv, run_child

pytestmark = pytest.mark.slow

ARGS = ["subset_fraction=0.5", "epochs_a=1", "epochs_b=3", "batch_size=2", "lr=0.001", "warmup=2",
        "logging_steps=1", "device=cpu"]


def test_two_rank_pathoclip_killed_mid_phase_resumes_to_the_uninterrupted_weights(demo, tmp_path):
    from pathoclip.export import WEIGHTS_FILE

    args = [f"data={demo.pairs}", *ARGS]
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        child = subprocess.Popen(launch_argv("pathoclip.train", [*args, "run=crash"], ranks=2), cwd=REPO,
                                 env=child_env(epoch_delay=120), stdout=out, stderr=subprocess.STDOUT)
    phase_b = Registry().root / "logs" / "pathoclip" / "crash" / "b"
    deadline = time.monotonic() + 300
    while not (phase_b / ".probe-epoch-1").exists():  # phase A published, phase B saved epoch_1.pt
        if child.poll() is not None or time.monotonic() > deadline:
            kill_tree(child)
            pytest.fail(f"2-rank pathoclip never reached phase B epoch 2:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    kill_tree(child)  # torchrun and both ranks (its workers run in their own sessions)
    assert [e["extra"]["phase"] for e in Registry().entries("pathoclip")] == ["a"]
    assert (phase_b / "checkpoints" / "epoch_1.pt").is_file() and not (phase_b / "checkpoints" / "epoch_2.pt").exists()

    run_child("pathoclip.train", [*args, "run=crash"], ranks=2, timeout=600)  # resume=auto is the default
    assert "epoch_1.pt' (epoch 1)" in (phase_b / "out.log").read_text(), "phase B did not resume"
    run_child("pathoclip.train", [*args, "run=reference"], ranks=2, timeout=600)

    entries = {(e["run"], e["extra"]["phase"]): e for e in Registry().entries("pathoclip")}
    assert sorted(entries) == [("crash", "a"), ("crash", "b"), ("reference", "a"), ("reference", "b")]
    resumed, reference = entries[("crash", "b")], entries[("reference", "b")]
    assert resumed["step"] == reference["step"] == 2 + 3 * 4  # A: 8 pairs / (2 x 2 ranks); B: 16 / 4, 3 epochs
    wa, wb = load_file(Path(resumed["path"]) / WEIGHTS_FILE), load_file(Path(reference["path"]) / WEIGHTS_FILE)
    for key in wb:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-5, msg=lambda m: f"{key}: {m}")
