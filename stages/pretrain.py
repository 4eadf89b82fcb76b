"""Stage 1, continued pretraining: next-token loss on the caption of each image-caption pair.

Each pair becomes a one-turn chat (the ``caption`` template's prompt with the image, the caption as the
assistant turn), so only the caption tokens are learned and the rest of the engine is shared with SFT.

    python -m recipes.pretrain data=path/to/pairs.jsonl max_steps=100 run=my-run
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from corpora.prompts import render_prompt, render_response
from corpora.readers import load_pairs
from corpora.training_data import check_data, data_file
from stages.stage_config import StageConfig
from stages.model import check_model_ref
from stages.registry import Registry, home
from stages.runs import plan_run

STAGE = "pretrain"


@dataclass
class PretrainConfig(StageConfig):
    template: str = field(default="caption", metadata={"help": "Prompt template for the caption turn."})
    train: Literal["projector", "projector_llm", "all"] = field(
        default="projector_llm", metadata={"help": "Which towers train (sets model.freeze_*): projector only, projector + LLM "
                                              "(vision frozen), or all."})
    lr: float = field(default=1e-4, metadata={"help": "Peak learning rate."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of images held out for the eval caption loss; records sharing an image or a slide stay on one side."})


def caption_messages(caption: str, template: str) -> list[dict]:
    return [{"role": "user", "content": render_prompt(template, "", ())},
            {"role": "assistant", "content": render_response(template, "", caption)}]


def caption_rows(pairs, template: str):
    """Pairs -> ``{"images", "messages"}`` rows for the shared engine."""
    return pairs.map(lambda r: {"messages": caption_messages(r["caption"], template)},
                     remove_columns=[c for c in pairs.column_names if c != "images"], desc="captions")


def run(cfg: PretrainConfig) -> Path:
    """Train and return the final registry checkpoint folder (parent: the input model)."""
    init = cfg.model.name_or_path if cfg.init == "auto" else cfg.init
    plan = plan_run(STAGE, cfg, init=init)  # a changed config or an unknown input model: refused in a second
    if not plan.finished:
        check_model_ref(plan.init)
    path = data_file(cfg.data, "pairs.jsonl", home())
    from stages import distributed  # accelerate + torch: imported when training starts

    with distributed.main_process_first():  # every rank checks the data, the main process first
        slides = cfg.slides.resolved(Registry().resolve)
        bad = check_data(path, "pairs", cfg.validate, cfg.template, slides)
        rows = caption_rows(load_pairs(path, skip=bad, slides=slides), cfg.template)
    from stages.engine import run_stage  # torch, transformers, TRL: only once training starts

    return run_stage(cfg, stage=STAGE, rows=rows, init=init, data_files=[path], plan=plan)
