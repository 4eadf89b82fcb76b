"""The Med-R1 recipe: one GRPO run per modality (or task), then every run evaluated on every modality.

    python -m recipes.med_r1                                  # demo corpus: one run per imaging style
    python -m recipes.med_r1 --config recipes/configs/med_r1_qwen2_vl_2b.yaml

Writes Med-R1's cross-modality generalisation table automatically (matrix.json / matrix.md / matrix.png via
evaluation.matrix). On the demo the subsets are the imaging styles (he, ihc, cytology). ``init=auto`` starts
from the newest SFT checkpoint when one exists (a random tiny base earns no reward to learn from), else from
the base model.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from stages.cli import run_cli
from stages.model import resolve_model_path
from stages.registry import Registry, reports_dir
from stages.rl.config import RLConfig

from evaluation.config import EvalConfig
from recipes.launch import LaunchConfig, LaunchError, entry_id, is_driver, plan_launch, run_stage
from recipes.pipeline import (DemoCorpusConfig, Timer, corpus_dir, peak_memory_gib, subset_file,
                              validate_corpus, write_metrics, recipe_eval)


def _med_rl() -> RLConfig:
    return RLConfig(algorithm="grpo", num_generations=4, batch_size=4, max_completion_length=64, max_steps=5, lr=1e-5)


@dataclass
class MedR1Config:
    """Med-R1: GRPO per subset + the cross-subset generalisation matrix."""

    run: str = field(default="med_r1", metadata={"help": "Prefix of the per-subset run names (rl/<run>-<subset>)."})
    init: str = field(default="auto", metadata={"help": "Policy to start from; auto = sft:latest if present, "
                                                        "else base."})
    base: str = field(default="tiny:qwen2_vl", metadata={"help": "Base model used when init=auto finds no SFT entry."})
    data: str = field(default="", metadata={"help": "Corpus folder in the demo layout; empty = the demo corpus."})
    subsets: list[str] = field(default_factory=list, metadata={"help": "Subsets to train on; empty = all in rl.jsonl."})
    demo: DemoCorpusConfig = field(default_factory=DemoCorpusConfig, metadata={"help": "Demo corpus sizes."})
    rl: RLConfig = field(default_factory=_med_rl, metadata={"help": "GRPO settings for every subset run."})
    eval: EvalConfig = field(default_factory=recipe_eval, metadata={"help": "Evaluation settings (suite, data)."})
    launch: LaunchConfig = field(default_factory=LaunchConfig, metadata={"help": "How each RL process starts."})


def _subsets(path: Path) -> list[str]:
    import json

    with open(path, encoding="utf-8") as f:
        return sorted({json.loads(line).get("subset", "") for line in f if line.strip()} - {""})


def run(cfg: MedR1Config) -> Path | None:
    """One GRPO process per subset (recipes/launch.py), then the matrix; None on ranks other than 0."""
    from evaluation.matrix import generalisation_matrix

    if not is_driver():
        return None
    timer = Timer()
    plan = plan_launch(cfg.launch)
    out_dir = reports_dir("med_r1", cfg.run)
    corpus = corpus_dir(cfg.data, cfg.demo)
    validate_corpus(corpus)
    init = cfg.init
    if init == "auto":
        newest_sft = Registry().latest("sft")  # pinned to one entry, so a rerun compares like with like
        init = entry_id(newest_sft) if newest_sft is not None else resolve_model_path(cfg.base)
    subsets = cfg.subsets or _subsets(corpus / "rl.jsonl")
    models = {}
    for subset in subsets:
        print(f"== GRPO on subset {subset} (init {init})", flush=True)
        rl = copy.deepcopy(cfg.rl)
        rl.run, rl.init = f"{cfg.run}-{subset}", str(init)
        rl.data = str(subset_file(corpus / "rl.jsonl", f"rl.{subset}.jsonl", keep=lambda r, s=subset: r.get("subset") == s))
        models[subset] = str(run_stage(plan, stage="rl", module="recipes.rl", cfg=rl, data=Path(rl.data),
                                       config_dir=out_dir / "launch"))
    data = cfg.eval.data or str(corpus / "eval" / "mcq.jsonl")
    matrix = generalisation_matrix(models, cfg.eval.suite, data, subsets=subsets, out=out_dir,
                                   **cfg.eval.evaluate_kwargs())
    print(f"generalisation matrix: {matrix['out_dir']}/matrix.md")
    metrics = {"run": cfg.run, "init": str(init), "models": models, "matrix": matrix,
               "wall_seconds": timer.total, "peak_memory_gib": round(peak_memory_gib(), 2)}
    return write_metrics(out_dir, metrics, cfg)


def main(argv: list[str] | None = None) -> int:
    # config, home, packages, then the stages; a known error is one line and exit 2 (stages.cli)
    return run_cli(MedR1Config, run, "python -m recipes.med_r1", argv, extra=(LaunchError,))


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
