"""Stage 3 RL (GRPO / DAPO / Dr. GRPO) from a config: `python -m recipes.rl --config stages/configs/rl_dapo.yaml`.

Prints the registry checkpoint folder as its last line. `python -m recipes.rl --help` lists every field.
"""
from __future__ import annotations

import stages  # noqa: F401  (torchvision fix before the heavy imports)
from stages.cli import run_cli
from stages.rl import RLConfig, run


def main(argv=None) -> int:
    return run_cli(RLConfig, run, "python -m recipes.rl", argv)  # config, home, packages, then training


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
