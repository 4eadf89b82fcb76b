"""Shared training engine for the supervised stages (continued pretraining and CoT SFT).

Both stages are "chat samples -> next-token loss on the assistant turns", so they share one config base,
one collator and one ``Trainer`` subclass; ``stages.pretrain`` and ``stages.sft`` only turn their corpus
into ``{"images": [...paths], "messages": [...]}`` rows and pick defaults.

What we write by hand and why:
- ``ChatCollator``: the processor renders and tokenises (transformers' ``return_assistant_tokens_mask`` with
  TRL's generation-tagged copy of the Qwen-VL template); we only load the images, put them in the first user
  turn and turn the mask into labels. TRL's own vision collator does the same but takes PIL images in the
  dataset, which would force every image into memory up front.
- nothing for checkpoints: the Trainer saves them itself on every rank and ``stages.checkpointing`` publishes
  each one into the registry (the same path as the RL stage's).
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

from corpora.chat import user_content
from corpora.traces import conversation
from corpora.training_data import split_by_image

from stages import adapters, distributed
from stages.checkpointing import TRAINER_STATE_DIR, StopAfter  # noqa: F401 (re-exported for tests and stages)
from stages.checkpointing import PublishingTrainer, Publication, resume_argument
from stages.model import load_model, resolve_model_path
from stages.preemption import Preemption
from stages.registry import Registry, logs_dir
from stages.runs import RunPlan, plan_run
from stages.stage_config import STAGE_POLICIES, StageConfig  # noqa: F401 (re-exported: engine's public config)

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------- collator
def training_chat_template(processor) -> str:
    """The processor's chat template with ``{% generation %}`` markers around each assistant turn.

    TRL ships generation-tagged copies of the Qwen-VL templates; the rendered text is identical to the
    original, the markers only let the tokenizer return which tokens the assistant wrote.
    """
    if has_generation_markers(processor.chat_template):
        return processor.chat_template
    try:
        template = get_training_chat_template(processor)
    except Exception as e:  # an unknown template: say what to do instead of failing inside TRL
        raise ValueError(
            "cannot mask the assistant tokens: the processor's chat template has no {% generation %} markers and "
            "TRL has no training copy of it; add the markers around the assistant turn of chat_template.jinja"
        ) from e
    return template or processor.chat_template


def with_images(messages: list[dict], images: list) -> list[dict]:
    """Messages with string content, the images placed in the first user turn (corpora.chat.user_content)."""
    out, placed = [], False
    for m in messages:
        if m["role"] == "user" and not placed:
            content = user_content(m["content"], len(images))
            for part, image in zip(content, images):  # the image entries come first, in order
                part["image"] = image
            m = {"role": "user", "content": content}
            placed = True
        out.append(m)
    if images and not placed:
        raise ValueError("sample has images but no user turn to put them in")
    return out


@dataclass
class ChatCollator:
    """Rows ``{"images": [paths], "messages": [...]}`` -> a padded batch whose labels are -100 everywhere but on
    the assistant tokens of every assistant turn (each turn's closing ``<|im_end|>`` and newline included,
    as the generation-tagged template marks them). A row with a ``trace`` (corpora.traces: a tool-calling
    conversation) is rendered from it with its tools, its images in the blocks where they appear; its tool
    turns -- results and views -- never train, its tool calls do."""

    processor: object
    max_length: int | None = None

    def __post_init__(self):
        self.chat_template = training_chat_template(self.processor)

    def __call__(self, rows: list[dict]) -> dict:
        images = [[Image.open(p).convert("RGB") for p in r["images"]] for r in rows]
        chats = [conversation(r["trace"], imgs) if r.get("trace") else (with_images(r["messages"], imgs), None)
                 for r, imgs in zip(rows, images)]
        # Rendered one row at a time: a tool-calling trace carries its own tools (the system turn's tool section),
        # a plain chat none; then tokenised as one batch, as processor.apply_chat_template does it.
        texts = [self.processor.apply_chat_template(c, tools=tools, chat_template=self.chat_template, tokenize=False)
                 for c, tools in chats]
        batch = self.processor(text=texts, images=images if any(images) else None, return_tensors="pt",
                               padding=True, padding_side="right", add_special_tokens=False,
                               truncation=self.max_length is not None, max_length=self.max_length)
        mask = self.assistant_mask(chats, batch["input_ids"])
        labels = batch["input_ids"].clone()
        labels[(mask == 0) | (batch["attention_mask"] == 0)] = IGNORE_INDEX
        batch["labels"] = labels
        return dict(batch)

    def assistant_mask(self, conversations: list, input_ids: torch.Tensor) -> torch.Tensor:
        """1 on the tokens the assistant wrote, aligned to the processor's image-expanded ``input_ids``
        (``conversations``: (messages, tools) per row).

        Written by hand because the processor's own ``return_assistant_tokens_mask`` maps character offsets of
        the *unexpanded* prompt onto the *expanded* tokens in transformers 5.17 (every label shifts by the
        number of image tokens). The tokenizer marks the assistant tokens on the unexpanded text, where its
        offsets are right; each image placeholder there stands for a run of placeholders in ``input_ids``.
        """
        tokenizer = self.processor.tokenizer
        plain = [tokenizer.apply_chat_template(c, tools=tools, chat_template=self.chat_template, tokenize=True,
                                               return_dict=True, return_assistant_tokens_mask=True)
                 for c, tools in conversations]
        expanding = {getattr(self.processor, a, None) for a in ("image_token_id", "video_token_id")} - {None}
        mask = torch.zeros_like(input_ids)
        for row, (ids, marks) in enumerate((p["input_ids"], p["assistant_masks"]) for p in plain):
            expanded, j = input_ids[row].tolist(), 0
            for token, mark in zip(ids, marks):
                if j >= len(expanded):  # truncated by max_length
                    break
                if expanded[j] != token:
                    raise ValueError(f"cannot align the assistant mask at token {j}: the processor's tokens differ "
                                     "from the tokenizer's beyond image-placeholder expansion")
                run = 1
                if token in expanding:
                    while j + run < len(expanded) and expanded[j + run] == token:
                        run += 1
                mask[row, j:j + run] = mark
                j += run
        return mask


def add_lengths(rows, processor, bucket: int = 1):
    """A ``length`` column (text tokens + image tokens, from image headers only) for length-grouped batching,
    rounded up to a multiple of ``bucket`` (the grouping sort is stable after a shuffle: a bucket's rows stay in
    random order)."""
    tok = processor.tokenizer
    count_image_tokens = getattr(processor, "_get_num_multimodal_tokens", None) \
        if adapters.check("transformers.ProcessorMixin._get_num_multimodal_tokens") else None

    def length(row):
        text_tokens = sum(len(tok(m["content"], add_special_tokens=False)["input_ids"]) + 4 for m in row["messages"])
        image_tokens = 0
        if row["images"] and count_image_tokens is not None:
            sizes = []
            for p in row["images"]:
                with Image.open(p) as im:  # reads the header, not the pixels
                    sizes.append((im.height, im.width))
            image_tokens = sum(count_image_tokens(image_sizes=sizes).num_image_tokens)
        return {"length": -(-(text_tokens + image_tokens) // bucket) * bucket}

    return rows.map(length, desc="measuring lengths")


# ----------------------------------------------------------------------------------------------- trainer
class SeededLengthSampler(LengthGroupedSampler):
    """transformers' length-grouped order (shuffle, sort inside mega-batches of 50 batches, shuffle the batches),
    with two changes: the order comes from (seed, epoch) instead of the global RNG, so a run resumed mid-epoch
    (which skips that epoch's first batches) sees exactly the order of an uninterrupted run; and the mega-batch
    is always 50 batches (transformers shrinks it to len/4 batches, which leaves small datasets unsorted)."""

    MEGA_BATCH = 50

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer / accelerate at each epoch start
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, mega_batch_mult=self.MEGA_BATCH,
                                               generator=generator))


@contextlib.contextmanager
def rng_untouched():
    """Run a block without moving the python / numpy / torch RNGs (evaluation must not change training)."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        yield
    random.setstate(py)
    np.random.set_state(np_state)


class StageTrainer(PublishingTrainer, Trainer):
    """A ``Trainer`` whose checkpoints are published to the registry (stages.checkpointing), with the eval loss
    and loss curve in the manifest."""

    def __init__(self, *args, **kwargs):
        adapters.check("transformers.Trainer._get_train_sampler")  # the seeded order below (resume = uninterrupted)
        super().__init__(*args, **kwargs)

    def checkpoint_metrics(self) -> dict:
        curve = [[e["step"], e["loss"]] for e in self.state.log_history if "loss" in e]
        out = {"train_loss_curve": curve}
        if curve:
            out["train_loss"] = curve[-1][1]
        if self.eval_dataset is not None:
            with rng_untouched():
                out["eval_loss"] = self.evaluate()["eval_loss"]
        return out

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and "length" in dataset.column_names:
            return SeededLengthSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                       dataset["length"], self.args.seed)
        return super()._get_train_sampler(train_dataset)


