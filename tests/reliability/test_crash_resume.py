"""Crash and resume for pretraining, SFT and RL (PathoCLIP: test_pathoclip_crash_resume below).

SIGKILL: the recipe runs in a child process whose checkpoint commits of step >= 2 pause after the payload is
written and before the manifest (``tests.reliability.launch`` probe); the test kills it inside that pause, after
step 1 is visible. Then no partial checkpoint is visible (the half-written folder is hidden, latest is step 1,
which is complete and loads), ``resume=auto`` trains exactly the steps after step 1, and the final weights equal
an uninterrupted run with the same seed.

Disk full: weight saving raises ENOSPC (after writing half a file) at the second checkpoint; the first one stays
byte-identical, LATEST still names it, no staging folder is left, and the run resumes from it once space is back.
"""
import errno
import hashlib
import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from recipes import pretrain as pretrain_recipe
from recipes import rl as rl_recipe
from recipes import sft as sft_recipe
from stages.engine import StageTrainer
from stages.registry import MANIFEST, Registry, RegistryError
from stages.rl.trainer import PathoGRPOTrainer
from tests.reliability.children import start_child

pytestmark = pytest.mark.slow
MANIFEST_KEYS = {"stage", "run", "step", "parent", "config", "data_fingerprint", "metrics", "versions",
                 "git_commit", "created", "kind", "extra"}
PARITY = "rewards=['tests.reliability.launch:token_parity_reward']"


def stage_args(stage: str, demo, tiny) -> tuple[object, str, list[str], int]:
    """(recipe module, its dotted name, arguments, planned steps): a few tiny steps, a checkpoint after each."""
    common = [f"data={demo.root}", f"init={tiny}", "save_every=1", "lr=1e-3", "warmup_ratio=0"]
    if stage == "rl":
        return rl_recipe, "recipes.rl", [*common, "algorithm=grpo", "max_steps=4", "num_generations=4", "batch_size=1",
                                         "max_completion_length=8", "log_completions=0", PARITY,
                                         "reward_weights=[1.0]"], 4
    recipe = pretrain_recipe if stage == "pretrain" else sft_recipe
    # 16 pairs / 32 SFT rows in batches of 4: step 5 of pretraining starts a second epoch
    return recipe, f"recipes.{stage}", [*common, "max_steps=5", "batch_size=4", "eval_fraction=0"], 5


def run_in_process(recipe, args: list[str], capsys) -> Path:
    assert recipe.main(args) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def steps_trained(monkeypatch) -> list[int]:
    """The global step at which each optimizer step of this process started."""
    started = []
    for cls in (StageTrainer, PathoGRPOTrainer):
        original = cls.training_step

        def counted(self, *args, _original=original, **kwargs):
            started.append(self.state.global_step)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "training_step", counted)
    return started


def check_complete(entry: Path) -> None:
    """A visible checkpoint is whole: a full manifest and weights that load with the plain HF class."""
    manifest = json.loads((entry / MANIFEST).read_text())
    assert MANIFEST_KEYS <= set(manifest) and manifest["step"] == int(entry.name[5:])
    AutoModelForImageTextToText.from_pretrained(entry, dtype=torch.float32)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=lambda m: f"{key}: {m}")


