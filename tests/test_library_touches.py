"""Every touch of a library internal is a row of stages.adapters.TOUCHES (library, symbol, tested range, what happens
outside it); a private access, a private override or a swap of a library object's method without a row fails here,
and so does a row that nothing uses any more, or one whose range no module of its checks where the touch is made. The scan is static (AST) plus one runtime fact: whether a private
method a class of ours defines exists on one of its library base classes (then it is an override)."""
import ast
import importlib
import sys
from pathlib import Path

import pytest

from stages import adapters
from stages.adapters import TOUCHES, LibraryVersionError, touch_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("corpora", "stages", "pathoclip", "evaluation", "recipes")
FILES = sorted(f for p in PACKAGES for f in (ROOT / p).rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _parse():
    return {f: ast.parse(f.read_text(), filename=str(f)) for f in FILES}


def _defined_by_us(trees) -> set[str]:
    """Private names our code defines: functions, classes, module globals, attributes it assigns on self."""
    names = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AnnAssign, ast.AugAssign)) else []
            for target in targets:
                for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(t, ast.Name):
                        names.add(t.id)
                    elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        names.add(t.attr)
    return {n for n in names if _private(n)}


def _module(f: Path) -> str:
    return ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _library_overrides(f: Path, cls: ast.ClassDef) -> set[str]:
    """Private methods of ``cls`` that one of its library (non-project) base classes also has."""
    mine = {n.name for n in cls.body if isinstance(n, ast.FunctionDef) and _private(n.name)}
    if not mine or not cls.bases:
        return set()
    obj = getattr(importlib.import_module(_module(f)), cls.name, None)
    if not isinstance(obj, type):
        return set()
    library = [c for c in obj.__mro__[1:] if not c.__module__.split(".")[0] in PACKAGES and c is not object]
    return {name for name in mine if any(name in vars(c) for c in library)}


def _own_self_names(cls: ast.ClassDef) -> set[str]:
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        for t in node.targets if isinstance(node, ast.Assign) else []:
            for e in t.elts if isinstance(t, ast.Tuple) else [t]:
                if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self":
                    names.add(e.attr)
    return names


def library_touches() -> dict[str, set[str]]:
    """name -> {file:line, ...} of every touch of a library internal in the project's source."""
    trees = _parse()
    ours = _defined_by_us(trees)
    found: dict[str, set[str]] = {}

    def add(name, f, node):
        found.setdefault(name, set()).add(f"{f.relative_to(ROOT)}:{node.lineno}")

    for f, tree in trees.items():
        defined_here = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        classes_here = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        library_classes = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                overrides = _library_overrides(f, node)
                for name in overrides:
                    add(name, f, node)
                if overrides or any(isinstance(b, (ast.Name, ast.Attribute)) for b in node.bases):
                    library_classes.append(node)
        for cls in library_classes:  # self._x that neither this class nor our code defines: the library's
            own = _own_self_names(cls)
            for node in ast.walk(cls):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
                        and _private(node.attr) and node.attr not in own and node.attr not in ours):
                    add(node.attr, f, node)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in ours:
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    add(node.attr, f, node)  # obj._x of a library object
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                    and _private(node.args[1].value) and node.args[1].value not in ours):
                add(node.args[1].value, f, node)
            if isinstance(node, ast.Assign):  # a swap: obj.method = our function / MethodType / lambda
                for t in node.targets:
                    if not isinstance(t, ast.Attribute) or _private(t.attr):
                        continue
                    if isinstance(t.value, ast.Name) and t.value.id in ("self", "cls"):
                        continue
                    v = node.value
                    # a lambda, a bound method made for the object, a function or class of this file, or an
                    # instance of one of our private stand-in classes
                    swapped = (isinstance(v, ast.Lambda)
                               or isinstance(v, ast.Call) and ast.unparse(v.func) in ("types.MethodType", "MethodType")
                               or isinstance(v, ast.Name) and v.id in defined_here
                               or isinstance(v, ast.Call) and isinstance(v.func, ast.Name)
                               and v.func.id in classes_here and _private(v.func.id))
                    if swapped:
                        add(t.attr, f, node)
    return found


def test_every_library_touch_has_a_row_and_every_row_a_touch():
    found = library_touches()
    missing = {name: sorted(where) for name, where in found.items() if name not in touch_names()}
    assert missing == {}, "add these to stages/adapters.py TOUCHES (library, symbol, tested range, outside):"
    stale = sorted(touch_names() - set(found))
    assert stale == [], "rows of stages.adapters.TOUCHES that no code touches any more"


def test_rows_name_a_range_and_a_real_module():
    for t in TOUCHES:
        low, high = t.tested
        assert tuple(map(int, low.split("."))) <= tuple(map(int, high.split("."))), t
        for module in t.where.split(", "):
            assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file() or (
                ROOT / Path(*module.split("."))).is_dir(), (t.symbol, module)


