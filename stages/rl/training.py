"""`run(cfg) -> Path`: the RL stage end to end -- data, policy, TRL config, trainer, registry checkpoint."""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

from stages.model import vision_token_ids, vision_tokens
from stages.rl.config import RLConfig
# shared with on-policy distillation (stages.opd); imported from here by older callers
from stages.rollouts import pad_prompts_left, prompt_dataset

logger = logging.getLogger(__name__)
STAGE = "rl"


def fitted_size(width: int, height: int, max_pixels: int, factor: int) -> tuple[int, int]:
    """(width, height) rounded to multiples of ``factor`` with an area of at most ``max_pixels``, aspect kept.

    Qwen-VL processors round every image to such a size (``smart_resize``), so an image already there is a fixed
    point: any processor with the same factor and a larger pixel budget leaves it as it is."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    w = max(factor, int(width * scale / factor) * factor)
    h = max(factor, int(height * scale / factor) * factor)
    return w, h


def cap_image_pixels(dataset, processor, max_pixels: int):
    """The dataset with every prompt image resized (lazily, on access) to at most ``max_pixels``.

    Why not only the processor's max_pixels: TRL's vLLM engine loads its own processor from the checkpoint folder
    (default budget 12.8 MP for a hub model) and re-processes the raw images, while the prompt ids come from the
    trainer's processor; with different budgets the image-token counts disagree. Images pre-sized to a fixed point
    of both make them agree, and cap the vision tokens of both."""
    image_processor = getattr(processor, "image_processor", processor)
    factor = int(getattr(image_processor, "patch_size", 14)) * int(getattr(image_processor, "merge_size", 2))

    def fit(image):
        size = fitted_size(*image.size, max_pixels, factor)
        return image if image.size == size else image.resize(size)

    def resize(batch):
        batch["images"] = [[fit(im) for im in images or []] for images in batch["images"]]
        return batch

    return dataset.with_transform(resize)


def vision_token_ban(token_ids: list[int], tokens: list[str], *, use_vllm: bool) -> dict:
    """Generation kwargs that keep the rollouts from sampling a vision token, for the engine that samples them.

    TRL suppresses only ``<|image_pad|>`` and only on its transformers path. transformers: ``suppress_tokens``.
    vLLM (its ``SamplingParams``, built from GRPOConfig.generation_kwargs in colocate mode and sent with each
    request in server mode): ``bad_words`` masks each token string to -inf -- Qwen's vision tokens are single
    special tokens -- and ``logit_bias`` -100 on the ids also holds if a tokenizer ever split one of them."""
    if not token_ids:
        return {}
    if not use_vllm:
        return {"suppress_tokens": list(token_ids)}
    return {"bad_words": list(tokens), "logit_bias": {int(i): -100.0 for i in token_ids}}


def _merge_generation_kwargs(user: dict | None, ban: dict) -> dict | None:
    """The user's trl.generation_kwargs plus the ban; a key both set is combined, never dropped."""
    out = dict(user or {})
    for key, value in ban.items():
        if key in out and isinstance(value, dict):
            out[key] = {**out[key], **value}
        elif key in out:
            out[key] = list(dict.fromkeys([*out[key], *value]))
        else:
            out[key] = value
    return out or None


def model_bf16(cfg: RLConfig) -> bool:
    """Whether the run trains in bf16 (GRPOConfig's ``bf16``), known before the model and its arguments exist."""
    import torch

    from stages.rl.config import grpo_settings

    return grpo_settings(cfg, cuda=torch.cuda.is_available())["bf16"][1]


