"""Every shipped YAML config loads into the dataclass its header names.

Convention: the first line of each YAML under ``*/configs/`` is ``# config: package.module:ClassName``
(``stages.config.CONFIG_HEADER``; ``save_yaml`` writes it). A file without it fails here.
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from stages.config import ConfigError, config_class_of, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIRS = ["recipes/configs", "stages/configs", "pathoclip/configs", "evaluation/configs"]
FIXTURE_DIR = ROOT / "tests" / "fixtures" / "configs"
# Launcher configs read by `accelerate launch --config_file`, not by stages.config: checked separately below.
ACCELERATE_DIR = ROOT / "recipes" / "configs" / "accelerate"
# pytest's importlib mode does not register test modules under their bare name; the fixture YAMLs name
# `test_shipped_configs:ExampleConfig`, so make that importable.
sys.modules.setdefault("test_shipped_configs", sys.modules[__name__])


@dataclass
class ExampleLora:
    r: int = 8
    targets: list[str] = field(default_factory=list)


@dataclass
class ExampleConfig:
    """The class tests/fixtures/configs/example.yaml names, so this test runs before any config ships."""

    name: str = ""
    lr: float = 1e-5
    lora: ExampleLora = field(default_factory=ExampleLora)


def yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml"))


def config_files() -> list[Path]:
    found = [p for d in CONFIG_DIRS for p in yaml_files(ROOT / d) if ACCELERATE_DIR not in p.parents]
    return found + yaml_files(FIXTURE_DIR)


def load_shipped(path: Path):
    return load_config(config_class_of(path), ["--config", str(path)])


@pytest.mark.parametrize("path", config_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_config_loads_into_its_class(path):
    cfg = load_shipped(path)
    assert type(cfg) is config_class_of(path)


def test_fixture_values_arrive():
    cfg = load_shipped(FIXTURE_DIR / "example.yaml")
    assert (cfg.name, cfg.lr, cfg.lora.r, cfg.lora.targets) == ("example", 3e-4, 4, ["q_proj", "v_proj"])


def test_a_config_without_header_fails(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text("lr: 0.1\n")
    with pytest.raises(ConfigError, match="bare.yaml:1: missing header line"):
        load_shipped(bare)


def test_a_bad_value_in_a_shipped_config_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("# config: test_shipped_configs:ExampleConfig\nlora:\n  r: four\n")
    with pytest.raises(ConfigError, match=r"ExampleConfig\.lora\.r \(from .*bad.yaml:3\): expected int"):
        load_shipped(bad)


@pytest.mark.parametrize("path", yaml_files(ACCELERATE_DIR), ids=lambda p: p.name)
def test_accelerate_launcher_config_parses(path):
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and "distributed_type" in data, f"{path}: not an accelerate config"
