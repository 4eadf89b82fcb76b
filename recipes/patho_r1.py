"""The Patho-R1 recipe: continued pretraining -> CoT SFT -> DAPO, plus PathoCLIP, evaluation and a report.

    python -m recipes.patho_r1                       # the embedded demo: tiny model, demo corpus, CPU, minutes
    python -m recipes.patho_r1 --config recipes/configs/patho_r1_qwen2_5_vl_7b.yaml   # the real recipe (GPUs)
    python -m recipes.patho_r1 sft.max_steps=50 rl.steps=10 stages=[pretrain,sft]    # any field, dotted

Each stage runs as its own process under the launcher this driver was started with (recipes/launch.py):

    accelerate launch --config_file recipes/configs/accelerate/zero2.yaml -m recipes.patho_r1 --config ...
    python -m recipes.patho_r1 launch.accelerate_config=recipes/configs/accelerate/zero2.yaml --config ...

Each stage's registry entry (``stage/run/step-N``) is the next stage's ``init``, so the lineage reads
rl <- sft <- pretrain <- base. A rerun skips the stages already published with the same config and data and
resumes a stage that was killed mid-way from its newest checkpoint. The base model and every stage are evaluated on the same held-out split with the
same prompt template; the last line printed is the path of the run's metrics.json.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from pathoclip.train import CLIPTrainConfig
from stages.cli import run_cli
from stages.compat import PREEMPTED_EXIT
from stages.model import resolve_model_path
from stages.opd import OPDConfig
from stages.pretrain import PretrainConfig
from stages.registry import home, reports_dir
from stages.rl.config import RLConfig
from stages.sft import SFTConfig

from evaluation.config import EvalConfig
from recipes.launch import (LaunchConfig, LaunchError, Preempted, entry_id, forget_driver_ranks, is_driver,
                            plan_launch, run_module, run_stage)
from recipes.pipeline import (DemoCorpusConfig, Timer, corpus_dir, evaluate_checkpoints,
                              peak_memory_gib, stage_config, validate_corpus, write_metrics, recipe_eval)

STAGES = ("pretrain", "sft", "opd", "rl", "pathoclip")
DEFAULT_STAGES = ("pretrain", "sft", "rl", "pathoclip")  # opd needs a teacher: stages=[pretrain,sft,opd,rl,...]


def _demo_pretrain() -> PretrainConfig:
    # The tiny model starts from random weights: a high learning rate and a few epochs of captions. Centred image
    # tokens (stages/centering.py) let it read all four classes: without them it never told stroma from normal.
    return PretrainConfig(lr=1e-3, warmup_ratio=0.05, epochs=3, batch_size=8, eval_fraction=0.1, train="all",
                          center_image_features=True)


def _demo_sft() -> SFTConfig:
    # 2 MCQ per training image; 6 epochs = 600 steps (each ~0.15 s on one CPU thread with 112 px images).
    # Dev split (seed 1, never the eval split): 0.61 without centring (stroma always "normal"), 0.77 with it.
    return SFTConfig(lr=1e-3, warmup_ratio=0.05, epochs=6, batch_size=8, train="all", center_image_features=True)


def _demo_rl() -> RLConfig:
    # Tuned on the seed-1 dev split only (docs/DEMO_LEARNING.md). What made RL beat SFT:
    # - the consistency reward: with accuracy alone the answer drifted away from the reasoning (agreement
    #   100 % -> 86 %) and dev accuracy fell 3-4 points; with it, the answer stays the reasoning's conclusion and
    #   RL improves the reading of the image itself (dev 0.769 -> 0.825 at 100 steps, 0.85 at 150);
    # - temperature 0.5: evaluation is greedy, and at T = 1 the tiny model's samples are right 45 % of the time
    #   against 77 % greedy, so RL mostly learnt to sharpen; at 0.5 the mixed groups are the borderline images;
    # - lr 1e-4 (2e-5 barely moves the policy); 2 generation batches per step cap dynamic sampling's cost.
    # SFT completions are ~40 tokens, so 64 never clips them.
    # 80 steps, not 120 (issue 27 item 6): on a slow 2-core AMD EPYC the 120-step demo took 561 s against a 480 s
    # budget. RL's constant lr makes step k of a longer run the end of a k-step run, so the 120-step runs'
    # checkpoints measured the cut on corpus seeds 0-2: RL - SFT at 80 steps +0.142 / +0.230 / +0.157, every
    # paired CI above +0.08 (docs/DEMO_LEARNING.md, "Within 480 s on a slow CPU").
    return RLConfig(algorithm="dapo", num_generations=8, batch_size=8, max_completion_length=64, max_steps=80, lr=1e-4,
                    temperature=0.5, max_num_gen_batches=2, train="all",
                    rewards=["format", "accuracy", "soft_overlong", "consistency"])


def _demo_clip() -> CLIPTrainConfig:
    return CLIPTrainConfig(epochs_a=1, epochs_b=3)


@dataclass
class PathoR1Config:
    """Patho-R1: three stages through the registry, PathoCLIP on the same corpus, evaluation and a report."""

    run: str = field(default="patho_r1", metadata={"help": "Run name used by every stage (registry <stage>/<run>)."})
    base: str = field(default="tiny:qwen2_5_vl", metadata={"help": "Base VLM: tiny preset, folder or hub id."})
    data: str = field(default="", metadata={"help": "Corpus folder in the demo layout (pairs.jsonl, sft.jsonl, rl.jsonl, "
                                                    "eval/...); empty = build the demo corpus."})
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES), metadata={
        "help": f"Stages to run (always in the order {list(STAGES)}); opd (on-policy distillation) needs opd.teacher."})
    device: str = field(default="auto", metadata={
        "help": "auto|cuda|cpu for every stage (stages/cuda_check.py): cuda refuses to start without a usable GPU, "
                "cpu trains on the CPU, auto takes CUDA when usable."})
    evaluate: bool = field(default=True, metadata={"help": "Evaluate base and every stage on the held-out split."})
    report: bool = field(default=True, metadata={"help": "Render the markdown + PNG report and the run browser "
                                                       "(reports/patho_r1/<run>/browse/index.html) at the end."})
    demo: DemoCorpusConfig = field(default_factory=DemoCorpusConfig, metadata={"help": "Demo corpus sizes."})
    pretrain: PretrainConfig = field(default_factory=_demo_pretrain, metadata={"help": "Stage 1 settings."})
    sft: SFTConfig = field(default_factory=_demo_sft, metadata={"help": "Stage 2 settings."})
    opd: OPDConfig = field(default_factory=OPDConfig, metadata={
        "help": "On-policy distillation between SFT and RL (stages/opd), when stages include opd."})
    rl: RLConfig = field(default_factory=_demo_rl, metadata={"help": "Stage 3 settings (DAPO preset)."})
    clip: CLIPTrainConfig = field(default_factory=_demo_clip, metadata={"help": "PathoCLIP settings."})
    eval: EvalConfig = field(default_factory=recipe_eval, metadata={"help": "Evaluation settings."})
    launch: LaunchConfig = field(default_factory=LaunchConfig, metadata={"help": "How each stage process starts."})

    def __post_init__(self):
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be one of auto|cuda|cpu, got {self.device!r}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; choose from {list(STAGES)}")
        if "opd" in self.stages and not self.opd.teacher:
            raise ValueError("stages include opd but opd.teacher is empty: set opd.teacher=REF (a registry ref, "
                             "folder or hub id of the student's family)")


def run(cfg: PathoR1Config) -> Path | None:
    """Drive the stages (one process each) and evaluate; None on the ranks of a launched driver other than 0."""
    if not is_driver():
        print("recipes.patho_r1: local rank 0 of each node drives the stages; this rank has nothing to do", flush=True)
        return None
    timer = Timer()
    out_dir = reports_dir("patho_r1", cfg.run)
    plan = plan_launch(cfg.launch)
    forget_driver_ranks()  # the evaluation below is this process alone
    t = timer.t0
    corpus = corpus_dir(cfg.data, cfg.demo)
    validate_corpus(corpus, {"pairs.jsonl": cfg.pretrain.slides, "sft.jsonl": cfg.sft.slides,  # each file as
                             "rl.jsonl": cfg.rl.slides, "eval/mcq.jsonl": cfg.rl.slides})  # its stage reads it
    base = resolve_model_path(cfg.base)
    t = timer.mark("corpus_and_base", t)

    # every node writes the stage configs it launches; its own folder, so nodes never write the same file
    launch_dir = out_dir / "launch" / (f"node{plan.node_rank}" if plan.nodes > 1 else "")
    checkpoints = {"base": str(base)}
    parent = str(base)
    for stage, stage_cfg, data in (("pretrain", cfg.pretrain, corpus / "pairs.jsonl"),
                                   ("sft", cfg.sft, corpus / "sft.jsonl"),
                                   ("opd", cfg.opd, corpus / "rl.jsonl"),
                                   ("rl", cfg.rl, corpus / "rl.jsonl")):
        if stage not in cfg.stages:
            continue
        stage_cfg = stage_config(stage_cfg, run=cfg.run, data=data, init=parent, device=cfg.device)
        folder = run_stage(plan, stage=stage, module=f"recipes.{stage}", cfg=stage_cfg, data=Path(stage_cfg.data),
                           config_dir=launch_dir)
        parent = entry_id(folder)  # the next stage gets a registry reference, not a path
        checkpoints[stage] = str(folder)
        t = timer.mark(stage, t)

    metrics: dict = {"run": cfg.run, "corpus": str(corpus), "checkpoints": checkpoints,
                     "launcher": {"kind": plan.kind, "processes": plan.processes}}
    if "pathoclip" in cfg.stages:
        clip_cfg = cfg.clip
        clip_cfg.run = cfg.run
        if cfg.device != "auto":
            clip_cfg.device = cfg.device
        if clip_cfg.data in ("", "demo"):
            clip_cfg.data = str(corpus / "pairs.csv")
            clip_cfg.zeroshot_dir = clip_cfg.zeroshot_dir or str(corpus / "eval" / "zeroshot")
            clip_cfg.zeroshot_prompts = clip_cfg.zeroshot_prompts or str(corpus / "eval" / "zeroshot_prompts.json")
        # PathoCLIP skips its finished phases itself (resume=auto), so it is simply launched again.
        run_module(plan, "pathoclip.train", clip_cfg, launch_dir / f"pathoclip-{cfg.run}.yaml", what="pathoclip")
    if not plan.drives:  # several nodes: node 0 evaluates and reports, the others only took part in the stages
        print(f"recipes.patho_r1: node {plan.node_rank} done; node 0 evaluates and reports", flush=True)
        return None
    if "pathoclip" in cfg.stages:
        from stages.registry import Registry

        folder = Registry().latest("pathoclip", cfg.run)
        m = Registry().manifest(str(folder))["metrics"]
        metrics["pathoclip"] = {"checkpoint": str(folder), "zero_shot_accuracy": m.get("zeroshot_accuracy"),
                                "chance": m.get("zeroshot_chance"), "loss_first": m.get("loss_first"),
                                "loss_final": m.get("loss_final")}
        t = timer.mark("pathoclip", t)

    if cfg.evaluate:
        print("== evaluation", flush=True)
        metrics.update(evaluate_checkpoints(checkpoints, cfg.eval, corpus, out_dir))
        t = timer.mark("evaluation", t)

    metrics["stage_seconds"] = timer.marks
    metrics["wall_seconds"] = timer.total
    metrics["peak_memory_gib"] = round(peak_memory_gib(), 2)
    path = write_metrics(out_dir, metrics, cfg)
    if cfg.report:
        from evaluation.report import render_report

        last = list(checkpoints.values())[-1]  # its lineage is the whole pipeline
        print(f"report: {render_report(last, home=home(), out=out_dir)}")
        from evaluation.browse import browse

        print(f"browser: {browse(last, home=home(), out=out_dir / 'browse')}")  # every question, every stage's answer
    return path


def main(argv: list[str] | None = None) -> int:
    # config, packages, home, then the stages; a known error is one line and exit 2 (stages.cli)
    try:
        return run_cli(PathoR1Config, run, "python -m recipes.patho_r1", argv, extra=(LaunchError,))
    except Preempted as e:  # a stage saved its checkpoint and stopped for SIGTERM / SIGUSR1: exit "try again"
        print(f"python -m recipes.patho_r1: {e}", file=sys.stderr, flush=True)
        return PREEMPTED_EXIT


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
