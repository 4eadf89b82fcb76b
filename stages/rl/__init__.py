"""Stage 3: GRPO / DAPO / Dr. GRPO / GSPO / CISPO / SAPO reinforcement learning on TRL's GRPOTrainer.

`run(cfg)` trains and returns the registry checkpoint; `RLConfig` holds the algorithm presets. Pieces TRL
lacks live in their own modules: `sampling` (dynamic sampling, on one rank or many; the TRL batch layout it
relies on is read only in `trl_batch`), `vision_share` (group-shared vision encoding), `rewards` (rewards on
the corpora scorer).
"""
from stages.rl.config import PRESETS, RLConfig


def run(cfg: RLConfig):
    from stages.rl.training import run as _run

    return _run(cfg)


__all__ = ["PRESETS", "RLConfig", "run"]
