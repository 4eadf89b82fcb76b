"""PathoCLIP under torchrun: two gloo ranks on CPU, open_clip_train's own DDP, rank 0 publishing each phase."""
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from stages.registry import Registry

from pathoclip.export import WEIGHTS_FILE, read_training_checkpoint

REPO = Path(__file__).parents[2]


def test_two_cpu_ranks_split_the_data_and_publish_each_phase_once(tmp_path):
    from corpora.demo import build_demo

    demo = build_demo(tmp_path / "demo", n_train=32, n_eval=4, image_size=56)
    env = dict(os.environ, PATHOR1_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "pathoclip.train", f"data={demo.pairs}", "subset_fraction=0.5", "epochs_a=1", "epochs_b=2",
           "batch_size=4", "logging_steps=1", "device=cpu", "run=ddp"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]

    home = tmp_path / "home"
    entries = {e["extra"]["phase"]: e for e in Registry(home).entries("pathoclip")}
    assert sorted(entries) == ["a", "b"] and len(Registry(home).entries("pathoclip")) == 2  # rank 0 alone published
    a, b = entries["a"], entries["b"]
    assert b["parent"] == a["ref"]
    # DistributedSampler split the rows: 16 / (4 x 2 ranks) = 2 steps in phase A, 32 / 8 x 2 epochs = 8 in B
    assert a["metrics"]["phase_steps"] == 2 and b["metrics"]["phase_steps"] == 8 and b["step"] == 10
    params = (home / "logs" / "pathoclip" / "ddp" / "b" / "params.txt").read_text()
    assert "distributed: True" in params and "world_size: 2" in params
    assert b["metrics"]["loss_final"] < b["metrics"]["loss_first"]
    # the published weights are the last checkpoint's (open_clip_train saved them on rank 0)
    saved = load_file(str(Path(b["path"]) / WEIGHTS_FILE))
    last = read_training_checkpoint(home / "logs" / "pathoclip" / "ddp" / "b" / "checkpoints" / "epoch_2.pt")
    assert all(torch.equal(saved[k], v) for k, v in last.items())
    assert len(list((home / "cache" / "pathoclip").glob("*/pairs.csv"))) == 1  # both ranks shared one cache
