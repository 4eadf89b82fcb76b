"""A Python that has only what the GPU test machine has, to dry-run ``scripts/gpu_check.py`` here.

The GPU machine has torch, transformers, accelerate, peft, safetensors, tokenizers, pandas, pyarrow, matplotlib,
tensorboard and timm (with what they require), and none of trl, datasets, open_clip_torch, jsonlines,
webdataset, bitsandbytes. ``make_box_python`` builds a venv without system packages whose only site folder holds
links to those distributions of this interpreter (modules and ``.dist-info``), plus pip; everything else pathor1
needs must come from the carried wheels, exactly as on the GPU machine.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

BOX = ["torch", "transformers", "accelerate", "peft", "safetensors", "tokenizers", "pandas", "pyarrow", "matplotlib",
       "tensorboard", "timm", "pip"]
ABSENT = {"trl", "datasets", "open-clip-torch", "jsonlines", "webdataset", "bitsandbytes"}
# Our CPU torch needs its torchvision fix (stages/compat.py); the GPU machine's torchvision loads by itself.
KEEP_PTH = ("zz-pathor1-torchvision-fix.pth",)


def _name(req: str) -> str:
    return re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0].lower().replace("_", "-")


def closure(names) -> set[str]:
    """The distributions ``names`` need (required, not extras), transitively, as installed here."""
    seen, todo = set(), [n.lower() for n in names]
    while todo:
        name = todo.pop()
        if name in seen or name in ABSENT:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(_name(req))
    return seen


def make_box_python(root: Path, carried=()) -> Path:
    """A venv under ``root`` that sees only the GPU machine's packages, plus the distributions ``carried`` (each
    alone, without what it requires: as ``pip install --no-deps`` of the carried wheels); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    site_dir = root / "site"
    site_dir.mkdir()
    purelib = Path(sysconfig.get_paths()["purelib"])
    for name in sorted(closure(BOX) | set(carried)):
        dist = md.distribution(name)
        for f in dist.files or []:
            top = Path(str(f)).parts[0]
            if top.endswith(".pth") or top == ".." or top.startswith("__"):
                continue
            src, dst = purelib / top, site_dir / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
    for pth in KEEP_PTH:
        if (purelib / pth).exists():
            (site_dir / pth).symlink_to(purelib / pth)
    box_site = Path(subprocess.run([str(root / "venv" / "bin" / "python"), "-c",
                                    "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    (box_site / "gpu-box.pth").write_text(f"import site; site.addsitedir({str(site_dir)!r})\n")
    return root / "venv" / "bin" / "python"
