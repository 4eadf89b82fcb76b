"""One vocabulary for every training entry point (stages.runs), old names accepted with a warning, and the TRL keys
pathor1 sets derived from the one dict GRPOConfig is built from (stages.rl.config.grpo_settings)."""
import dataclasses
import warnings

import pytest

from pathoclip.train import CLIPTrainConfig
from recipes.patho_r1 import PathoR1Config
from stages.config import ConfigError, RenamedKeyWarning, load_config, load_config_or_exit, to_dict
from stages.pretrain import PretrainConfig
from stages.rl.config import RLConfig, grpo_settings, trl_owned
from stages.runs import RunConfig, StepRunConfig, with_current_names
from stages.sft import SFTConfig

SHARED = [f.name for f in dataclasses.fields(RunConfig)]
STEPPED = [f.name for f in dataclasses.fields(StepRunConfig)]


@pytest.mark.parametrize("cls", [PretrainConfig, SFTConfig, RLConfig, CLIPTrainConfig])
def test_every_entry_point_uses_the_shared_names(cls):
    names = {f.name for f in dataclasses.fields(cls)}
    assert set(SHARED) <= names
    if cls is not CLIPTrainConfig:  # PathoCLIP counts open_clip_train epochs, not optimizer steps
        assert set(STEPPED) <= names
    assert not names & {"steps", "batch", "wd", "pretrained", "log_every_n_steps"}


def test_old_rl_names_load_with_a_warning_naming_the_new_one(tmp_path):
    yaml_file = tmp_path / "rl.yaml"
    yaml_file.write_text("algorithm: grpo\nsteps: 7\n")
    with pytest.warns(RenamedKeyWarning) as caught:
        cfg = load_config(RLConfig, ["--config", str(yaml_file), "batch=3"])
    assert (cfg.max_steps, cfg.batch_size) == (7, 3)
    messages = sorted(str(w.message) for w in caught)
    assert messages == ["RLConfig: 'batch' (from command-line argument 'batch=3') is deprecated; use 'batch_size'",
                        f"RLConfig: 'steps' (from {yaml_file}:2) is deprecated; use 'max_steps'"]
    assert "steps" not in to_dict(cfg) and to_dict(cfg)["max_steps"] == 7  # saved under the new name only


def test_old_and_new_name_together_is_an_error():
    with pytest.raises(ConfigError, match="'steps' .* is the old name of 'max_steps'.*set only 'max_steps'"):
        load_config(RLConfig, ["steps=3", "max_steps=4"])


def test_nested_old_names_in_a_recipe_and_pathoclip_renames():
    with pytest.warns(RenamedKeyWarning) as caught:
        cfg = load_config(PathoR1Config, ["rl.steps=3", "clip.wd=0.2", "clip.pretrained=openai",
                                          "clip.log_every_n_steps=2"])
    assert sorted(str(w.message).rsplit("use ", 1)[1] for w in caught) == [
        "'clip.init'", "'clip.logging_steps'", "'clip.weight_decay'", "'rl.max_steps'"]
    assert cfg.rl.max_steps == 3
    assert (cfg.clip.weight_decay, cfg.clip.init, cfg.clip.logging_steps) == (0.2, "openai", 2)


def test_cli_prints_the_rename_as_one_line(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing else may leak out as a Python warning
        cfg = load_config_or_exit(SFTConfig, ["wd=0.01"], prog="recipes.sft")
    assert cfg.weight_decay == 0.01
    assert capsys.readouterr().err == "recipes.sft: warning: SFTConfig: 'wd' (from command-line argument 'wd=0.01') " \
                                      "is deprecated; use 'weight_decay'\n"


def test_an_old_manifest_config_reads_under_the_new_names():
    assert with_current_names(RLConfig, {"steps": 5, "batch": 2, "lr": 1.0}) == {"max_steps": 5, "batch_size": 2,
                                                                                 "lr": 1.0}


# --------------------------------------------------------------------------------------------- TRL owned keys
def _names_a_field(dotted: str) -> bool:
    """A nested RLConfig field such as model.dtype or tools.max_turns."""
    obj = RLConfig()
    for part in dotted.split("."):
        if not any(f.name == part for f in dataclasses.fields(obj)):
            return False
        obj = getattr(obj, part)
    return True


def test_trl_refuses_exactly_the_keys_grpo_args_sets():
    from stages.rl.training import grpo_args

    cfg = RLConfig(init="unused", max_steps=3, batch_size=2, num_generations=4, save_every=2).resolved()
    built = grpo_args(cfg, "out")
    settings = grpo_settings(cfg, "out", engine={"use_cpu": True})
    assert set(settings) <= set(trl_owned())
    for key, (_, value) in settings.items():  # what we set is what TRL got (nothing overrode it)
        assert getattr(built, key) == value or key in ("report_to",), key
    rl_fields = {f.name for f in dataclasses.fields(RLConfig)}
    for key, source in trl_owned().items():  # the refusal names a real field, or says why none
        assert source in rl_fields or source in (None, "launcher") or _names_a_field(source), (key, source)


@pytest.mark.parametrize("arg, message", [
    # the example: it used to pass and silently override the project's own False
    ("trl.remove_unused_columns=true", "pathor1 sets GRPOConfig.remove_unused_columns itself to a fixed value"),
    ("trl.max_steps=5", "pathor1 sets GRPOConfig.max_steps itself from 'max_steps'; set that instead"),
    ("trl.per_device_train_batch_size=5", "from 'micro_batch'"),
    ("trl.use_cpu=true", "from the launcher"),
])
def test_owned_trl_keys_are_refused_with_the_field_to_set(arg, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RLConfig, [arg])
    with pytest.raises(ValueError, match=message.split(";")[0]):  # configs built in Python too
        key, value = arg.split("=")
        RLConfig(trl={key.split(".", 1)[1]: value})
