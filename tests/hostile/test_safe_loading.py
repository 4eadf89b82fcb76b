"""Safe loading (docs/SAFETY.md): our weights are safetensors only; the pickles we cannot avoid (Trainer optimizer /
RNG state, open_clip_train epoch checkpoints) load with weights_only=True; remote code stays off unless a config
field turns it on."""
import ast
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from stages.model import ModelConfig, build_tiny, load_model

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("corpora", "stages", "pathoclip", "evaluation", "recipes", "benchmarks")
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".msgpack"}


# ----------------------------------------------------------------------------------------------- source scan
def _call_name(node: ast.Call) -> str:
    """`torch.load`, `pickle.loads`, `from_pretrained`... the dotted name a call is made through."""
    parts, func = [], node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _kw(node: ast.Call, name: str):
    """The constant value of keyword `name` (`...` if it is passed but not a constant, None if absent)."""
    for keyword in node.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else ...
    return None


def unsafe_calls(source: str) -> list[str]:
    """Calls that could run code hidden in a file we load, each as `line: what`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name, where = _call_name(node), node.lineno
        if name.endswith("torch.load") and _kw(node, "weights_only") is not True:
            found.append(f"{where}: torch.load without weights_only=True")
        if name.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib") and name.endswith(("load", "loads")):
            found.append(f"{where}: {name} unpickles arbitrary objects")
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load") and not str(ast.unparse(node)).count("SafeLoader"):
            found.append(f"{where}: {name} without SafeLoader")
        if name.endswith("load") and _kw(node, "allow_pickle") not in (None, False):
            found.append(f"{where}: {name} with allow_pickle")
        if _kw(node, "trust_remote_code") is True:
            found.append(f"{where}: trust_remote_code=True hard-coded")
        if _kw(node, "safe_serialization") is False:
            found.append(f"{where}: safe_serialization=False")
    return found


def _sources():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("snippet", [
    "torch.load(path)",
    "torch.load(path, weights_only=False)",
    "torch.load(path, weights_only=flag)",
    "pickle.load(f)",
    "pickle.loads(data)",
    "yaml.load(text)",
    "numpy.load(path, allow_pickle=True)",
    "AutoModel.from_pretrained(path, trust_remote_code=True)",
    "model.save_pretrained(out, safe_serialization=False)",
])
def test_the_scanner_catches_each_unsafe_call(snippet):
    assert len(unsafe_calls(snippet)) == 1


def test_the_scanner_accepts_the_safe_forms():
    safe = ("torch.load(p, map_location='cpu', weights_only=True)\nyaml.safe_load(t)\n"
            "yaml.load(t, Loader=yaml.SafeLoader)\nAutoConfig.from_pretrained(p, trust_remote_code=cfg.trust_remote_code)\n"
            "model.save_pretrained(out, safe_serialization=True)\nnp.load(p)\n")
    assert unsafe_calls(safe) == []


def test_project_sources_load_nothing_unsafely():
    sources = list(_sources())
    assert len(sources) > 20  # the scan really reads the packages
    problems = [f"{path.relative_to(ROOT)}:{p}" for path in sources for p in unsafe_calls(path.read_text())]
    assert problems == []


def test_trust_remote_code_defaults_to_false_in_every_config():
    fields = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "trust_remote_code":
                default = node.value
                if isinstance(default, ast.Call):  # field(default=False, metadata=...)
                    default = next(k.value for k in default.keywords if k.arg == "default")
                fields.append((str(path.relative_to(ROOT)), ast.literal_eval(default)))
    assert fields and all(value is False for _, value in fields), fields
    assert ModelConfig().trust_remote_code is False


# ----------------------------------------------------------------------------------------------- files and loads
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny("qwen2_vl", tmp_path_factory.mktemp("tiny") / "model")


def test_tiny_model_folder_holds_safetensors_and_no_pickles_or_code(tiny_folder):
    from safetensors import safe_open

    files = [p for p in tiny_folder.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert weights and [p.name for p in files if p.suffix in PICKLE_SUFFIXES] == []
    assert [p.name for p in files if p.suffix == ".py"] == []  # nothing for trust_remote_code to run
    assert "auto_map" not in json.loads((tiny_folder / "config.json").read_text())
    for path in weights:
        with safe_open(str(path), "pt") as f:
            assert list(f.keys())


def test_remote_code_in_a_checkpoint_is_never_run_by_default(tiny_folder, tmp_path):
    # A checkpoint that asks for custom modelling code: with trust_remote_code off (the default) transformers
    # must use its own Qwen2-VL classes and never import the folder's python file.
    folder = tmp_path / "model"
    folder.mkdir()
    for p in tiny_folder.iterdir():
        if p.is_file():
            (folder / p.name).write_bytes(p.read_bytes())
    marker = tmp_path / "remote-code-ran"
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                    "from transformers import Qwen2VLConfig as EvilConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    model, _ = load_model(ModelConfig(name_or_path=str(folder)))
    assert not marker.exists()
    assert type(model).__module__.startswith("transformers.models.qwen2_vl")


class _Payload:
    """Unpickling this runs os.makedirs(marker): what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_open_clip_train_resume_load_refuses_code_in_a_pickle(tmp_path):
    # open_clip_train's pt_load calls torch.load without weights_only; torch >= 2.6 defaults it to True, which
    # is what keeps PathoCLIP's resume safe (docs/SAFETY.md). This fails if that default is ever switched off.
    from open_clip_train.file_utils import pt_load

    marker = tmp_path / "payload-ran"
    torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)}, tmp_path / "epoch_1.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        pt_load(str(tmp_path / "epoch_1.pt"), map_location="cpu")
    assert not marker.exists()
    plain = {"epoch": 1, "state_dict": {"w": torch.ones(2)}}
    torch.save(plain, tmp_path / "epoch_2.pt")
    assert torch.equal(pt_load(str(tmp_path / "epoch_2.pt"))["state_dict"]["w"], torch.ones(2))


def test_trainer_state_pickles_load_with_weights_only(tmp_path):
    # The Trainer's resume files (optimizer.pt, scheduler.pt, rng_state.pth) are pickles; transformers loads each
    # with weights_only=True, so the same payload in an optimizer.pt is refused.
    marker = tmp_path / "payload-ran"
    torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)}, tmp_path / "optimizer.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "optimizer.pt", map_location="cpu", weights_only=True)
    assert not marker.exists()
    import transformers.trainer as trainer_module

    source = Path(trainer_module.__file__).read_text()
    assert "torch.load(" in source and unsafe_calls(source) == []  # every torch.load in Trainer is weights_only
