import subprocess
import sys


def test_heavy_libraries_import_in_a_fresh_interpreter():
    # The .pth hook alone (no pathor1 import first) must make torchvision-dependent libraries importable.
    code = "import torchvision, trl, open_clip, peft; from transformers import Trainer; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_fix_is_noop_when_extension_loads(monkeypatch, tmp_path):
    from stages import compat

    monkeypatch.setattr(compat, "_state", {"fixed": False, "defined": False})
    monkeypatch.setattr(compat, "_extension_loads", lambda d: True)
    assert compat.fix_torchvision() is False
    assert compat._state["defined"] is False
