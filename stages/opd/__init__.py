"""On-policy distillation (`opd`): the student samples its own answers to the RL questions and learns the teacher's
next-token distribution on them, on TRL 1.16's `DistillationTrainer` (generalized JSD: `beta` 0 = forward KL,
1 = reverse KL, 0.5 = JSD; Agarwal et al. 2024). pathor1 adds only what every stage has: the QA data rendered
through the prompt template, the model factory (freezing, LoRA, dtype), registry checkpoints
(`opd/<run>/step-N`, parent = the student, the teacher in the manifest's `extra.teacher`) and exact resume.

    python -m recipes.opd teacher=sft:big init=sft:latest max_steps=100 run=opd-1

Lingshu found that distillation, not RL after SFT, moved the numbers; pathor1 otherwise distils only offline
(`recipes.distill`). In the Patho-R1 recipe, `stages: [pretrain, sft, opd, rl]` puts it between SFT and RL.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from corpora.slides.sampling import SlideSampling
from stages.model import ModelConfig
from stages.runs import StepRunConfig

STAGE = "opd"


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class OPDConfig(StepRunConfig):
    """On-policy distillation; the shared names (run, seed, max_steps, batch_size, lr, ...) are stages.runs'."""

    init: str = _f("sft:latest", "Student to start from: registry ref (sft:latest), folder, hub id or tiny preset.")
    teacher: str = _f("", "Teacher (required): registry ref, folder or hub id; must share the student's vocabulary "
                          "(same family, e.g. a larger Qwen2.5-VL).")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Student loading, freezing, LoRA."})
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto", "Teacher weights' dtype (auto = bf16 on CUDA, fp32 on CPU).")
    data: str = _f("", "QA file (kind qa) or folder holding rl.jsonl: the questions the student answers; empty = demo.")
    validate: Literal["strict", "lenient", "skip"] = _f("strict", "Validate the data first (corpora.validate policy).")
    template: str = _f("cot", "Prompt template (corpora/prompts) the student is asked with.")
    slides: SlideSampling = field(default_factory=SlideSampling, metadata={
        "help": "How records naming a whole-slide image (\"slide\": PATH) become images: K tiles, selection, µm/px."})
    train: Literal["projector_llm", "llm", "all"] = _f("projector_llm", "Which towers of the student train.")
    max_steps: int = _f(100, "Optimizer steps.")
    batch_size: int = _f(4, "Prompts (one completion each) per device and micro-step.")
    lr: float = _f(1e-6, "Peak learning rate (TRL's default for distillation).")
    scheduler: str = _f("constant", "transformers lr_scheduler_type.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    beta: float = _f(1.0, "Generalized JSD interpolation: 0 forward KL, 1 reverse KL (the on-policy default), 0.5 JSD.")
    max_completion_length: int = _f(256, "Tokens the student samples per answer.")
    temperature: float = _f(1.0, "Sampling temperature of the student's answers (and of the divergence).")
    top_p: float = _f(1.0, "Nucleus sampling of the student's answers.")

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        super().__post_init__()
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.max_steps < 1 or self.max_completion_length < 1 or self.temperature <= 0:
            raise ValueError(f"need max_steps >= 1, max_completion_length >= 1 and temperature > 0, got "
                             f"{self.max_steps}, {self.max_completion_length}, {self.temperature}")


def missing_teacher(cfg: OPDConfig) -> str | None:
    """The error when no teacher is set (the field has no sensible default; checked before any model loads)."""
    return None if cfg.teacher else ("teacher: expected a registry ref, folder or hub id of the student's family, "
                                     "found nothing; fix: teacher=REF")


def run(cfg: OPDConfig):
    from stages.model import check_model_ref
    from stages.runs import plan_run

    plan = plan_run(STAGE, cfg, init=cfg.init)  # student and teacher checked in a second, before TRL is imported
    if not plan.finished:
        check_model_ref(plan.init)
        if cfg.teacher:  # an empty one: missing_teacher's message (stages.opd.training)
            check_model_ref(cfg.teacher, "teacher")
    from stages.opd.training import run as _run

    return _run(cfg)


__all__ = ["OPDConfig", "STAGE", "missing_teacher", "run"]
