"""`run(cfg) -> Path`: the RL stage end to end -- data, policy, TRL config, trainer, registry checkpoint."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

from stages.rl.config import RLConfig

logger = logging.getLogger(__name__)
STAGE = "rl"


def prompt_dataset(qa, template: str):
    """QA rows -> TRL rows: a conversational `prompt` rendered from the template file, images decoded lazily.

    The qa columns (answer, kind, options, solution) stay: TRL hands them to the reward functions.
    """
    from datasets import Image, List

    from corpora.prompts import render_prompt

    def to_prompt(row):
        return {"prompt": [{"role": "user", "content": render_prompt(template, row["question"], row["options"])}]}

    ds = qa.map(to_prompt, desc="rendering prompts")
    return ds.cast_column("images", List(Image()))


# Tokens a completion must never contain: a sampled <|image_pad|> (or a vision start/end) makes the policy
# forward count more image tokens than the prompt has images, and Qwen-VL's rope-index code fails on it.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def vision_token_ids(processor) -> list[int]:
    tokenizer = getattr(processor, "tokenizer", processor)
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in VISION_TOKENS if t in vocab)


def pad_prompts_left(processor) -> None:
    """TRL left-pads the prompt ids but builds the forward's ``mm_token_type_ids`` with the processor's own
    padding side. With a right-padding processor the image-token types of shorter prompts sit at the wrong
    positions: Qwen-VL's rope index then silently misplaces the image (or fails once the padding is longer than
    the text before the image). TRL sets "left" only on processors it loads itself."""
    getattr(processor, "tokenizer", processor).padding_side = "left"


def grpo_args(cfg: RLConfig, output_dir: Path, *, suppress_token_ids: list[int] = ()):
    """TRL's GRPOConfig from a resolved RLConfig (every preset value filled in).

    ``suppress_token_ids`` are never sampled (transformers generation; vLLM gets no such option here)."""
    import torch
    from trl import GRPOConfig

    from stages.distributed import engine_arguments

    cuda = torch.cuda.is_available()
    return GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.batch * cfg.num_generations,
        gradient_accumulation_steps=cfg.grad_accum,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        max_steps=cfg.steps,
        num_iterations=cfg.num_iterations,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        mask_truncated_completions=cfg.mask_truncated_completions,
        reward_weights=cfg.reward_weights,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_server_host=cfg.vllm_server_host,
        vllm_server_port=cfg.vllm_server_port,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",  # the Trainer also saves at the end: the final entry is published like the others
        save_steps=cfg.save_every or 10**9,
        report_to=["tensorboard"],
        seed=cfg.seed,
        # bf16 autocast whenever the weights are bf16: the trainable ones are fp32 (stages.distributed)
        bf16=cfg.model.dtype == "bfloat16" or (cuda and cfg.model.dtype == "auto"),
        **engine_arguments(),  # use_cpu / ddp_backend for the engine the launcher asked for
        remove_unused_columns=False,
        log_completions=False,
        disable_tqdm=False,
        dataloader_num_workers=0,
        generation_kwargs={"suppress_tokens": list(suppress_token_ids)} if suppress_token_ids and not cfg.use_vllm
        else None,
    )


def run(cfg: RLConfig) -> Path:
    """Train with RL from `cfg.init`; returns the final registry checkpoint folder (rl/<run>/step-N)."""
    from corpora.readers import load_qa
    from stages import distributed
    from stages.checkpointing import (TRAIN_POLICIES, Publication, StopAfter, resume_argument, resume_point,
                                      trained_steps)
    from stages.engine import check_data, data_file
    from stages.model import load_model, resolve_model_path
    from stages.registry import Registry, home
    from stages.rl.rewards import build_rewards
    from stages.rl.trainer import PathoGRPOTrainer

    cfg = cfg.resolved()
    registry = Registry()
    init = cfg.init
    if ":" in init and not init.startswith("tiny:"):
        init = str(registry.resolve(init))  # sft:latest -> the folder; fails early with RegistryError
    resume_from = resume_point(STAGE, cfg.run, cfg.resume, registry)
    if resume_from is not None and trained_steps(resume_from) >= cfg.steps:
        logger.warning("run %s already reached step %d: nothing to do", cfg.run, cfg.steps)
        return resume_from

    path = data_file(cfg.data, "rl.jsonl")
    with distributed.main_process_first():  # every rank checks the data, the main process first
        bad = check_data(path, "qa", cfg.validate, cfg.template)  # file:line problems before any model loads
        dataset = prompt_dataset(load_qa(path, skip=bad), cfg.template)

    model_cfg = copy.deepcopy(cfg.model)
    # Resuming full weights: load them from the checkpoint here (the Trainer's own loader would skip them all:
    # transformers 5 saves them under the original key names). LoRA: the same base, the adapter comes later.
    full_resume = resume_from is not None and not cfg.model.lora.enabled
    model_cfg.name_or_path = str(resume_from) if full_resume else init
    model_cfg.freeze_vision, model_cfg.freeze_projector, model_cfg.freeze_llm = TRAIN_POLICIES[cfg.train]
    model, processor = load_model(model_cfg)
    pad_prompts_left(processor)
    base = resolve_model_path(init)
    if full_resume:  # TRL builds the KL reference model from this name: it stays the input model
        model.config._name_or_path = base

    rewards = build_rewards(cfg.resolved_rewards(), template=cfg.template,
                            max_completion_length=cfg.max_completion_length, overlong_cache=cfg.overlong_cache,
                            length_bounds=(cfg.length_min, cfg.length_max))
    output_dir = Path(home()) / "logs" / STAGE / cfg.run
    trainer = PathoGRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=grpo_args(cfg, output_dir, suppress_token_ids=vision_token_ids(processor)),
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[StopAfter(cfg.stop_after)] if cfg.stop_after else None,
        dynamic_sampling=cfg.dynamic_sampling,
        max_num_gen_batches=cfg.max_num_gen_batches,
        share_vision=cfg.share_vision,
        tensorboard_samples=cfg.log_completions,
        publication=Publication(STAGE, cfg.run, parent=init, base=base, config=cfg, data=[path],
                                keep_last=cfg.keep_last, extra={"template": cfg.template, "algorithm": cfg.algorithm}),
    )
    trainer.train(resume_from_checkpoint=resume_argument(resume_from))
    return registry.latest(STAGE, cfg.run)
