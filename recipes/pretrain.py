"""Stage 1, continued pretraining on image-caption pairs (the demo corpus by default).

    python -m recipes.pretrain [--config FILE.yaml] [key=value ...]
    python -m recipes.pretrain max_steps=50 train=projector run=proj-only
    python -m recipes.pretrain --help

The last printed line is the final registry checkpoint folder.
"""
from __future__ import annotations

from stages.cli import run_cli
from stages.pretrain import PretrainConfig, run


def main(argv: list[str] | None = None) -> int:
    return run_cli(PretrainConfig, run, "python -m recipes.pretrain", argv)


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
