"""Every place pathor1 touches a library's internals, in one table, and the check each touch makes when it is used.

An internal is a private name (``_prepare_inputs``, ``_metrics``), an override of a private method, or a swap of
a library object's method / attribute / module function (``model.generate = ...``, ``parallel.DistributedDataParallel
= ...``). Each row says which library, which symbol, the releases it was written and tested against (major.minor,
inclusive), what happens outside them and where:

* ``refuse``: the touch is not made; ``check(symbol)`` raises ``LibraryVersionError``, one line naming the symbol,
  the installed release, the tested range and the fix;
* ``fallback``: the library's own behaviour is kept (``fallback`` says what that costs); ``check(symbol)`` returns
  False and logs it once. A few adapters read their range with ``tested(symbol)`` and word the fallback
  themselves (``stages.rl.prefix_share``, ``prefix_cache``, ``vision_share``).

``tests/test_library_touches.py`` scans the source: a private access or a swap that has no row here fails it, so
does a row nothing uses any more, and so does a row whose symbol no ``check`` / ``tested`` call in its modules names.

Torch-free and import-free: reading the table costs nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)


class LibraryVersionError(RuntimeError):
    """A library internal we touch, under a release outside the range it was tested with (one line)."""


@dataclass(frozen=True)
class Touch:
    library: str  # distribution name, as importlib.metadata knows it
    symbol: str  # the touched name, qualified: trl.GRPOTrainer._prepare_inputs
    tested: tuple[str, str]  # inclusive major.minor range the code was checked against
    outside: Literal["refuse", "fallback"]
    where: str  # our module(s)
    why: str
    fallback: str = ""  # outside the range, for a fallback row: what runs instead

    @property
    def name(self) -> str:
        """The bare attribute name the source scan looks for."""
        return self.symbol.rsplit(".", 1)[-1]


TRL = ("1.16", "1.16")
TRANSFORMERS = ("5.17", "5.23")

TOUCHES: tuple[Touch, ...] = (
    # --- TRL's GRPOTrainer (stages.rl.trainer.PathoGRPOTrainer checks the refuse rows when it is built)
    Touch("trl", "trl.GRPOTrainer._get_per_token_logps_and_entropies", TRL, "fallback", "stages.rl.prefix_share",
          "shared-prefix log-probs (stages.rl.prefix_share)", "share_prefix off: TRL's own forward, one per row"),
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
    Touch("transformers", "transformers.Trainer._get_train_sampler", TRANSFORMERS, "refuse",
          "stages.engine, stages.rl.trainer, stages.opd.training",
          "seeded length-grouped / curriculum order, so a resumed run sees the uninterrupted order"),
    Touch("transformers", "transformers.ProcessorMixin._get_num_multimodal_tokens", TRANSFORMERS, "fallback",
          "stages.engine", "image-token counts from image headers for length grouping",
          "length grouping by text tokens only"),
    Touch("transformers", "transformers.PretrainedConfig._name_or_path", TRANSFORMERS, "refuse", "stages.rl.training",
          "TRL builds the KL reference from it: a resumed run keeps the input model as reference"),
    Touch("transformers", "transformers.GradientCheckpointingLayer._can_checkpoint_with_cache", ("5.17", "5.17"),
          "fallback", "stages.rl.prefix_cache", "keeps the shared prompt's KV cache inside checkpointed layers",
          "share_prefix off under gradient checkpointing (stages.rl.prefix_share says why)"),
    Touch("transformers", "transformers.PreTrainedModel._gradient_checkpointing_func", ("5.17", "5.17"), "fallback",
          "stages.rl.prefix_cache", "reads whether checkpointing is reentrant (prefix sharing needs non-reentrant)",
          "share_prefix off under gradient checkpointing (stages.rl.prefix_share says why)"),
    Touch("transformers", "transformers.integrations.deepspeed._hf_deepspeed_config_weak_ref", TRANSFORMERS,
          "refuse", "stages.distributed", "switches ZeRO-3 init off while one rank builds a plain CPU copy"),
    Touch("transformers", "transformers.PreTrainedModel.generate", TRANSFORMERS, "fallback",
          "stages.rl.prefill_share", "instance-level generate that prefills each group's prompt once",
          "transformers' own generate: each row's prompt prefilled"),
    Touch("transformers", "transformers.Qwen2VisionTransformerPretrainedModel.forward", TRANSFORMERS, "fallback",
          "stages.rl.vision_share", "instance-level vision-tower forward that encodes each distinct image once",
          "share_vision off: the tower encodes every row's images"),
    Touch("transformers", "transformers.ProcessorMixin.image_processor", TRANSFORMERS, "fallback",
          "stages.rl.image_dedup",
          "a stand-in image processor, during one generation step, that preprocesses each distinct image once",
          "the processor's own image processor: every row's images preprocessed"),
    # --- accelerate, DeepSpeed, vLLM, open_clip, torch
    Touch("accelerate", "accelerate.Accelerator.backward", ("1.15", "1.15"), "refuse", "stages.rl.skipped_step",
          "a skipped DAPO step runs no backward (an instance attribute for one training_step, restored after)"),
    Touch("deepspeed", "deepspeed.runtime.zero.Parameter._hp_mapping", ("0.19", "0.19"), "refuse", "stages.centering",
          "recognises a ZeRO-1/2-managed parameter whose fp32 master copy must be edited too"),
    Touch("trl", "trl.generation.vllm_generation.VLLMGeneration._llm_weights_sleeping", TRL, "fallback",
          "stages.rl.vllm_sync", "keeps colocated vLLM's weights marked loaded between one step's sampling rounds",
          "TRL's own sleep after every round: the weights are sent again for each dynamic-sampling round"),
    Touch("vllm", "vllm.LLM.sleep", ("0.22", "0.31"), "fallback", "stages.rl.vllm_sync",
          "defers TRL's sleep to the end of the step (an instance attribute for that step's rounds only)",
          "TRL's own sleep after every round: the weights are sent again for each dynamic-sampling round"),
    Touch("open_clip_torch", "open_clip.factory._MODEL_CONFIG_PATHS", ("3.3", "3.3"), "fallback", "pathoclip.export",
          "registers pathoclip/configs once (open_clip.add_model_config appends on every call)",
          "open_clip.add_model_config on every call (its list of config folders grows by one each time)"),
    Touch("open_clip_torch", "open_clip_train.main.train_one_epoch", ("3.3", "3.3"), "refuse", "pathoclip.launch",
          "re-seeds each epoch so a resumed phase matches an uninterrupted one (in the phase's own process)"),
    Touch("torch", "torch.nn.parallel.DistributedDataParallel", ("2.13", "2.13"), "refuse", "pathoclip.launch",
          "open_clip_train passes device_ids=[cpu], which torch refuses on CPU (swapped in the phase's own process, "
          "CPU runs only)"),
)
_ROWS = {t.symbol: t for t in TOUCHES}
_warned: set[str] = set()


def touch_names() -> set[str]:
    return {t.name for t in TOUCHES}


def installed_version(library: str) -> str | None:
    """The installed release of ``library`` (a distribution name), None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(library)
    except PackageNotFoundError:
        return None


