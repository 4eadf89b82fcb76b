"""PathoCLIP training on the tiny config: learning, registry entries, export, resume, TensorBoard, errors."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stages.config import ConfigError, config_class_of, load_config
from stages.registry import Registry
from stages.runs import RunError

from pathoclip.export import read_training_checkpoint
from pathoclip.data import phase_rows
from pathoclip.train import CLIPTrainConfig, train

CONFIGS = sorted((Path(__file__).parents[2] / "pathoclip" / "configs").glob("*.yaml"))


def _entries(home):
    return {e["extra"]["phase"]: e for e in Registry(home).entries("pathoclip")}


def test_two_phases_learn_and_chain_in_the_registry(trained):
    home, final, _ = trained
    a, b = _entries(home)["a"], _entries(home)["b"]
    assert Path(b["path"]) == final and b["parent"] == a["ref"] and a["parent"] is None
    assert b["step"] == a["step"] + b["metrics"]["phase_steps"] > a["step"] > 0
    assert (a["finished"], b["finished"]) == (False, True)  # phase a is half of the run: not pathoclip:latest
    assert a["metrics"]["samples"] == 96 and b["metrics"]["samples"] == 192
    assert b["kind"] == "open_clip" and b["config"]["model"] == "PathoCLIP-Tiny"
    # the contrastive loss falls and the classes are learned: zero-shot well above chance (4 classes)
    assert b["metrics"]["loss_final"] < b["metrics"]["loss_first"] - 0.3
    assert b["metrics"]["zeroshot_chance"] == 0.25
    assert b["metrics"]["zeroshot_accuracy"] >= 0.45


def test_phase_b_starts_from_phase_a_weights(trained):
    home, _, _ = trained
    params = (home / "logs" / "pathoclip" / "t" / "b" / "params.txt").read_text()
    assert f"pretrained: {_entries(home)['a']['path']}/open_clip_model.safetensors" in params


def test_export_is_open_clip_hf_hub_layout_and_loads_with_plain_open_clip(trained):
    import open_clip

    _, final, _ = trained
    assert sorted(p.name for p in final.iterdir()) == [
        "manifest.json", "open_clip_config.json", "open_clip_model.safetensors"]
    config = json.loads((final / "open_clip_config.json").read_text())
    assert config["model_cfg"]["vision_cfg"]["image_size"] == 56 and "mean" in config["preprocess_cfg"]
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{final}")
    saved = load_file(str(final / "open_clip_model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    # the export holds the trained weights of the last open_clip_train checkpoint, not a fresh init
    last = read_training_checkpoint(final.parents[2] / "logs" / "pathoclip" / "t" / "b" / "checkpoints" / "epoch_3.pt")
    assert torch.equal(last["visual.conv1.weight"], saved["visual.conv1.weight"])
    assert preprocess.transforms[0].size in (56, (56, 56))


def test_tensorboard_logs_under_home_logs(trained):
    home, _, _ = trained
    for phase in "ab":
        assert list((home / "logs" / "pathoclip" / "t" / phase / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_auto_skips_finished_phases(trained, monkeypatch, capsys):
    home, final, args = trained
    monkeypatch.setenv("PATHOR1_HOME", str(home))
    before = len(Registry(home).entries("pathoclip"))
    assert train(load_config(CLIPTrainConfig, args)) == final
    assert "already finished" in capsys.readouterr().out
    assert len(Registry(home).entries("pathoclip")) == before


def test_resume_never_refuses_an_existing_run(trained, monkeypatch):
    home, _, args = trained
    monkeypatch.setenv("PATHOR1_HOME", str(home))
    # the RunPlan rule every stage follows, checked before open_clip_train starts
    with pytest.raises(RunError, match=r"run pathoclip/t already has checkpoints; pass resume=auto"):
        train(load_config(CLIPTrainConfig, [*args, "resume=never"]))


def test_resume_continues_an_interrupted_phase_from_its_newest_checkpoint(tmp_path, monkeypatch):
    # a one-phase run of 2 epochs, "interrupted" after epoch 1: its registry entry and epoch_2.pt are gone
    from corpora.demo import build_demo

    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    demo = build_demo(tmp_path / "demo", n_train=32, n_eval=4, image_size=56)
    args = [f"data={demo.pairs}", "subset_fraction=0", "epochs_b=2", "batch_size=16", "run=r"]
    first = train(load_config(CLIPTrainConfig, args))
    checkpoints = tmp_path / "logs" / "pathoclip" / "r" / "b" / "checkpoints"
    shutil.rmtree(first)
    (checkpoints / "epoch_2.pt").unlink()
    again = train(load_config(CLIPTrainConfig, args))
    log = (checkpoints.parent / "out.log").read_text()
    assert "resuming checkpoint" in log and "epoch_1.pt' (epoch 1)" in log
    assert again.name == first.name and (checkpoints / "epoch_2.pt").is_file()


def test_weights_only_load_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Path("x")}, path)
    with pytest.raises(ValueError, match=r"evil.pt: not a loadable open_clip_train checkpoint"):
        read_training_checkpoint(path)


def test_phase_rows_draw_a_seeded_subset():
    rows = phase_rows(10, 0.3, seed=1)
    assert len(rows["a"]) == 3 and rows["b"] == list(range(10))
    assert rows == phase_rows(10, 0.3, seed=1) and rows["a"] != phase_rows(10, 0.3, seed=2)["a"]
    assert list(phase_rows(10, 0.0, seed=1)) == ["b"]


def test_bad_config_values_are_reported():
    with pytest.raises(ConfigError, match="subset_fraction must be in"):
        load_config(CLIPTrainConfig, ["subset_fraction=1"])
    with pytest.raises(ConfigError, match="data_format"):
        load_config(CLIPTrainConfig, ["data_format=parquet"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_training_configs_load(path):
    assert config_class_of(path) is CLIPTrainConfig
    cfg = load_config(CLIPTrainConfig, ["--config", str(path)])
    assert (Path(__file__).parents[2] / "pathoclip" / "configs" / f"{cfg.model}.json").is_file()


def test_cli_help_lists_fields(capsys):
    from pathoclip.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "subset_fraction" in capsys.readouterr().out


def test_webdataset_shards_written_by_corpora_feed_open_clip_train(tmp_path, monkeypatch):
    from corpora.demo import build_demo

    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    demo = build_demo(tmp_path / "demo", n_train=32, n_eval=4, image_size=56)
    args = [f"data={demo.pairs}", "data_format=webdataset", "shard_size=16", "subset_fraction=0", "epochs_b=1",
            "batch_size=16", "logging_steps=1", "run=w"]
    entry = Registry(tmp_path).manifest(train(load_config(CLIPTrainConfig, args)))
    shards = sorted(p.name for p in (tmp_path / "logs" / "pathoclip" / "w" / "data" / "b").glob("*.tar"))
    assert shards == ["shard-000000.tar", "shard-000001.tar"]
    assert entry["metrics"]["phase_steps"] == 2 and entry["metrics"]["loss_final"] is not None
    params = (tmp_path / "logs" / "pathoclip" / "w" / "b" / "params.txt").read_text()
    assert "dataset_type: webdataset" in params and "train_num_samples: 32" in params


def test_pretrained_may_be_a_tag_a_file_an_export_or_a_registry_ref(trained, tmp_path, monkeypatch):
    from pathoclip.train import _pretrained

    home, final, _ = trained
    monkeypatch.setenv("PATHOR1_HOME", str(home))
    weights = str(final / "open_clip_model.safetensors")
    pick = lambda **kw: _pretrained(load_config(CLIPTrainConfig, [f"{k}={v}" for k, v in kw.items()]))  # noqa: E731
    assert pick() == ("PathoCLIP-Tiny", None)
    assert pick(init=weights) == ("PathoCLIP-Tiny", weights)
    assert pick(init=str(final)) == ("PathoCLIP-Tiny", weights)
    assert pick(init="pathoclip:t") == ("PathoCLIP-Tiny", weights)
    # a tag is looked up by open_clip under the architecture it was published for
    assert pick(model="PathoCLIP-ViT-B-16", init="openai") == ("ViT-B-16", "openai")


@pytest.mark.parametrize("ours, base", [("PathoCLIP-ViT-B-16", "ViT-B-16"), ("PathoCLIP-ViT-L-14", "ViT-L-14")])
def test_shipped_big_architectures_match_open_clip_so_its_pretrained_weights_load(ours, base):
    import open_clip

    from pathoclip.export import register_model_configs
    from pathoclip.train import PRETRAINED_BASE

    register_model_configs()
    assert PRETRAINED_BASE[ours] == base
    assert open_clip.get_model_config(ours) == open_clip.get_model_config(base)
    assert open_clip.list_pretrained_tags_by_model(base)  # e.g. openai: the tags a user can pass


def test_open_clip_train_runs_with_the_old_heap_frozen(monkeypatch):
    """In a phase's process the import-time heap is frozen while open_clip_train's loop runs (the GC skips it) and
    released after."""
    import gc

    import open_clip_train.main as open_clip_main

    from pathoclip import launch

    seen = {}

    def fake_main(argv):
        seen["frozen"] = gc.get_freeze_count()
        return 0

    monkeypatch.setattr(open_clip_main, "main", fake_main)
    before = gc.get_freeze_count()
    assert launch.main(["--help-not-parsed"]) == 0
    assert seen["frozen"] > before + 10_000  # torch, open_clip, ... all moved out of the collector's way
    assert gc.get_freeze_count() == 0


def test_each_phase_runs_in_a_process_of_its_own(monkeypatch):
    """pathoclip.train never runs open_clip_train (nor its torch patches) itself: each phase is
    `python -m pathoclip.launch ARGV`; a refused argv and a crash are one clear error each."""
    import subprocess
    import sys

    from pathoclip import launch

    calls, codes = [], iter([0, launch.REFUSED_EXIT, 1])
    monkeypatch.setattr(subprocess, "run", lambda cmd, **_: calls.append(cmd) or
                        subprocess.CompletedProcess(cmd, next(codes)))
    launch.run_open_clip_train(["--epochs", "1"], "r/a")
    assert calls == [[sys.executable, "-m", "pathoclip.launch", "--epochs", "1"]]
    with pytest.raises(RuntimeError, match="open_clip_train refused to start"):
        launch.run_open_clip_train(["--bad"], "r/a")
    with pytest.raises(RuntimeError, match="open_clip_train failed with exit status 1"):
        launch.run_open_clip_train(["--epochs", "1"], "r/b")


def test_a_phase_under_torchrun_meets_on_a_port_rank_0_names(monkeypatch):
    """Under torchrun's agent store each phase's ranks agree, through that store, on a fresh port for the phase's
    own process group (the store keeps the last phase's keys); one process, or no agent store: env unchanged."""
    import socket
    from datetime import timedelta

    from torch.distributed import TCPStore

    from pathoclip.launch import phase_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        agent_port = s.getsockname()[1]
    agent = TCPStore("127.0.0.1", agent_port, is_master=True, timeout=timedelta(seconds=30))  # the agent's store
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(agent_port),
           "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "0"}
    rank0 = phase_env("r/a", {**env, "RANK": "0"})
    rank1 = phase_env("r/a", {**env, "RANK": "1"})
    assert rank0["MASTER_PORT"] == rank1["MASTER_PORT"] != str(agent_port)
    assert rank0["TORCHELASTIC_USE_AGENT_STORE"] == rank1["TORCHELASTIC_USE_AGENT_STORE"] == "False"
    assert agent.get("pathoclip/0/r/a/port").decode() == rank0["MASTER_PORT"]
    assert phase_env("r/b", {**env, "RANK": "0"})["MASTER_PORT"] == agent.get("pathoclip/0/r/b/port").decode()
    single = {"WORLD_SIZE": "1", "MASTER_PORT": "1234"}
    assert phase_env("r/a", single) == single
    assert phase_env("r/a", {**env, "TORCHELASTIC_USE_AGENT_STORE": "False"})["MASTER_PORT"] == str(agent_port)