def test_the_scan_catches_an_unregistered_private_access(monkeypatch):
    """The check is not vacuous: a new private access in a project file is reported with its file and line."""
    probe = ROOT / "stages" / "_touch_probe_test_only.py"
    probe.write_text("def f(trainer):\n    return trainer._some_new_private_thing\n")
    try:
        monkeypatch.setattr(sys.modules[__name__], "FILES", FILES + [probe])
        found = library_touches()
    finally:
        probe.unlink()
    assert found["_some_new_private_thing"] == {"stages/_touch_probe_test_only.py:2"}


def _module_file(module: str) -> Path:
    path = ROOT / Path(*module.split("."))
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"


def test_every_row_is_checked_where_the_touch_is_made():
    """Each row's symbol is named in one of its modules, which calls ``adapters.check`` (refuse / fall back there)
    or ``adapters.tested`` (an adapter that words its own fallback from the row's range)."""
    unchecked = []
    for t in TOUCHES:
        assert t.outside in ("refuse", "fallback") and (t.outside == "refuse" or t.fallback), t.symbol
        checked = False
        for module in t.where.split(", "):
            tree = ast.parse(_module_file(module).read_text())
            named = any(isinstance(n, ast.Constant) and n.value == t.symbol for n in ast.walk(tree))
            calls = any(isinstance(n, ast.Call) and isinstance(n.func, (ast.Attribute, ast.Name))
                        and (n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id) in ("check", "tested")
                        for n in ast.walk(tree))
            checked = checked or (named and calls)
        if not checked:
            unchecked.append(t.symbol)
    assert unchecked == []


def _outside(monkeypatch, version="99.0"):
    monkeypatch.setattr(adapters, "installed_version", lambda library: version)
    monkeypatch.setattr(adapters, "_warned", set())


def test_a_refuse_row_outside_its_range_is_one_line_naming_range_release_and_fix(monkeypatch):
    assert adapters.check("open_clip_train.main.train_one_epoch")  # the installed open_clip_torch is the tested one
    _outside(monkeypatch, "3.4.0")
    with pytest.raises(LibraryVersionError) as e:
        adapters.check("open_clip_train.main.train_one_epoch")
    assert str(e.value) == ("pathoclip.launch touches open_clip_train.main.train_one_epoch, tested with "
                            "open_clip_torch 3.3-3.3, found open_clip_torch 3.4.0; fix: install open_clip_torch 3.3-3.3, "
                            "or re-check pathoclip.launch against this release and widen the range in "
                            "stages/adapters.py")
    _outside(monkeypatch, None)  # not installed: refused too, never touched blindly
    with pytest.raises(LibraryVersionError, match="found no accelerate"):
        adapters.check("accelerate.Accelerator.backward")


def test_a_fallback_row_outside_its_range_keeps_the_library_and_says_so_once(monkeypatch, caplog):
    _outside(monkeypatch)
    with caplog.at_level("WARNING", logger="stages.adapters"):
        assert adapters.check("transformers.ProcessorMixin._get_num_multimodal_tokens") is False
        assert adapters.check("transformers.ProcessorMixin._get_num_multimodal_tokens") is False
    assert caplog.text.count("left alone, length grouping by text tokens only") == 1


def test_image_dedup_outside_its_range_leaves_the_processor_alone(monkeypatch):
    from stages.rl.image_dedup import dedup_images

    class Processor:
        image_processor = "the processor's own"

    processor = Processor()
    with dedup_images(processor) as stand_in:
        assert stand_in is not None and processor.image_processor is stand_in  # in range: swapped for the step
    assert processor.image_processor == "the processor's own"
    _outside(monkeypatch)
    with dedup_images(processor) as stand_in:
        assert stand_in is None and processor.image_processor == "the processor's own"


def test_skipped_step_outside_its_range_refuses_before_touching_the_accelerator(monkeypatch):
    from stages.rl.skipped_step import backward_unless

    class Accelerator:
        def backward(self, loss):
            return loss

    accelerator = Accelerator()
    _outside(monkeypatch, "1.99")
    with pytest.raises(LibraryVersionError, match=r"accelerate\.Accelerator\.backward, tested with accelerate 1\.15"):
        with backward_unless(accelerator, None, lambda: True):
            pass
    assert "backward" not in vars(accelerator)


def test_pathoclip_configs_outside_its_range_go_through_open_clips_public_call(monkeypatch):
    import open_clip

    from pathoclip.export import CONFIG_DIR, register_model_configs

    added = []
    monkeypatch.setattr(open_clip, "add_model_config", lambda path: added.append(path))
    register_model_configs()
    assert added == [] or added == [CONFIG_DIR]  # in range: added once per process, the private list read
    added.clear()
    _outside(monkeypatch)
    register_model_configs()
    assert added == [CONFIG_DIR]  # outside: the public call, without reading open_clip's private list