def grpo_args(cfg: RLConfig, output_dir: Path, *, suppress_token_ids: list[int] = (),
              suppress_tokens: list[str] = ()):
    """TRL's GRPOConfig from a resolved RLConfig (every preset value filled in), then `cfg.trl` on top.

    Micro-batches: each device runs ``micro_batch`` completions per forward/backward and accumulates
    ``batch x G / micro_batch`` of them (times grad_accum) per optimizer step; TRL's steps_per_generation
    defaults to the accumulation, so one generation round still feeds exactly one optimizer step.
    ``suppress_token_ids`` / ``suppress_tokens`` (ids and strings of the same tokens) are never sampled."""
    import torch
    from trl import GRPOConfig

    from stages.distributed import engine_arguments
    from stages.rl.config import grpo_settings

    settings = grpo_settings(cfg, output_dir, cuda=torch.cuda.is_available(), engine=engine_arguments())
    kwargs = {key: value for key, (_, value) in settings.items()}
    kwargs.update(copy.deepcopy(cfg.trl))  # RLConfig refuses the keys of grpo_settings (trl_owned)
    ban = vision_token_ban(list(suppress_token_ids), list(suppress_tokens), use_vllm=cfg.use_vllm)
    kwargs["generation_kwargs"] = _merge_generation_kwargs(kwargs.get("generation_kwargs"), ban)
    return GRPOConfig(**kwargs)


def tool_questions(cfg: RLConfig, path):
    """The slide QA records of ``path`` for ``tools.env=slide_view`` (corpora.slides.viewer.slide_questions)."""
    from datasets import Dataset

    from corpora.slides.viewer import slide_questions

    return Dataset.from_list(slide_questions(path, overview_size=cfg.tools.overview_size,
                                             mpp_fallback=cfg.slides.mpp_fallback))


def tool_environment(cfg: RLConfig, logs_dir):
    """TRL's ``environment_factory`` for ``cfg.tools`` (None without tools), logging views per rank."""
    if not cfg.tools.enabled:
        return None
    import os

    from stages.rl import tools

    rank = int(os.environ.get("RANK", "0"))
    log = tools.view_log_path(logs_dir, rank) if cfg.tools.log_views else None
    return tools.environment_factory(cfg.tools, log_path=log)


