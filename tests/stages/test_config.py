"""stages.config: defaults -> YAML -> CLI layering, type checks, error messages, --help, round trips."""
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from stages.config import (
    ConfigError,
    config_class_of,
    from_dict,
    help_text,
    load_config,
    load_config_or_exit,
    save_yaml,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Lora:
    enabled: bool = False
    r: int = field(default=8, metadata={"help": "adapter rank"})
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class Train:
    """Train a tiny thing."""

    lr: float = field(default=1e-5, metadata={"help": "peak learning rate"})
    steps: int = 10
    loss: Literal["grpo", "dapo"] = field(default="grpo", metadata={"help": "policy loss"})
    run: Optional[str] = None
    out: Path = Path("runs")
    betas: tuple[float, float] = (0.9, 0.999)
    lora: Lora = field(default_factory=lambda: Lora(r=16))  # customised nested default

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class Required:
    data: str


@dataclass
class Derived:
    width: int = 2
    area: int = field(init=False)

    def __post_init__(self):
        self.area = self.width * self.width


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_defaults_then_yaml_then_cli(tmp_path):
    assert load_config(Train, []) == Train()
    y = write(tmp_path, """\
        lr: 0.001
        steps: 5
        lora:
          enabled: true
        """)
    cfg = load_config(Train, ["steps=7", "--config", str(y), "lora.targets=[a, b]"])
    assert cfg.lr == 0.001  # from YAML
    assert cfg.steps == 7  # CLI wins over YAML even when written before --config
    assert cfg.lora == Lora(enabled=True, r=16, targets=["a", "b"])  # nested default r=16 kept


def test_values_are_parsed_as_yaml_scalars_and_converted():
    cfg = load_config(Train, ["lr=1e-4", "steps=3", "run=007", "out=/tmp/x", "betas=[0, 0.5]", "lora.enabled=1"])
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)  # PyYAML reads 1e-4 as a string; still a float
    assert cfg.run == "007"  # a str field keeps what was typed
    assert cfg.out == Path("/tmp/x") and cfg.betas == (0.0, 0.5) and isinstance(cfg.betas[0], float)
    assert cfg.lora.enabled is True
    assert load_config(Train, ["run=null", "lora.enabled=false"]).run is None
    assert load_config(Train, ["lr=2"]).lr == 2.0  # an int is a fine float


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lr=abc"], "Train.lr (from command-line argument 'lr=abc'): expected float, got 'abc' (str)"),
        (["steps=1.5"], "Train.steps (from command-line argument 'steps=1.5'): expected int, got 1.5 (float)"),
        (["steps=true"], "expected int, got True (bool)"),
        (["loss=ppo"], "Train.loss (from command-line argument 'loss=ppo'): expected 'grpo' | 'dapo', got 'ppo'"),
        (["lora.enabled=maybe"], "Train.lora.enabled (from command-line argument 'lora.enabled=maybe'): "
                                 "expected bool, got 'maybe' (str)"),
        (["lora.targets=[a, [b]]"], "item 1 (['b']) is not str; expected list[str]"),
        (["betas=[1]"], "Train.betas (from command-line argument 'betas=[1]'): expected 2 items"),
        (["lrr=1"], "Train: unknown key 'lrr' (from command-line argument 'lrr=1'); did you mean 'lr'?"),
        (["lora.rank=4"], "Train: unknown key 'lora.rank' (from command-line argument 'lora.rank=4'); "
                          "did you mean 'lora.r'?"),
        (["zzz=1"], "unknown key 'zzz' (from command-line argument 'zzz=1'); valid keys: lr, steps, loss,"),
        (["lr=-1"], "Train: invalid value: lr must be > 0, got -1.0"),
        (["--lr", "1"], "unexpected argument '--lr' (write it as lr=VALUE)"),
        (["--config"], "--config needs a file name"),
    ],
)
def test_cli_errors_are_clear(argv, message):
    with pytest.raises(ConfigError) as e:
        load_config(Train, argv)
    assert message in str(e.value)