def tested(*symbols: str) -> tuple[str, str]:
    """The tested range of the rows naming ``symbols`` (one range: rows checked together share it)."""
    ranges = {_ROWS[s].tested for s in symbols}
    if len(ranges) != 1:
        raise ValueError(f"{symbols} have different tested ranges in stages/adapters.py: {sorted(ranges)}")
    return ranges.pop()


def check(symbol: str, version: str | None = None) -> bool:
    """Called where the touch is made: True inside the row's tested range. Outside it (or with the library not
    installed) a ``refuse`` row raises LibraryVersionError and a ``fallback`` row returns False, logged once, so
    the caller keeps the library's own behaviour. ``version`` stands in for the installed release (tests)."""
    from stages.compat import version_in_range

    row = _ROWS[symbol]
    version = version or installed_version(row.library)
    if version is not None and version_in_range(row.library, row.tested, version):
        return True
    low, high = row.tested
    found = f"{row.library} {version}" if version else f"no {row.library}"
    if row.outside == "refuse":
        raise LibraryVersionError(
            f"{row.where} touches {symbol}, tested with {row.library} {low}-{high}, found {found}; fix: install "
            f"{row.library} {low}-{high}, or re-check {row.where} against this release and widen the range in "
            "stages/adapters.py")
    if symbol not in _warned:
        _warned.add(symbol)
        logger.warning("%s touches %s, tested with %s %s-%s, found %s: left alone, %s", row.where, symbol,
                       row.library, low, high, found, row.fallback)
    return False
