"""The dependency direction from shared/DESIGN.md, checked mechanically on the source (AST, no imports):

corpora <- stages <- recipes;  corpora <- pathoclip <- recipes;  corpora <- evaluation <- recipes.
The foundation modules stages.adapters (the table of library touches) / stages.cli / stages.compat / stages.config /
stages.registry / stages.runs are shared by everyone above corpora; importing them loads no torch-heavy library and
no other stage module (checked in a fresh interpreter).
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["corpora", "stages", "pathoclip", "evaluation", "recipes"]
FOUNDATION = {"stages", "stages.adapters", "stages.cli", "stages.compat", "stages.config", "stages.registry",
              "stages.runs"}
FOUNDATION_PREFIXES = ("stages.adapters.", "stages.cli.", "stages.compat.", "stages.config.", "stages.registry.",
                       "stages.runs.")
TRAINING_STAGES = ["stages.pretrain", "stages.sft", "stages.rl", "stages.opd"]
HEAVY = ("torch", "torchvision", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "bitsandbytes",
         "open_clip", "open_clip_train", "vllm", "PIL")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def project_imports(package: str) -> dict[str, set[str]]:
    out = {}
    for f in sorted((ROOT / package).rglob("*.py")):
        mods = {m for m in imports_of(f) if m.split(".")[0] in PACKAGES and m.split(".")[0] != package}
        own = {m for m in imports_of(f) if m.split(".")[0] == package}
        out[str(f.relative_to(ROOT))] = mods | own
    return out


def _violations(package, allowed):
    bad = []
    for f, mods in project_imports(package).items():
        for m in mods:
            top = m.split(".")[0]
            if top == package:
                continue
            if not allowed(m):
                bad.append(f"{f} imports {m}")
    return bad


def test_corpora_imports_no_project_package():
    assert _violations("corpora", lambda m: False) == []


def test_stages_import_only_corpora():
    assert _violations("stages", lambda m: m.startswith("corpora")) == []


@pytest.mark.parametrize("package", ["pathoclip", "evaluation"])
def test_siblings_import_only_corpora_and_foundation(package):
    def ok(m):
        # `from stages.registry import home` is recorded as both stages.registry and stages.registry.home
        return m.startswith("corpora") or m in FOUNDATION or m.startswith(FOUNDATION_PREFIXES)

    assert _violations(package, ok) == []


def test_nothing_imports_recipes():
    for package in ["corpora", "stages", "pathoclip", "evaluation"]:
        assert _violations(package, lambda m: not m.startswith("recipes")) == []


def test_training_stages_are_independent():
    for stage in TRAINING_STAGES:
        mod_path = ROOT / Path(*stage.split("."))
        files = list(mod_path.rglob("*.py")) if mod_path.is_dir() else [mod_path.with_suffix(".py")]
        for f in [f for f in files if f.exists()]:
            others = [s for s in TRAINING_STAGES if s != stage]
            hits = [m for m in imports_of(f) if any(m == o or m.startswith(o + ".") for o in others)]
            assert hits == [], f"{f} imports another training stage: {hits}"


def test_checker_catches_a_violation(tmp_path):
    # The checker itself must be able to fail: a file importing stages from corpora is flagged.
    f = tmp_path / "bad.py"
    f.write_text("from stages.model import load_model\nimport evaluation.run\n")
    assert {"stages.model", "evaluation.run"} <= imports_of(f)


def modules_loaded_by(*modules: str) -> list[str]:
    """Every module in sys.modules after importing ``modules`` in a fresh interpreter (transitive imports count)."""
    code = f"import json, sys; import {', '.join(modules)}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_foundation_imports_no_heavy_library_and_no_other_stage_module():
    """What pathoclip, evaluation and every CLI's --help rely on (they import the foundation at the top)."""
    loaded = modules_loaded_by(*sorted(FOUNDATION))
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []
    assert [m for m in loaded if m.split(".")[0] == "stages" and m not in FOUNDATION] == []
    assert [m for m in loaded if m.split(".")[0] in PACKAGES and m.split(".")[0] not in ("stages", "corpora")] == []


def test_the_foundation_check_can_fail():
    loaded = modules_loaded_by("stages.model")  # not foundation: the model factory imports corpora and the registry
    assert "stages.model" in loaded and [m for m in loaded if m.split(".")[0] == "stages" and m not in FOUNDATION]