def wait_for_commit_window(child, stage: str, run: str, log: Path, timeout: float = 240) -> Path:
    """Block until step 1 is visible and a later checkpoint has its payload written but no manifest yet."""
    run_dir = Registry().root / stage / run
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            pytest.fail(f"{stage} exited {child.returncode} before the kill:\n{log.read_text()[-4000:]}")
        if Registry().latest(stage, run) is not None:
            staged = list(run_dir.glob(".tmp-step-*/.probe-payload-written"))
            if staged:
                return staged[0].parent
        time.sleep(0.05)
    child.kill()
    pytest.fail(f"no checkpoint commit window within {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.mark.parametrize("stage", ["pretrain", "sft", "rl"])
def test_sigkill_mid_checkpoint_then_resume_auto(stage, demo, tiny, tmp_path, capsys, steps_trained):
    recipe, module, args, planned = stage_args(stage, demo, tiny)
    log = tmp_path / "child.log"
    child = start_child(module, [*args, "run=crash"], log, commit_delay=120)
    staging = wait_for_commit_window(child, stage, "crash", log)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL

    registry = Registry()
    assert staging.is_dir() and (staging / "model.safetensors").is_file() and not (staging / MANIFEST).exists()
    assert [e["step"] for e in registry.entries(stage)] == [1]  # the half-written step 2 is not listed
    latest = registry.latest(stage, "crash")
    # the interrupted run is reachable as :latest-any, never as :latest (the newest FINISHED entry; none here)
    assert latest.name == "step-00000001" and registry.resolve(f"{stage}:latest-any") == latest
    with pytest.raises(RegistryError, match="was interrupted"):
        registry.resolve(f"{stage}:latest")
    assert (latest.parent / "LATEST").read_text().strip() == "step-00000001"
    check_complete(latest)

    resumed = run_in_process(recipe, [*args, "run=crash", "resume=auto"], capsys)
    assert steps_trained == list(range(1, planned)), "resume did not continue right after step 1"
    assert resumed.name == f"step-{planned:08d}"
    for entry in registry.entries(stage):
        check_complete(Path(entry["path"]))

    reference = run_in_process(recipe, [*args, "run=reference"], capsys)
    assert_same_weights(resumed, reference)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("stage", ["sft", "rl"])  # the two checkpoint writers: StageTrainer, PathoGRPOTrainer
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(stage, demo, tiny, monkeypatch, capsys, steps_trained):
    import transformers.modeling_utils as modeling_utils

    recipe, _, args, planned = stage_args(stage, demo, tiny)
    real_save, calls, first = modeling_utils.safe_save_file, [], {}

    def save_until_full(tensors, filename, *a, **kw):
        calls.append(filename)
        if len(calls) < 2:
            return real_save(tensors, filename, *a, **kw)
        step1 = Registry().latest(stage, "full") / "model.safetensors"
        first["digest"] = sha256(step1)
        Path(filename).write_bytes(b"\0" * 1024)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(modeling_utils, "safe_save_file", save_until_full)
    with pytest.raises(OSError, match="No space left on device"):
        recipe.main([*args, "run=full"])

    registry = Registry()
    step1 = registry.latest(stage, "full")
    assert step1.name == "step-00000001" and [e["step"] for e in registry.entries(stage)] == [1]
    assert (step1.parent / "LATEST").read_text().strip() == "step-00000001"
    assert sorted(p.name for p in step1.parent.iterdir()) == ["LATEST", "step-00000001"]  # staging removed
    assert sha256(step1 / "model.safetensors") == first["digest"]
    check_complete(step1)

    monkeypatch.setattr(modeling_utils, "safe_save_file", real_save)  # space is back
    steps_trained.clear()
    final = run_in_process(recipe, [*args, "run=full", "resume=auto"], capsys)
    assert final.name == f"step-{planned:08d}" and steps_trained == list(range(1, planned))


CLIP_ARGS = ["subset_fraction=0.5", "epochs_a=1", "epochs_b=3", "batch_size=4", "lr=0.001", "warmup=2",
             "logging_steps=1"]


def test_pathoclip_sigkill_mid_phase_then_resume_auto(demo, tmp_path, capsys):
    from pathoclip import train as clip_train
    from pathoclip.export import WEIGHTS_FILE, load_exported

    args = [f"data={demo.pairs}", *CLIP_ARGS]
    log = tmp_path / "child.log"
    child = start_child("pathoclip.train", [*args, "run=crash"], log, epoch_delay=120)
    phase_b = Registry().root / "logs" / "pathoclip" / "crash" / "b"
    deadline = time.monotonic() + 240
    while not (phase_b / ".probe-epoch-1").exists():  # phase A registered, phase B saved epoch_1.pt
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"pathoclip never reached phase B epoch 2:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL

    registry = Registry()
    entries = registry.entries("pathoclip")
    assert [e["extra"]["phase"] for e in entries] == ["a"]  # phase B left nothing visible
    latest = registry.latest("pathoclip", "crash")
    assert latest == Path(entries[0]["path"]) and MANIFEST_KEYS <= set(registry.manifest(latest))
    load_exported(latest)
    assert (phase_b / "checkpoints" / "epoch_1.pt").is_file()

    assert clip_train.main([*args, "run=crash"]) == 0  # resume=auto is the default
    resumed = Path(capsys.readouterr().out.strip().splitlines()[-1])
    out_log = (phase_b / "out.log").read_text()
    assert "epoch_1.pt' (epoch 1)" in out_log, "phase B did not resume from its newest checkpoint"
    assert [e["extra"]["phase"] for e in registry.entries("pathoclip")] == ["a", "b"]

    assert clip_train.main([*args, "run=reference"]) == 0
    reference = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed.name == reference.name  # the same number of steps
    wa, wb = load_file(resumed / WEIGHTS_FILE), load_file(reference / WEIGHTS_FILE)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-5, msg=lambda m: f"{key}: {m}")


def test_pathoclip_checkpoint_truncated_by_a_kill_is_set_aside(demo, capsys):
    # A kill inside open_clip_train's own (in-place) torch.save of epoch_2.pt: simulated by truncating the file
    # after a complete 2-epoch phase and removing the registry entry the killed run never wrote.
    from pathoclip import train as clip_train
    from pathoclip.export import WEIGHTS_FILE

    args = [f"data={demo.pairs}", "subset_fraction=0", "epochs_b=2", "batch_size=4", "lr=0.001", "warmup=2",
            "run=r"]
    assert clip_train.main(args) == 0
    first = Path(capsys.readouterr().out.strip().splitlines()[-1])
    expected = load_file(first / WEIGHTS_FILE)
    shutil.rmtree(first)
    checkpoints = Registry().root / "logs" / "pathoclip" / "r" / "b" / "checkpoints"
    whole = (checkpoints / "epoch_2.pt").read_bytes()
    (checkpoints / "epoch_2.pt").write_bytes(whole[: len(whole) // 2])

    assert clip_train.main(args) == 0
    again = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert (checkpoints / "epoch_2.pt.incomplete").stat().st_size == len(whole) // 2
    assert "epoch_1.pt' (epoch 1)" in (checkpoints.parent / "out.log").read_text()
    got = load_file(again / WEIGHTS_FILE)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=lambda m: f"{key}: {m}")
