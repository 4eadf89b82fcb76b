"""``accelerate launch`` with the 2-process CPU config runs ``python -m recipes.patho_r1`` (demo size reduced) end to
end, one 2-rank job per stage; killed mid-SFT and rerun, it resumes SFT without redoing pretraining. The same
driver under torchrun, and under accelerate with the ZeRO-3 and FSDP2 configs, starts every stage that way.

Slow tier: three stage jobs under accelerate, twice (~5 min on 2 cores), then ~40 s per launcher."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.registry import Registry
from tests.reliability.children import kill_tree

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "recipes" / "configs" / "accelerate" / "cpu_ddp2.yaml"
SFT_STEPS = 24
ARGS = ["demo.n_train=16", "demo.n_eval=8", "stages=[pretrain,sft,rl]", "evaluate=false", "report=false",
        "pretrain.max_steps=2", f"sft.max_steps={SFT_STEPS}", "sft.save_every=1", "sft.batch_size=2",
        "rl.max_steps=1", "rl.num_generations=2", "rl.batch_size=2", "rl.max_completion_length=8", "rl.dynamic_sampling=false",
        "launch.timeout=400"]


def driver_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def driver(log: Path) -> subprocess.Popen:
    from recipes.launch import free_port

    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
            "--main_process_port", str(free_port()), "-m", "recipes.patho_r1", *ARGS]
    with open(log, "w") as out:
        return subprocess.Popen(argv, cwd=REPO, env=driver_env(), stdout=out, stderr=subprocess.STDOUT)


def wait_for(predicate, proc, log, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"driver exited {proc.returncode} early:\n{log.read_text()[-6000:]}")
        time.sleep(0.2)
    kill_tree(proc)
    pytest.fail(f"timed out:\n{log.read_text()[-6000:]}")


def test_patho_r1_under_accelerate_resumes_sft_after_a_kill_without_redoing_pretraining(tmp_path):
    registry = Registry()
    first = driver(tmp_path / "first.log")
    # killed (driver, launchers and both ranks) as soon as SFT has published a mid-run checkpoint
    wait_for(lambda: bool(registry.entries("sft")), first, tmp_path / "first.log", timeout=600)
    kill_tree(first)
    pretrain_before = registry.entries("pretrain")
    sft_before = registry.entries("sft")
    assert len(pretrain_before) == 1 and 1 <= sft_before[-1]["step"] < SFT_STEPS, sft_before[-1]["step"]

    second = driver(tmp_path / "second.log")
    try:
        rc = second.wait(timeout=900)
    except subprocess.TimeoutExpired:
        kill_tree(second)
        raise
    log = (tmp_path / "second.log").read_text()
    assert rc == 0, log[-6000:]
    # pretraining was not re-run: the same single entry, and the driver said it skipped it
    assert registry.entries("pretrain") == pretrain_before
    assert f"== pretrain: {pretrain_before[0]['ref']} already published with this config and data, skipped" in log
    # SFT continued its run: the killed run's entries are untouched and the run ends at its planned step
    # (restarting from scratch would have tried to write step 1 again, which the registry refuses)
    sft_after = registry.entries("sft")
    assert sft_after[:len(sft_before)] == sft_before and sft_after[-1]["step"] == SFT_STEPS
    # one job per stage, each under accelerate launch with the same config and 2 ranks (each rank prints the entry)
    for stage in ("sft", "rl"):
        assert f"-m accelerate.commands.launch --config_file {CONFIG} --num_processes 2" in log.split(f"== {stage}: ")[1]
        assert log.count(str(registry.latest(stage, "patho_r1"))) == 2
    metrics_file = registry.root / "reports" / "patho_r1" / "patho_r1" / "metrics.json"
    assert log.strip().splitlines()[-1] == str(metrics_file)  # the driver's last line, as without a launcher
    metrics = json.loads(metrics_file.read_text())
    assert metrics["launcher"] == {"kind": "accelerate", "processes": 2}
    chain = [e.get("ref") for e in registry.lineage(metrics["checkpoints"]["rl"])]
    assert chain[:3] == ["rl/patho_r1/step-00000001", sft_after[-1]["ref"], pretrain_before[0]["ref"]]


ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
ZERO3, FSDP2 = CONFIG.parent / "cpu_zero3.yaml", CONFIG.parent / "cpu_fsdp2.yaml"
LAUNCHERS = {  # driver launcher -> (its argv before -m, what each stage's command holds, the engine, launcher kind)
    "torchrun": ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                 "--nproc_per_node=2 -m recipes.", "ddp", "torchrun"),
    "zero3": ([*ACCELERATE, str(ZERO3)], f"--config_file {ZERO3} --num_processes 2", "deepspeed-zero3", "accelerate"),
    "fsdp2": ([*ACCELERATE, str(FSDP2)], f"--config_file {FSDP2} --num_processes 2", "fsdp2", "accelerate"),
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_patho_r1_stages_run_under_the_drivers_launcher_and_engine(launcher, tmp_path):
    """The demo recipe (its pretrain and SFT centre the image features, which edits the projector bias) started
    by torchrun, or by accelerate with the ZeRO-3 / FSDP2 config: rank 0 starts each stage under the same launcher
    and config with the same world size, and every published entry records that engine on 2 ranks."""
    from recipes.launch import free_port

    runner, stage_command, engine, kind = LAUNCHERS[launcher]
    if kind == "accelerate":
        runner = [*runner, "--main_process_port", str(free_port())]
    args = [a if not a.startswith("sft.max_steps=") else "sft.max_steps=4" for a in ARGS]
    done = subprocess.run([*runner, "-m", "recipes.patho_r1", *args], cwd=REPO, env=driver_env(), capture_output=True,
                          text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert "local rank 0 of each node drives the stages; this rank has nothing to do" in log
    registry = Registry()
    for stage in ("pretrain", "sft", "rl"):
        command = log.split(f"== {stage}: ")[1].splitlines()[0]
        assert stage_command in command
        if kind == "torchrun":  # a single node: a standalone rendezvous, and SIGUSR1 passed on to the workers
            assert "-m torch.distributed.run --standalone --signals-to-handle=" in command
        entries = registry.entries(stage)
        expected = {"engine": engine, "world_size": 2, "mixed_precision": "no"}
        assert entries and all(e["extra"]["training"] == expected for e in entries)
    metrics = json.loads((registry.root / "reports" / "patho_r1" / "patho_r1" / "metrics.json").read_text())
    assert metrics["launcher"] == {"kind": kind, "processes": 2}
