"""On-policy distillation between SFT and RL: the student answers the RL questions, the teacher's next-token
distribution on those answers is the target (TRL's DistillationTrainer; stages/opd).

    python -m recipes.opd teacher=sft:big init=sft:latest max_steps=100 [key=value ...]
    python -m recipes.opd --config stages/configs/opd_demo.yaml
    python -m recipes.opd --help

The last printed line is the final registry checkpoint folder (opd/<run>/step-N). A missing teacher, an unknown
registry reference or bad data is one line and exit 2, before any model loads.
"""
from __future__ import annotations

import sys

import stages  # noqa: F401  (torchvision fix before the heavy imports)
from stages.config import load_config_or_exit
from stages.opd import OPDConfig, missing_teacher, run
from stages.preflight import preflight_or_exit

PROG = "python -m recipes.opd"


def main(argv: list[str] | None = None) -> int:
    from stages.compat import offline_hub

    offline_hub()
    cfg = load_config_or_exit(OPDConfig, argv, prog=PROG)
    preflight_or_exit(cfg, PROG)  # missing vllm / deepspeed / bitsandbytes: fail in seconds
    problem = missing_teacher(cfg)
    if problem is None:
        from corpora.records import DataError
        from stages.registry import RegistryError
        from stages.runs import RunError

        try:
            print(run(cfg))
        except (RegistryError, DataError, RunError, FileNotFoundError) as e:  # the user's refs, data, run name
            lines = str(e).splitlines() or [type(e).__name__]
            # a refused data file: its first file:line problem (corpora.validate lists them all)
            problem = lines[1] if isinstance(e, DataError) and len(lines) > 1 else lines[0]
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    from stages import preemption

    return preemption.exit_code()  # 75 when a signal stopped it early (with a checkpoint), else 0


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
