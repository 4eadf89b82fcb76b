"""Writing files and folders atomically: a reader (another rank, a rerun, a crash survivor) sees the old
version or the new one, never half of one. ``write_text_atomic`` for single files (registry manifests and
pointers, reports, caches), ``build_folder_once`` for every "build once under $PATHOR1_HOME" folder (the demo
corpus here, the tiny base models in stages.model)."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def build_folder_once(final: Path, build, marker: str) -> Path:
    """Run ``build(staging_dir)`` once and rename the result to ``final``; ``final/marker`` marks it complete.

    Concurrent callers may each build, but the rename is atomic and the loser discards its copy, so nobody
    ever sees a half-written folder.
    """
    final = Path(final)
    if (final / marker).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".staging-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        build(staging)
        try:
            os.rename(staging, final)  # atomic; fails if another process got there first
        except OSError:
            if not (final / marker).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def write_text_atomic(path, text: str, *, durable: bool = False) -> Path:
    """Write ``text`` to a private temporary file beside ``path``, then rename it over ``path`` (atomic on one
    file system; safe with several processes or threads writing the same file). ``durable`` also fsyncs before
    the rename, so the new content survives a power cut (the registry's manifests and pointers)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
