"""Stage 2, chain-of-thought SFT: chat samples, loss on every assistant turn only.

Samples come from ``corpora.readers.load_sft``: chat files as they are, QA samples with reasoning (the demo's
``sft.jsonl``) rendered through the prompt template (default ``cot``: ``<think>…</think><answer>…</answer>``),
tool-calling traces (corpora.traces, e.g. the slide-navigation demo's ``traces.jsonl``) with their tools; the
loss is on the assistant's tokens only (tool calls train, tool results and views do not).
The input model defaults to the newest pretraining checkpoint, else the tiny base model.

    python -m recipes.sft init=pretrain:latest template=cot max_steps=200 run=my-run
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from corpora.readers import load_sft
from corpora.training_data import check_data, data_file
from stages.stage_config import StageConfig
from stages.model import check_model_ref
from stages.registry import Registry, home
from stages.runs import plan_run

STAGE = "sft"


@dataclass
class SFTConfig(StageConfig):
    pass  # the shared defaults are the SFT defaults (template cot, projector + LLM trainable)


def default_init(cfg: SFTConfig) -> str:
    if cfg.init != "auto":
        return cfg.init
    return "pretrain:latest" if Registry().latest("pretrain") is not None else cfg.model.name_or_path


def training_rows(cfg: SFTConfig):
    """(validated ``images`` + ``messages`` (+ ``trace``: a tool-calling conversation) rows, the data file)."""
    path = data_file(cfg.data, "sft.jsonl", home())
    slides = cfg.slides.resolved(Registry().resolve)
    bad = check_data(path, "sft", cfg.validate, cfg.template, slides)
    rows = load_sft(path, template=cfg.template, skip=bad, slides=slides)
    return rows.remove_columns([c for c in rows.column_names if c not in ("images", "messages", "trace")]), path


def run(cfg: SFTConfig) -> Path:
    """Train and return the final registry checkpoint folder (parent: the input model)."""
    init = default_init(cfg)
    plan = plan_run(STAGE, cfg, init=init)  # a changed config or an unknown input model: refused in a second
    if not plan.finished:
        check_model_ref(plan.init)
    from stages import distributed  # accelerate + torch: imported when training starts

    with distributed.main_process_first():  # every rank checks the data, the main process first
        rows, path = training_rows(cfg)
    from stages.engine import run_stage  # torch, transformers, TRL: only once training starts

    return run_stage(cfg, stage=STAGE, rows=rows, init=init, data_files=[path], plan=plan)
