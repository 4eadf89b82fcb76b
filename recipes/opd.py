"""On-policy distillation between SFT and RL: the student answers the RL questions, the teacher's next-token
distribution on those answers is the target (TRL's DistillationTrainer; stages/opd).

    python -m recipes.opd teacher=sft:big init=sft:latest max_steps=100 [key=value ...]
    python -m recipes.opd --config stages/configs/opd_demo.yaml
    python -m recipes.opd --help

The last printed line is the final registry checkpoint folder (opd/<run>/step-N).
"""
from __future__ import annotations

from stages.cli import run_cli
from stages.config import ConfigError
from stages.opd import OPDConfig, missing_teacher, run

PROG = "python -m recipes.opd"


def checked_run(cfg: OPDConfig):
    problem = missing_teacher(cfg)
    if problem:  # one line, before any model loads (stages.cli's boundary prints it, exit 2)
        raise ConfigError(problem)
    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    try:
        return run_cli(OPDConfig, checked_run, PROG, argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
