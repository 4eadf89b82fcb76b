"""`run(cfg) -> Path`: on-policy distillation end to end -- data, student, teacher, TRL's DistillationTrainer,
registry checkpoints."""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from trl import DistillationTrainer

from stages import adapters
from stages.checkpointing import PublishingTrainer
from stages.model import ModelConfig
from stages.opd import STAGE, OPDConfig, missing_teacher
from stages.rollouts import CurriculumPlan

logger = logging.getLogger(__name__)


class PathoDistillationTrainer(PublishingTrainer, DistillationTrainer):
    """TRL's DistillationTrainer publishing to the registry (stages.checkpointing), the loss curve in each manifest."""

    def __init__(self, *args, **kwargs):
        adapters.check("transformers.Trainer._get_train_sampler")  # the resumable order below
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, dataset=None):
        # TRL's RepeatSampler layout (one generation batch, repeated over the accumulation window), as one pass over
        # every planned step: TRL's reshuffles each epoch from a generator a resumed run does not replay.
        dataset = dataset if dataset is not None else self.train_dataset
        ga = self.args.gradient_accumulation_steps
        plan = CurriculumPlan.build([len(dataset)], [self.args.max_steps], None, self.args.seed)
        return plan.sampler(batch_size=self.args.per_device_train_batch_size * self.accelerator.num_processes * ga,
                            mini_repeat_count=1, repeat_count=ga, steps_per_chunk=1, seed=self.args.seed)

    def checkpoint_metrics(self) -> dict:
        curve = [[e["step"], e["loss"]] for e in self.state.log_history if "loss" in e]
        return {"train_loss_curve": curve, **({"train_loss": curve[-1][1]} if curve else {})}


def distillation_args(cfg: OPDConfig, output_dir: Path, suppress_token_ids: list[int]):
    """TRL's DistillationConfig from an OPDConfig. Its defaults that differ from the Trainer's (gradient
    checkpointing on, bf16 on) are set from our config instead."""
    import torch
    from trl import DistillationConfig

    from stages.distributed import engine_arguments

    cuda = torch.cuda.is_available()
    return DistillationConfig(
        output_dir=str(output_dir), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, max_steps=cfg.max_steps, learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps, save_strategy="steps",
        save_steps=cfg.save_every or 10**9, seed=cfg.seed, report_to=["tensorboard"],
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=cfg.model.dtype == "bfloat16" or (cuda and cfg.model.dtype == "auto"),
        beta=cfg.beta, max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
        top_p=cfg.top_p, remove_unused_columns=False, disable_tqdm=False, dataloader_num_workers=0,
        # every vision token, not only TRL's <|image_pad|>: a sampled one breaks Qwen-VL's rope index
        generation_kwargs={"suppress_tokens": list(suppress_token_ids)} if suppress_token_ids else None,
        **engine_arguments(),
    )


def run(cfg: OPDConfig) -> Path:
    """Distil the teacher into the student on the student's own answers; returns the final registry entry."""
    from corpora.readers import load_qa
    from corpora.training_data import check_data, data_file
    from stages import distributed
    from stages.checkpointing import TRAIN_POLICIES, Publication, StopAfter, resume_argument
    from stages.model import load_model, resolve_model_path, vision_token_ids
    from stages.registry import Registry, home, logs_dir, parse_ref
    from stages.rollouts import pad_prompts_left, prompt_dataset
    from stages.runs import plan_run

    if missing_teacher(cfg):
        raise ValueError(missing_teacher(cfg))
    registry = Registry()
    run_plan = plan_run(STAGE, cfg, init=cfg.init, registry=registry)  # refuses a changed config, model unloaded
    if run_plan.finished:
        logger.warning(run_plan.describe())
        return run_plan.resume_from
    resume_from, init = run_plan.resume_from, run_plan.init  # a resumed run keeps its recorded student
    if parse_ref(init) is not None:
        init = str(registry.resolve(init))  # sft:latest -> the newest finished SFT entry; RegistryError if none
    teacher = cfg.teacher
    teacher_path = resolve_model_path(teacher)  # an unknown ref fails here, before any model loads

    path = data_file(cfg.data, "rl.jsonl", home())
    with distributed.main_process_first():  # every rank checks the data, the main process first
        slides = cfg.slides.resolved(registry.resolve)
        bad = check_data(path, "qa", cfg.validate, cfg.template, slides)  # file:line problems before any model loads
        qa = load_qa(path, skip=bad, slides=slides)
        dataset = prompt_dataset(qa.select_columns(["id", "images", "question", "options"]), cfg.template)

    student_cfg = copy.deepcopy(cfg.model)
    full_resume = resume_from is not None and not cfg.model.lora.enabled  # as stages.rl: weights from the entry
    student_cfg.name_or_path = str(resume_from) if full_resume else init
    student_cfg.freeze_vision, student_cfg.freeze_projector, student_cfg.freeze_llm = TRAIN_POLICIES[cfg.train]
    student, processor = load_model(student_cfg)
    pad_prompts_left(processor)
    teacher_model, _ = load_model(ModelConfig(name_or_path=teacher_path, dtype=cfg.teacher_dtype,
                                              attn_implementation=cfg.model.attn_implementation,
                                              trust_remote_code=cfg.model.trust_remote_code,
                                              freeze_vision=True, freeze_projector=True, freeze_llm=True))
    teacher_model.eval()

    trainer = PathoDistillationTrainer(
        model=student, teacher_model=teacher_model,
        args=distillation_args(cfg, logs_dir(STAGE, cfg.run), vision_token_ids(processor)),
        train_dataset=dataset, processing_class=processor,
        callbacks=[StopAfter(cfg.stop_after)] if cfg.stop_after else None,
        publication=Publication(STAGE, cfg.run, parent=init, base=resolve_model_path(init), config=cfg, data=[path],
                                keep_last=cfg.keep_last,
                                extra={"template": cfg.template, "teacher": teacher_record(teacher, teacher_path)}),
    )
    trainer.train(resume_from_checkpoint=resume_argument(resume_from))
    return registry.latest(STAGE, cfg.run)


def teacher_record(ref: str, path: str) -> dict:
    """What the manifest says about the teacher: as given, where it resolved, and its own registry identity."""
    record = {"ref": ref, "path": str(Path(path).resolve()) if Path(path).is_dir() else path}  # else a hub id
    manifest = Path(path) / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        record.update({k: m.get(k) for k in ("stage", "run", "step")})
    return record
