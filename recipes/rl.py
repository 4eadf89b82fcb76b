"""Stage 3 RL (GRPO / DAPO / Dr. GRPO) from a config: `python -m recipes.rl --config stages/configs/rl_dapo.yaml`.

Prints the registry checkpoint folder as its last line. `python -m recipes.rl --help` lists every field.
"""
from __future__ import annotations

import stages  # noqa: F401  (torchvision fix before the heavy imports)
from stages.config import load_config_or_exit
from stages.preflight import preflight_or_exit
from stages.rl import RLConfig, run


def main(argv=None) -> int:
    cfg = load_config_or_exit(RLConfig, argv, prog="python -m recipes.rl")
    preflight_or_exit(cfg, "python -m recipes.rl")  # missing vllm / deepspeed / bitsandbytes: fail in seconds
    print(run(cfg))
    from stages import preemption

    return preemption.exit_code()  # 75 when a signal stopped it early (with a checkpoint), else 0


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