def training_arguments(cfg: StageConfig, log_dir: Path) -> TrainingArguments:
    bf16 = cfg.model.dtype == "bfloat16" or (cfg.model.dtype == "auto" and torch.cuda.is_available())
    return TrainingArguments(
        output_dir=str(log_dir),  # TensorBoard event files go under it; checkpoints go to the registry
        report_to=["tensorboard"],
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the planned steps
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_every or 10**9,  # the Trainer always saves at the end too
        eval_strategy="no",  # eval loss is computed at each checkpoint (StageTrainer._metrics)
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        length_column_name="length",
        remove_unused_columns=False,  # the collator needs the raw image paths and messages
        dataloader_num_workers=0,
        bf16=bf16,
        dataloader_pin_memory=torch.cuda.is_available(),
        **distributed.engine_arguments(),  # use_cpu / ddp_backend for the engine the launcher asked for
        **gradient_checkpointing_argument(cfg.gradient_checkpointing),
        disable_tqdm=False,
    )


def gradient_checkpointing_argument(enabled: bool) -> dict:
    """The one activation-checkpointing switch, under the TrainingArguments name of the installed transformers
    (``gradient_checkpointing`` in 5.17; later versions also accept ``activation_checkpointing``). FSDP's own
    ``fsdp_activation_checkpointing`` is refused (stages.distributed.engine_arguments): the Trainer forbids both."""
    if not enabled:
        return {}
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": True}