def run(cfg: RLConfig) -> Path:
    """Train with RL from `cfg.init`; returns the final registry checkpoint folder (rl/<run>/step-N)."""
    from stages.model import check_model_ref
    from stages.registry import Registry, home, logs_dir, parse_ref
    from stages.runs import plan_run

    cfg = cfg.resolved()
    registry = Registry()
    run_plan = plan_run(STAGE, cfg, init=cfg.init, registry=registry)  # refuses a changed config, model unloaded
    if run_plan.finished:
        logger.warning(run_plan.describe())
        return run_plan.resume_from
    resume_from, init = run_plan.resume_from, run_plan.init  # a resumed run keeps its recorded input model
    check_model_ref(init)  # an input model that names nothing: one line, before the heavy imports below

    # the rewards and the data are checked before TRL and the Trainer import (~8 s CPU): their errors come first
    from corpora.readers import load_qa
    from stages import distributed
    from corpora.training_data import check_data, data_file
    from stages.config import ConfigError
    from datasets import concatenate_datasets

    from stages.rl import curriculum, tools
    from stages.rl.algos import SubsetScaling
    from stages.rl.rewards import build_rewards

    if parse_ref(init) is not None:
        init = str(registry.resolve(init))  # sft:latest -> the newest finished SFT entry; RegistryError if none

    try:  # before the data and the policy load: an unknown reward or a bad reward setting is a config error
        rewards = build_rewards(cfg.resolved_rewards(), template=cfg.template,
                                max_completion_length=cfg.max_completion_length, overlong_cache=cfg.overlong_cache,
                                length_bounds=(cfg.length_min, cfg.length_max), judge=cfg.judge,
                                grounding=cfg.grounding)
    except ValueError as e:
        raise ConfigError(f"RLConfig.rewards={cfg.resolved_rewards()}: {e}") from None

    # a curriculum's phases are laid one after another in one dataset (stages.rl.curriculum)
    paths = [data_file(d, "rl.jsonl", home()) for d in [p.data for p in cfg.curriculum] or [cfg.data]]
    with distributed.main_process_first():  # every rank checks the data, the main process first
        if cfg.tools.enabled:  # slide questions: the overview is the prompt image, the slide the environment's
            qa_sets = [tool_questions(cfg, paths[0])]
        else:
            slides = cfg.slides.resolved(registry.resolve)
            bad = [check_data(p, "qa", cfg.validate, cfg.template, slides) for p in paths]  # file:line, before any model
            qa_sets = [load_qa(p, skip=b, slides=slides) for p, b in zip(paths, bad)]
        plan = curriculum.plan(cfg, paths, qa_sets)
        subsets = sorted({s for qa in qa_sets for s in qa["subset"]})
        scaling = None if cfg.subset_scaling == "none" and not cfg.subset_weights else \
            SubsetScaling(subsets, cfg.subset_weights, balance=cfg.subset_scaling == "balance")
        dataset = prompt_dataset(qa_sets[0] if len(qa_sets) == 1 else concatenate_datasets(qa_sets), cfg.template)

    from stages.checkpointing import TRAIN_POLICIES, Publication, StopAfter, resume_argument
    from stages.model import load_model, resolve_model_path
    from stages.preemption import Preemption
    from stages.rl.trainer import PathoGRPOTrainer

    model_cfg = copy.deepcopy(cfg.model)
    # Resuming full weights: load them from the checkpoint here (the Trainer's own loader would skip them all:
    # transformers 5 saves them under the original key names). LoRA: the same base, the adapter comes later.
    full_resume = resume_from is not None and not cfg.model.lora.enabled
    model_cfg.name_or_path = str(resume_from) if full_resume else init
    model_cfg.freeze_vision, model_cfg.freeze_projector, model_cfg.freeze_llm = TRAIN_POLICIES[cfg.train]
    if cfg.tools.enabled:  # the chat template must render tool calls: checked on the processor, before the model
        from transformers import AutoProcessor

        tools.check_tool_template(AutoProcessor.from_pretrained(resolve_model_path(init)), f"init={cfg.init}")
    model_cfg.name_or_path = resolve_model_path(model_cfg.name_or_path)  # a tiny preset is built outside ZeRO-3 init
    with distributed.model_loading(bf16=model_bf16(cfg)):  # ZeRO-3 init: partitioned from the start
        model, processor = load_model(model_cfg)
    pad_prompts_left(processor)
    if cfg.model.max_pixels:  # vLLM's processor and ours then agree on every image's token count
        dataset = cap_image_pixels(dataset, processor, cfg.model.max_pixels)
    base = resolve_model_path(init)
    if full_resume:  # TRL builds the KL reference model from this name: it stays the input model
        from stages import adapters

        adapters.check("transformers.PretrainedConfig._name_or_path")
        model.config._name_or_path = base

    output_dir = logs_dir(STAGE, cfg.run)
    trainer = PathoGRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=grpo_args(cfg, output_dir, suppress_token_ids=vision_token_ids(processor),
                       suppress_tokens=vision_tokens(processor)),
        train_dataset=dataset,
        processing_class=processor,
        # SIGTERM / SIGUSR1: checkpoint at the next optimizer step and stop (stages/preemption.py)
        callbacks=[Preemption(), *([StopAfter(cfg.stop_after)] if cfg.stop_after else [])],
        dynamic_sampling=cfg.dynamic_sampling,
        max_num_gen_batches=cfg.max_num_gen_batches,
        gating_reward=cfg.gating_reward_index(),
        curriculum=plan,
        subset_scaling=scaling,
        share_vision=cfg.share_vision,
        share_prefix=cfg.share_prefix,
        tensorboard_samples=cfg.log_completions,
        environment_factory=tool_environment(cfg, output_dir),
        publication=Publication(STAGE, cfg.run, parent=init, base=base, config=cfg, data=paths,
                                keep_last=cfg.keep_last, extra={"template": cfg.template, "algorithm": cfg.algorithm}),
    )
    trainer.train(resume_from_checkpoint=resume_argument(resume_from))
    return registry.latest(STAGE, cfg.run)