def test_yaml_errors_name_file_and_line(tmp_path):
    y = write(tmp_path, """\
        # a comment
        lr: 0.1
        lora:
          r: sixteen
        """)
    with pytest.raises(ConfigError, match=rf"Train\.lora\.r \(from {y}:4\): expected int, got 'sixteen'"):
        load_config(Train, ["--config", str(y)])
    bad = write(tmp_path, "lr: [1, 2\n", "bad.yaml")
    with pytest.raises(ConfigError, match=rf"{bad}:\d+: invalid YAML"):
        load_config(Train, ["--config", str(bad)])
    with pytest.raises(ConfigError, match=rf"{write(tmp_path, '- 1', 'l.yaml')}:1: a config file must be a mapping"):
        load_config(Train, ["--config", str(tmp_path / "l.yaml")])
    with pytest.raises(ConfigError, match="cannot read config file .*missing.yaml"):
        load_config(Train, ["--config", str(tmp_path / "missing.yaml")])
    assert ValueError in ConfigError.__mro__  # callers may catch ValueError


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"Required: missing required key 'data' \(str\)"):
        load_config(Required, [])
    assert load_config(Required, ["data=x"]).data == "x"


def test_help_lists_every_field_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        load_config(Train, ["lr=1", "--help"], prog="python -m demo")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m demo [--config FILE.yaml] [key=value ...]")
    assert "Train a tiny thing." in out
    assert "  lr: float = 1e-05\n      peak learning rate\n" in out
    assert "  loss: 'grpo' | 'dapo' = 'grpo'\n      policy loss\n" in out
    assert "  run: str | None = None\n" in out
    assert "  lora.r: int = 16\n      adapter rank\n" in out  # the parent's customised default, not 8
    assert "  lora.targets: list[str] = ['q_proj', 'v_proj']\n" in out
    assert "data: str = (required)" in help_text(Required, "p")


def test_print_config_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_config(Train, ["steps=4", "--print-config"])
    printed = write(tmp_path, capsys.readouterr().out, "printed.yaml")
    assert load_config(Train, ["--config", str(printed)]) == Train(steps=4)


def test_to_dict_from_dict_and_save_yaml_round_trip(tmp_path):
    cfg = load_config(Train, ["run=r1", "lora.enabled=true"])
    d = to_dict(cfg)
    assert d["out"] == "runs" and d["betas"] == [0.9, 0.999] and d["lora"]["r"] == 16  # plain YAML types
    assert from_dict(Train, d) == cfg
    path = save_yaml(cfg, tmp_path / "sub" / "saved.yaml")
    assert path.read_text().splitlines()[0] == f"# config: {__name__}:Train"
    assert config_class_of(path) is Train
    assert load_config(Train, ["--config", str(path)]) == cfg
    with pytest.raises(TypeError):
        to_dict(Train)
    assert from_dict(Derived, to_dict(Derived(width=3))).area == 9  # init=False fields are recomputed


def test_config_class_of_requires_the_header(tmp_path):
    with pytest.raises(ConfigError, match=r"nohdr.yaml:1: missing header line '# config: package.module:ClassName'"):
        config_class_of(write(tmp_path, "lr: 1\n", "nohdr.yaml"))
    with pytest.raises(ConfigError, match="cannot import config class 'no_such_module:X'"):
        config_class_of(write(tmp_path, "# config: no_such_module:X\n", "bad.yaml"))


def test_load_config_or_exit_prints_and_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        load_config_or_exit(Train, ["lr=abc"], prog="train")
    assert e.value.code == 2
    assert "train: error: Train.lr (from command-line argument 'lr=abc'): expected float" in capsys.readouterr().err
    assert load_config_or_exit(Train, ["steps=2"]).steps == 2


def test_import_is_light():
    # The foundation is imported by everything: it must not pull torch or transformers in.
    code = "import sys, stages.config; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
