"""One rule for "finished" (stages.registry.is_finished), `:latest` = the newest finished entry, RunPlan's
resume / refusal, paths stored relative to the home, and `registry list` for people and pipes."""
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from stages.registry import HOME_MARK, Registry, RegistryError, is_finished, lineage_text, main, read_manifest
from stages.runs import RunError, StepRunConfig, plan_run

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Cfg(StepRunConfig):
    max_steps: int = 4


@pytest.fixture()
def reg(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path / "home"))
    return Registry()


def write(reg, stage, run, step, *, finished=True, parent=None, config=None, metrics=None):
    with reg.writer(stage, run, step, parent=parent, config=config or {}) as w:
        (w.path / "model.safetensors").write_bytes(b"w")
        w.metrics.update(metrics or {"train_loss": 0.5})
        w.finished = finished
    return w.path


def test_latest_is_the_newest_finished_entry_and_latest_any_the_newest(reg):
    done = write(reg, "sft", "full", 10)
    interrupted = write(reg, "sft", "ctrl-c", 50, finished=False)  # written last
    assert reg.resolve("sft:latest") == done == reg.latest_finished("sft")
    assert reg.resolve("sft:latest-any") == interrupted == reg.latest("sft")
    assert reg.resolve("sft:ctrl-c") == interrupted  # a run named explicitly: its newest entry


def test_only_interrupted_runs_is_one_clear_error(reg):
    write(reg, "sft", "ctrl-c", 50, finished=False)
    with pytest.raises(RegistryError, match=r"no finished sft run for .sft:latest..*the newest, sft/ctrl-c/step-00000050, was "
                                            r"interrupted; continue it .* or use sft:latest-any"):
        reg.resolve("sft:latest")


@pytest.mark.parametrize("manifest, finished", [
    ({"stage": "sft", "step": 3, "extra": {"planned_steps": 5}}, False),  # Trainer stages recorded their plan
    ({"stage": "sft", "step": 5, "extra": {"planned_steps": 5}}, True),
    ({"stage": "rl", "step": 2, "config": {"steps": 3}}, False),  # RL before the rename: config.steps
    ({"stage": "pathoclip", "step": 7, "kind": "open_clip", "extra": {"phase": "a"}}, False),
    ({"stage": "pathoclip", "step": 9, "kind": "open_clip", "extra": {"phase": "b"}}, True),
    ({"stage": "x", "step": 1}, True),  # no plan at all: complete as written
    ({"stage": "sft", "step": 3, "finished": True, "extra": {"planned_steps": 5}}, True),  # the field wins
])
def test_is_finished_reads_manifests_written_before_the_field(manifest, finished):
    assert is_finished(manifest) is finished


def test_paths_in_the_home_are_stored_relative_and_survive_a_copied_home(reg, tmp_path):
    base = reg.root / "base" / "tiny"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    entry = write(reg, "sft", "r", 2, parent=str(base), config={"data": str(reg.root / "demo" / "sft.jsonl")})
    raw = (entry / "manifest.json").read_text()
    assert str(reg.root) not in raw and f'"{HOME_MARK}/base/tiny"' in raw
    copy = tmp_path / "copied"
    shutil.copytree(reg.root, copy)
    shutil.rmtree(reg.root)
    moved = Registry(copy)
    m = moved.manifest("sft:r")
    assert m["parent"] == str(copy / "base" / "tiny") and m["config"]["data"] == str(copy / "demo" / "sft.jsonl")
    assert read_manifest(copy / "sft" / "r" / "step-00000002") == m  # what evaluation reads from a model folder
    assert lineage_text(moved.lineage("sft:r")) == f"sft/r/step-00000002 <- base:{copy / 'base' / 'tiny'}"


def test_an_old_absolute_manifest_still_reads_and_a_deleted_parent_is_not_a_base(reg):
    parent = write(reg, "pretrain", "p", 1)
    child = write(reg, "sft", "r", 1, parent="pretrain:p")
    m = json.loads((child / "manifest.json").read_text())
    m["config"] = {"data": "/old/home/demo/sft.jsonl"}  # what manifests held before relative paths
    (child / "manifest.json").write_text(json.dumps(m))
    assert reg.manifest("sft:r")["config"]["data"] == "/old/home/demo/sft.jsonl"
    shutil.rmtree(parent)
    assert lineage_text(reg.lineage("sft:r")) == "sft/r/step-00000001 <- missing:pretrain/p/step-00000001"


# ------------------------------------------------------------------------------------------------ RunPlan
def test_run_plan_fresh_continue_finished_and_refusal(reg):
    assert plan_run("sft", Cfg(run="r"), init="tiny:x").resume_from is None
    stopped = write(reg, "sft", "r", 2, finished=False, parent="tiny:x", config=Cfg(run="r", lr=1e-3).__dict__)
    plan = plan_run("sft", Cfg(run="r", lr=1e-3, stop_after=3), init="sft:latest")  # operational: not compared
    assert (plan.resume_from, plan.finished, plan.init) == (stopped, False, "tiny:x")  # the recorded input
    with pytest.raises(RunError, match=r"sft/r .* other settings: lr: recorded 0.001, now 0.01; max_steps: "
                                       r"recorded 4, now 8\. Continue it with the recorded values"):
        plan_run("sft", Cfg(run="r", lr=1e-2, max_steps=8), init="tiny:x")
    write(reg, "sft", "r", 4, parent="tiny:x", config=Cfg(run="r", lr=1e-3).__dict__)
    plan = plan_run("sft", Cfg(run="r", lr=1e-3), init="tiny:x")
    assert plan.finished and plan.describe() == "sft/r already finished at step 4: nothing to do"
    with pytest.raises(RunError, match="already has checkpoints; pass resume=auto"):
        plan_run("sft", Cfg(run="r", resume="never"), init="tiny:x")


# ------------------------------------------------------------------------------------------ registry list
def test_list_marks_interrupted_runs_and_shows_one_metric(reg, capsys):
    write(reg, "sft", "full", 4, metrics={"train_loss": 0.25, "train_loss_curve": [[i, 1.0] for i in range(5000)]})
    write(reg, "sft", "ctrl-c", 2, finished=False)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) < 200  # no loss curve in the listing
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("sft/")}
    assert rows["sft/full/step-00000004"][0] == "finished" and rows["sft/full/step-00000004"][-1] == "train_loss=0.25"
    assert rows["sft/ctrl-c/step-00000002"][0] == "INTERRUPTED"


def test_list_json_into_head_exits_cleanly(reg):
    for step in range(1, 40):
        write(reg, "sft", "r", step, metrics={"train_loss_curve": [[i, 1.0] for i in range(200)]})
    cmd = f"{sys.executable} -m stages.registry list --json | head -3"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0 and done.stderr == "" and done.stdout.splitlines()[0] == "["
