"""Every place pathor1 touches a library's internals, in one table.

An internal is a private name (``_prepare_inputs``, ``_metrics``), an override of a private method, or a swap of
a library object's method / attribute / module function (``model.generate = ...``,
``torch.distributed.init_process_group = ...``). Each row says which library, which symbol, the releases it was
written and tested against, what happens outside them (``refuse``: a one-line error naming the range;
``fallback``: the library's own behaviour, with a warning; ``none``: no check yet -- a known debt), and where.
``tests/test_library_touches.py`` scans the source: a private access or a swap that has no row here fails it,
and so does a row nothing uses any more.

Torch-free and import-free: reading the table costs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Touch:
    library: str  # distribution name, as version_in_range takes it
    symbol: str  # the touched name, qualified: trl.GRPOTrainer._prepare_inputs
    tested: tuple[str, str]  # inclusive major.minor range the code was checked against
    outside: Literal["refuse", "fallback", "none"]
    where: str  # our module(s)
    why: str

    @property
    def name(self) -> str:
        """The bare attribute name the source scan looks for."""
        return self.symbol.rsplit(".", 1)[-1]


TRL = ("1.16", "1.16")
TRANSFORMERS = ("5.17", "5.23")

TOUCHES: tuple[Touch, ...] = (
    # --- TRL's GRPOTrainer (stages.rl.trainer.PathoGRPOTrainer); stages.rl.trl_batch refuses other TRL releases
    Touch("trl", "trl.GRPOTrainer._get_per_token_logps_and_entropies", TRL, "fallback", "stages.rl.trainer",
          "shared-prefix log-probs (stages.rl.prefix_share); TRL's forward outside prefix_share.TRL_TESTED"),
    Touch("trl", "trl.GRPOTrainer._prepare_inputs", TRL, "refuse", "stages.rl.trainer",
          "one generation batch per step for dynamic sampling and the curriculum"),
    Touch("trl", "trl.GRPOTrainer._calculate_rewards", TRL, "refuse", "stages.rl.trainer",
          "keeps the per-reward columns that gate dynamic sampling"),
    Touch("trl", "trl.GRPOTrainer._generate_and_score_completions", TRL, "refuse", "stages.rl.trainer",
          "dynamic sampling refills and per-subset advantage scaling"),
    Touch("trl", "trl.GRPOTrainer._metrics", TRL, "refuse", "stages.rl.trainer",
          "adds dynamic-sampling / subset-scaling series to TRL's own logged metrics"),
    Touch("trl", "trl.GRPOTrainer._tokenizer", TRL, "refuse", "stages.rl.trainer",
          "decodes the completion samples written to TensorBoard"),
    Touch("trl", "trl.GRPOTrainer._logs", TRL, "refuse", "stages.rl.trainer",
          "the completions TRL collected for logging, written to TensorBoard"),
    # --- transformers
    Touch("transformers", "transformers.Trainer._get_train_sampler", TRANSFORMERS, "none",
          "stages.engine, stages.rl.trainer, stages.opd.training",
          "seeded length-grouped / curriculum order, so a resumed run sees the uninterrupted order"),
    Touch("transformers", "transformers.ProcessorMixin._get_num_multimodal_tokens", TRANSFORMERS, "fallback",
          "stages.engine", "image-token counts from image headers for length grouping; text length only without it"),
    Touch("transformers", "transformers.PretrainedConfig._name_or_path", TRANSFORMERS, "none", "stages.rl.training",
          "TRL builds the KL reference from it: a resumed run keeps the input model as reference"),
    Touch("transformers", "transformers.GradientCheckpointingLayer._can_checkpoint_with_cache", TRANSFORMERS,
          "fallback", "stages.rl.prefix_cache", "keeps the shared prompt's KV cache inside checkpointed layers"),
    Touch("transformers", "transformers.PreTrainedModel._gradient_checkpointing_func", TRANSFORMERS, "fallback",
          "stages.rl.prefix_cache", "reads whether checkpointing is reentrant (prefix sharing needs non-reentrant)"),
    Touch("transformers", "transformers.integrations.deepspeed._hf_deepspeed_config_weak_ref", TRANSFORMERS,
          "fallback", "stages.distributed", "switches ZeRO-3 init off while one rank builds a plain CPU copy"),
    Touch("transformers", "transformers.PreTrainedModel.generate", TRANSFORMERS, "fallback",
          "stages.rl.prefill_share", "instance-level generate that prefills each group's prompt once"),
    Touch("transformers", "transformers.Qwen2VisionTransformerPretrainedModel.forward", TRANSFORMERS, "fallback",
          "stages.rl.vision_share", "instance-level vision-tower forward that encodes each distinct image once"),
    Touch("transformers", "transformers.ProcessorMixin.image_processor", TRANSFORMERS, "none", "stages.rl.image_dedup",
          "a stand-in image processor, during one generation step, that preprocesses each distinct image once"),
    # --- accelerate, DeepSpeed, vLLM, open_clip, torch
    Touch("accelerate", "accelerate.Accelerator.backward", ("1.15", "1.15"), "none", "stages.rl.skipped_step",
          "a skipped DAPO step runs no backward (an instance attribute for one training_step, restored after)"),
    Touch("deepspeed", "deepspeed.runtime.zero.Parameter._hp_mapping", ("0.19", "0.19"), "none", "stages.centering",
          "recognises a ZeRO-1/2-managed parameter whose fp32 master copy must be edited too"),
    Touch("trl", "trl.generation.vllm_generation.VLLMGeneration._llm_weights_sleeping", TRL, "none",
          "stages.rl.vllm_sync", "keeps colocated vLLM's weights marked loaded between one step's sampling rounds"),
    Touch("vllm", "vllm.LLM.sleep", ("0.22", "0.31"), "none", "stages.rl.vllm_sync",
          "defers TRL's sleep to the end of the step (an instance attribute for that step's rounds only)"),
    Touch("open_clip_torch", "open_clip.factory._MODEL_CONFIG_PATHS", ("3.3", "3.3"), "none", "pathoclip.export",
          "registers pathoclip/configs once (open_clip.add_model_config appends on every call)"),
    Touch("open_clip_torch", "open_clip_train.main.train_one_epoch", ("3.3", "3.3"), "refuse", "pathoclip.launch",
          "re-seeds each epoch so a resumed phase matches an uninterrupted one"),
    Touch("torch", "torch.nn.parallel.DistributedDataParallel", ("2.13", "2.13"), "none", "pathoclip.launch",
          "open_clip_train passes device_ids=[cpu], which torch refuses on CPU (swapped in the phase's own process, "
          "CPU runs only)"),
)


def touch_names() -> set[str]:
    return {t.name for t in TOUCHES}
