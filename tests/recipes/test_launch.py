"""The recipes' driver (recipes/launch.py), fast tier: which launcher each stage process gets, which stages a rerun
skips, resumes or refuses, and the hub-id model references. The 2-rank end-to-end run is test_launch_e2e.py (slow)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.launch import (LaunchConfig, LaunchError, _parent_accelerate_config, config_differences,
                            forget_driver_ranks, is_driver, plan_launch, published, run_stage)
from stages.registry import Registry, RegistryError
from tests.recipes.fake_stage import FakeStageConfig

REPO = Path(__file__).resolve().parents[2]
TWO_RANKS = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_PORT": "29500",
             "TORCHELASTIC_RUN_ID": "x", "ACCELERATE_USE_DEEPSPEED": "true", "FSDP_VERSION": "2", "HOME": "/h"}


# ------------------------------------------------------------------------------------------ the launcher


def test_a_plain_driver_starts_plain_python_children():
    plan = plan_launch(LaunchConfig(), env={"HOME": "/h"})
    assert plan.kind == "python" and plan.prefix == [sys.executable]
    assert plan.command("recipes.sft", Path("/c/sft.yaml")) == [sys.executable, "-m", "recipes.sft", "--config",
                                                                 "/c/sft.yaml"]


def test_under_accelerate_launch_each_stage_gets_the_same_config_file_and_world_size():
    plan = plan_launch(LaunchConfig(), env=TWO_RANKS, parent_config="recipes/configs/accelerate/zero2.yaml")
    assert plan.kind == "accelerate" and plan.processes == 2
    assert plan.prefix[1:7] == ["-m", "accelerate.commands.launch", "--config_file",
                                "recipes/configs/accelerate/zero2.yaml", "--num_processes", "2"]
    command = plan.command("recipes.sft", Path("sft.yaml"))
    assert command[7] == "--main_process_port" and int(command[8]) != 29500  # not the driver's own port
    assert command[9:] == ["-m", "recipes.sft", "--config", "sft.yaml"]
    # the driver's rank variables and accelerate's exported config never reach the new launch (it writes its own)
    assert plan.env == {"HOME": "/h"}


def test_under_torchrun_each_stage_gets_torchrun_with_the_same_ranks_and_accelerate_variables():
    plan = plan_launch(LaunchConfig(), env=TWO_RANKS, parent_config="")
    assert plan.kind == "torchrun" and plan.processes == 2
    assert plan.prefix == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", "--nproc_per_node=2"]
    # accelerate's settings travel in these variables, so the stage sees the same DeepSpeed / FSDP config
    assert plan.env == {"ACCELERATE_USE_DEEPSPEED": "true", "FSDP_VERSION": "2", "HOME": "/h"}
    # one launched process (e.g. DeepSpeed on one GPU) keeps a launcher: DeepSpeed needs torchrun's variables
    one = plan_launch(LaunchConfig(), env={"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}, parent_config="")
    assert one.kind == "torchrun" and one.prefix[-1] == "--nproc_per_node=1"


def test_launch_fields_override_the_environment(tmp_path):
    config = tmp_path / "zero3.yaml"
    config.write_text("distributed_type: DEEPSPEED\n")
    plan = plan_launch(LaunchConfig(accelerate_config=str(config), num_processes=8, timeout=60), env={})
    assert plan.prefix[3:7] == ["--config_file", str(config), "--num_processes", "8"] and plan.timeout == 60
    assert plan_launch(LaunchConfig(launcher="python"), env=TWO_RANKS).kind == "python"
    assert plan_launch(LaunchConfig(launcher="torchrun"), env={}).prefix[-1] == "--nproc_per_node=1"


def test_bad_launch_fields_are_refused(tmp_path):
    with pytest.raises(ValueError, match="launch.accelerate_config: no such file nope.yaml"):
        LaunchConfig(accelerate_config="nope.yaml")
    with pytest.raises(ValueError, match="launch.launcher=accelerate needs launch.accelerate_config=FILE"):
        LaunchConfig(launcher="accelerate")


# a driver started on node 1 of 2 by `torchrun --nnodes 2 --nproc_per_node 1` (the variables torchrun sets)
NODE_1 = {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "1",
          "GROUP_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "HOME": "/h"}


def test_on_several_nodes_every_node_starts_each_stage_with_its_own_rank_and_one_rendezvous():
    plans = [plan_launch(LaunchConfig(num_processes=8), env={**NODE_1, "RANK": str(r), "GROUP_RANK": str(r)},
                         parent_config="") for r in (0, 1)]
    for rank, plan in enumerate(plans):
        assert plan.kind == "torchrun" and plan.drives == (rank == 0) and plan.processes == 8
        assert plan.prefix == [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=8", "--master_addr=10.0.0.1",
                               "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"]
        assert plan.env == {"HOME": "/h"}
        # the k-th stage meets on MASTER_PORT + 1 + k on every node (the driver's own store holds MASTER_PORT)
        commands = [plan.command(f"recipes.{m}", Path("c.yaml")) for m in ("pretrain", "sft", "rl")]
        assert [c[len(plan.prefix):-4] for c in commands] == [["--master_port", str(p)] for p in (29501, 29502, 29503)]
        assert commands[2][-4:] == ["-m", "recipes.rl", "--config", "c.yaml"]


def test_on_several_nodes_an_accelerate_config_gets_machine_rank_and_total_processes(tmp_path):
    config = tmp_path / "zero2.yaml"
    config.write_text("distributed_type: DEEPSPEED\n")
    plan = plan_launch(LaunchConfig(accelerate_config=str(config), num_processes=8), env=NODE_1)
    assert plan.prefix[3:] == ["--config_file", str(config), "--num_machines", "2", "--machine_rank", "1",
                               "--main_process_ip", "10.0.0.1", "--num_processes", "16"]
    assert plan.command("recipes.sft", Path("s.yaml"))[-6:] == ["--main_process_port", "29501", "-m", "recipes.sft",
                                                                 "--config", "s.yaml"]


def test_several_nodes_need_a_launcher_and_a_rendezvous_address():
    with pytest.raises(LaunchError, match="launch.launcher=python cannot span 2 nodes"):
        plan_launch(LaunchConfig(launcher="python"), env=NODE_1)
    with pytest.raises(LaunchError, match="MASTER_ADDR / MASTER_PORT are not set"):
        plan_launch(LaunchConfig(), env={k: v for k, v in NODE_1.items() if k != "MASTER_ADDR"}, parent_config="")


def test_the_driver_forgets_its_launchers_ranks_after_planning():
    env = {**NODE_1, "TORCHELASTIC_RUN_ID": "x"}
    forget_driver_ranks(env)
    assert env == {"HOME": "/h"}


def test_local_rank_zero_of_each_node_drives():
    assert is_driver({}) and is_driver({"RANK": "0"}) and not is_driver({"RANK": "1"})
    assert is_driver(NODE_1) and not is_driver({**NODE_1, "LOCAL_RANK": "1"})


def test_the_accelerate_config_is_read_from_the_parent_command_line(tmp_path):
    # a process whose command line looks like `accelerate launch --config_file F ...`
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)", "accelerate",
                             "launch", "--config_file", "cfg/zero2.yaml", "-m", "recipes.patho_r1"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "up\n"  # running, not half-way through exec
        assert _parent_accelerate_config(proc.pid) == str(Path.cwd() / "cfg" / "zero2.yaml")
        assert _parent_accelerate_config(os.getpid()) is None  # pytest: no accelerate launch
    finally:
        proc.kill()
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------------------ skip / resume / refuse


def _publish(cfg: FakeStageConfig, data: Path, step: int, planned: int) -> Path:
    with Registry().writer("fake", cfg.run, step, config=cfg, data=[data]) as w:
        w.extra.update(planned_steps=planned)
        w.finished = step >= planned  # as stages.checkpointing.publish says it
    return w.path


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": 1}\n')
    return path


def test_a_complete_entry_with_the_same_config_and_data_is_reused(data):
    cfg = FakeStageConfig(run="r", data=str(data))
    assert published("fake", cfg, data) is None  # nothing yet
    mid = _publish(cfg, data, 1, planned=2)
    assert published("fake", cfg, data) is None  # killed mid-way: the stage runs again and resumes
    final = _publish(cfg, data, 2, planned=2)
    assert published("fake", cfg, data) == final and final != mid
    # operational fields (resume, stop_after, ...) do not count as another config
    assert published("fake", FakeStageConfig(run="r", data=str(data), resume="never"), data) == final


def test_another_config_or_other_data_is_refused_with_the_difference(data):
    cfg = FakeStageConfig(run="r", data=str(data))
    _publish(cfg, data, 2, planned=2)
    with pytest.raises(LaunchError, match=r"fake/r .* another config \(lr: recorded 0.001, now 0.01\)"):
        published("fake", FakeStageConfig(run="r", data=str(data), lr=1e-2), data)
    data.write_text('{"id": 2}\n')
    with pytest.raises(LaunchError, match="fake/r .* other data"):
        published("fake", cfg, data)


def test_config_differences_ignore_preset_fields_and_compare_init_by_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    recorded = {"init": str(folder), "lr": 1.0, "epsilon_high": 0.28, "model": {"dtype": "auto"}}
    assert config_differences(recorded, {"init": str(folder / ".." / "model"), "lr": 1.0, "epsilon_high": None,
                                         "model": {"dtype": "auto"}}) == []
    assert config_differences(recorded, {"model": {"dtype": "bfloat16"}}) == [
        "model.dtype: recorded 'auto', now 'bfloat16'"]


def test_run_stage_launches_once_then_skips_and_reports_a_failure(data, tmp_path, monkeypatch):
    log = tmp_path / "launched.txt"
    monkeypatch.setenv("FAKE_STAGE_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    plan = plan_launch(LaunchConfig(timeout=120), env=dict(os.environ))
    cfg = FakeStageConfig(run="r", data=str(data), resume="never")
    folder = run_stage(plan, stage="fake", module="tests.recipes.fake_stage", cfg=cfg, data=data,
                       config_dir=tmp_path / "launch")
    assert folder == Registry().latest("fake", "r") and folder.name == "step-00000002"
    yaml_file = tmp_path / "launch" / "fake-r.yaml"
    assert log.read_text().splitlines() == [f"--config {yaml_file}"]
    assert "resume: auto" in yaml_file.read_text()  # the stage always continues its own run
    assert run_stage(plan, stage="fake", module="tests.recipes.fake_stage", cfg=cfg, data=data,
                     config_dir=tmp_path / "launch") == folder
    assert len(log.read_text().splitlines()) == 1  # the second call launched nothing
    with pytest.raises(LaunchError, match=r"stage fake exited 3 \(.*fake_stage --config .*\); rerun the same command"):
        run_stage(plan, stage="fake", module="tests.recipes.fake_stage", cfg=FakeStageConfig(run="f", fail=True,
                  data=str(data)), data=data, config_dir=tmp_path / "launch")


def test_a_stage_past_its_timeout_is_stopped(data, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STAGE_LOG", str(tmp_path / "launched.txt"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    plan = plan_launch(LaunchConfig(timeout=3), env=dict(os.environ))
    with pytest.raises(LaunchError, match="stage fake ran past 3 s and was stopped; rerun the same command"):
        run_stage(plan, stage="fake", module="tests.recipes.fake_stage", cfg=FakeStageConfig(run="t", sleep=120,
                  data=str(data)), data=data, config_dir=tmp_path)
    assert Registry().latest("fake", "t") is None


# ------------------------------------------------------------------------------------------ hub ids (fix 5)


def test_a_hub_id_is_a_model_reference_everywhere():
    from evaluation.run import resolve_model
    from stages.model import resolve_model_path

    hub = "Qwen/Qwen2.5-VL-7B-Instruct"
    assert Registry().resolve_model(hub) == hub and resolve_model_path(hub) == hub
    path, manifest = resolve_model(hub)  # evaluation: the base model of the 7B recipe
    assert str(path) == hub and manifest == {}
    with pytest.raises(RegistryError, match="no checkpoint for 'sft:latest'"):  # a registry ref still must exist
        Registry().resolve_model("sft:latest")


# ------------------------------------------------------------------------------------------ a stage run twice


def test_a_finished_stage_run_again_trains_nothing(tmp_path, capsys):
    # `make pretrain` twice: resume=auto finds the run finished; the Trainer alone would add one more step
    from corpora.demo import build_demo
    from recipes import pretrain as pretrain_recipe

    demo = build_demo(tmp_path / "demo", n_train=4, n_eval=4, image_size=56)
    args = [f"data={demo.pairs}", "max_steps=2", "batch_size=4", "eval_fraction=0", "run=twice"]
    assert pretrain_recipe.main(args) == 0
    assert pretrain_recipe.main(args) == 0
    assert "pretrain/twice already finished at step 2: nothing to do" in capsys.readouterr().out
    assert [e["step"] for e in Registry().entries("pretrain")] == [2]