def prepare_stage(cfg: StageConfig, *, stage: str, rows, init: str, data_files,
                  plan: RunPlan | None = None) -> tuple[StageTrainer, Path | None]:
    """The trainer for ``rows`` (``images`` + ``messages``) from ``init``, and the checkpoint to resume from."""
    plan = plan or plan_run(stage, cfg, init=init)
    resume_from, init = plan.resume_from, plan.init  # a resumed run continues from its own input model
    # the split needs no model: an eval_fraction that leaves no training data is refused before one loads
    train_rows, eval_rows = split_by_image(rows, cfg.eval_fraction, cfg.seed)

    # Resuming full weights: load them from the checkpoint; LoRA: the same base, the adapter comes later.
    base = resolve_model_path(str(init))  # may build the tiny preset, which seeds torch itself
    weights = resolve_model_path(str(resume_from)) if resume_from is not None and not cfg.model.lora.enabled else base
    set_seed(cfg.seed)  # LoRA initialises its A matrices when the model loads, before the Trainer seeds anything
    args = training_arguments(cfg, logs_dir(stage, cfg.run))
    with distributed.model_loading(bf16=args.bf16):  # ZeRO-3 init: partitioned from the start
        model, processor = load_model(cfg.model_config(weights))
    if cfg.group_by_length:
        with distributed.main_process_first():  # datasets' map cache: one rank computes, the others read it
            train_rows = add_lengths(train_rows, processor, cfg.length_bucket)
            eval_rows = None if eval_rows is None else add_lengths(eval_rows, processor, cfg.length_bucket)
    trainer = StageTrainer(
        model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows,
        processing_class=processor, data_collator=ChatCollator(processor, max_length=cfg.max_length),
        callbacks=stage_callbacks(cfg, model),
        publication=Publication(stage, cfg.run, parent=init, base=base, config=dataclasses.replace(cfg, init=init),
                                data=list(data_files), keep_last=cfg.keep_last, extra={"template": cfg.template}),
    )
    return trainer, resume_from


def stage_callbacks(cfg: StageConfig, model) -> list:
    callbacks = [Preemption()]  # SIGTERM / SIGUSR1: checkpoint at the next step boundary (stages/preemption.py)
    if cfg.stop_after:
        callbacks.append(StopAfter(cfg.stop_after))
    if cfg.center_image_features:
        from stages.centering import ImageFeatureCentering

        callbacks.append(ImageFeatureCentering(model))
    return callbacks


def run_stage(cfg: StageConfig, *, stage: str, rows, init: str, data_files, plan: RunPlan | None = None) -> Path:
    """Train (or continue) the run and return its newest registry checkpoint (``plan``: the caller's plan_run)."""
    plan = plan or plan_run(stage, cfg, init=init)  # before any model loads: a changed config is refused here
    if plan.finished:  # a finished run is not trained again (the Trainer would add one more step)
        print(plan.describe(), flush=True)
        return plan.resume_from
    trainer, resume_from = prepare_stage(cfg, stage=stage, rows=rows, init=init, data_files=data_files, plan=plan)
    trainer.train(resume_from_checkpoint=resume_argument(resume_from))
    return Registry().latest(stage, cfg.run)
