"""Building a cached folder atomically: the one way every "build once under $PATHOR1_HOME" helper writes
(the demo corpus here, the tiny base models in stages.model)."""
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
