"""A stand-in stage for the launcher tests: ``python -m tests.recipes.fake_stage --config FILE`` loads the YAML
the driver wrote (into tests.recipes.fake_stage:FakeStageConfig), appends its argv to ``$FAKE_STAGE_LOG`` and
publishes ``fake/<run>/step-<steps>`` like a real stage (manifest with config, data fingerprint, planned steps)."""
import os
import sys
import time
from dataclasses import dataclass

from stages.config import load_config
from stages.registry import Registry


@dataclass
class FakeStageConfig:
    run: str = "default"
    init: str = ""
    data: str = ""
    lr: float = 1e-3
    steps: int = 2
    resume: str = "auto"
    fail: bool = False
    sleep: float = 0.0


def main() -> int:
    cfg = load_config(FakeStageConfig, sys.argv[1:])
    with open(os.environ["FAKE_STAGE_LOG"], "a") as f:
        f.write(" ".join(sys.argv[1:]) + "\n")
    if cfg.fail:
        return 3
    time.sleep(cfg.sleep)
    with Registry().writer("fake", cfg.run, cfg.steps, parent=cfg.init or None, config=cfg, data=[cfg.data]) as w:
        w.extra.update(planned_steps=cfg.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
