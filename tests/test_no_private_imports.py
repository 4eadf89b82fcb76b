"""No module takes another module's private name: ``from X import _name`` across the project's modules (tests
excluded) couples a caller to what its owner may rename or remove without notice. A name that another module
needs is public where it is defined (or moved to a lower module that both use)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("corpora", "stages", "pathoclip", "evaluation", "recipes", "benchmarks", "scripts")


def private_imports(source: str, packages=PACKAGES) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in packages:
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_a_private_name_of_another():
    bad = [f"{f.relative_to(ROOT)}:{hit}" for p in PACKAGES for f in sorted((ROOT / p).rglob("*.py"))
           for hit in private_imports(f.read_text())]
    assert bad == []


def test_the_check_sees_a_private_import():
    assert private_imports("from evaluation.suites import SuiteError, _first\nfrom os import _exit\n") == \
        ["1: from evaluation.suites import _first"]
    assert private_imports("def f():\n    from stages.cuda_check import _driver\n") == \
        ["2: from stages.cuda_check import _driver"]
