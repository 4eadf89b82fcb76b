"""Stage 2, chain-of-thought SFT (input: the newest pretraining checkpoint, else the tiny base model).

    python -m recipes.sft [--config FILE.yaml] [key=value ...]
    python -m recipes.sft init=pretrain:latest template=cot max_steps=100 run=cot-1
    python -m recipes.sft --help

The last printed line is the final registry checkpoint folder.
"""
from __future__ import annotations

from stages.cli import run_cli
from stages.sft import SFTConfig, run


def main(argv: list[str] | None = None) -> int:
    return run_cli(SFTConfig, run, "python -m recipes.sft", argv)


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
