"""``StageConfig``: the settings of the supervised stages (continued pretraining and CoT SFT).

Kept apart from ``stages.engine`` (torch, transformers, TRL) so that ``--help`` and a config error cost no
heavy import: the CLI parses and checks this config first, and the engine is imported when training starts.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

from corpora.slides.sampling import SlideSampling
from stages.model import ModelConfig
from stages.runs import StepRunConfig

# train policy -> (freeze_vision, freeze_projector, freeze_llm); each stage's config lists the ones it offers.
TRAIN_POLICIES = {
    "projector": (True, False, True),
    "llm": (True, True, False),
    "projector_llm": (True, False, False),
    "all": (False, False, False),
}
STAGE_POLICIES = ("projector", "projector_llm", "all")  # of TRAIN_POLICIES


@dataclass
class StageConfig(StepRunConfig):
    """Fields common to the supervised stages; each stage subclasses it and changes the defaults.

    The shared names (run, init, data, seed, max_steps, batch_size, lr, ...) come from stages.runs."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Model loading, freezing, LoRA/QLoRA."})
    init: str = field(
        default="auto",
        metadata={"help": "Input model: registry ref (pretrain:latest), folder or tiny preset; "
                          "auto = the stage default. Replaces model.name_or_path."},
    )
    data: str = field(
        default="",
        metadata={"help": "Training file or dataset folder; empty = the demo corpus (corpora.demo.demo_corpus)."},
    )
    template: str = field(default="cot", metadata={"help": "Prompt template from corpora/prompts."})
    slides: SlideSampling = field(default_factory=SlideSampling, metadata={
        "help": "How records naming a whole-slide image (\"slide\": PATH) become images: K tiles, selection, µm/px."})
    device: Literal["auto", "cuda", "cpu"] = field(default="auto", metadata={
        "help": "cuda: refuse to start without a usable GPU; cpu: train on the CPU; auto: CUDA when usable, the CPU "
                "only on a machine without NVIDIA GPUs and nothing asking for one (stages/cuda_check.py)."})
    validate: Literal["strict", "lenient", "skip"] = field(
        default="strict", metadata={"help": "Validate the data before training (corpora.validate policy)."})
    train: Literal["projector", "projector_llm", "all"] = field(
        default="projector_llm", metadata={"help": "Which towers train (sets model.freeze_*): projector only, projector + LLM "
                                              "(vision frozen), or all."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of the planned steps spent warming up."})
    epochs: float = field(default=1.0, metadata={"help": "Epochs (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Planned optimizer steps; > 0 overrides epochs."})
    group_by_length: bool = field(default=True, metadata={"help": "Batch samples of similar length to limit padding."})
    length_bucket: int = field(default=1, metadata={
        "help": "With group_by_length: lengths round up to a multiple of this before grouping, so records a few "
                "tokens apart (often by class: a longer label, one digit more) still share batches; 1 = exact."})
    max_length: int | None = field(default=None, metadata={"help": "Truncate sequences to this many tokens."})
    eval_fraction: float = field(default=0.0, metadata={"help": "Share of images held out for an eval loss (0 = none); records sharing an image or a slide stay on one side."})
    center_image_features: bool = field(
        default=False, metadata={"help": "Batch-centre the image tokens in training and fold the mean into the "
                                         "projector bias (stages/centering.py): for small models trained from scratch. With "
                                         "group_by_length a batch can hold one class and lose its feature."})

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        super().__post_init__()
        if self.length_bucket < 1:
            raise ValueError(f"length_bucket must be >= 1, got {self.length_bucket}")
        if self.center_image_features and self.model.lora.enabled:
            raise ValueError("center_image_features edits the projector in place and does not work with lora.enabled")
        if self.train not in STAGE_POLICIES:
            raise ValueError(f"train must be one of {'|'.join(STAGE_POLICIES)}, got {self.train!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")

    def model_config(self, init: str) -> ModelConfig:
        """``self.model`` with the input model and the freeze flags of the ``train`` policy applied."""
        cfg = copy.deepcopy(self.model)
        cfg.name_or_path = init
        cfg.freeze_vision, cfg.freeze_projector, cfg.freeze_llm = TRAIN_POLICIES[self.train]
        return cfg
