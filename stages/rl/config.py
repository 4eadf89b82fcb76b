"""`RLConfig`: one typed config for every TRL objective -- the algorithm is a preset, not a file copy.

Preset-controlled fields default to None ("take the preset's value"); any value set in YAML or on the
command line wins over the preset. `resolved()` returns the config with every preset value filled in;
that is what is trained with and stored in the checkpoint manifest.

| preset  | loss_type | scale_rewards | beta | epsilon / epsilon_high | mask_truncated | dynamic_sampling | extra                     |
|---------|-----------|---------------|------|------------------------|----------------|------------------|---------------------------|
| grpo    | grpo      | group         | 0.04 | 0.2 / 0.2              | no             | no               |                           |
| dapo    | dapo      | group         | 0.0  | 0.2 / 0.28             | yes            | yes              | soft_overlong reward      |
| dr_grpo | dr_grpo   | none          | 0.0  | 0.2 / 0.2              | no             | no               |                           |
| gspo    | grpo      | group         | 0.0  | 3e-4 / 4e-4            | no             | no               | sequence-level ratio      |
| cispo   | cispo     | group         | 0.0  | 0.2 / 5.0 (eps_max)    | no             | no               | clipped IS weight x logp  |
| sapo    | sapo      | group         | 0.0  | (soft gate instead)    | no             | no               | gate temperatures 1 / 1.05 |

Any other field of TRL's `GRPOConfig` passes through the `trl` mapping (`trl.top_entropy_quantile=0.2`, in YAML
a `trl:` block), checked against GRPOConfig's own dataclass fields when the config is built. A preset may set
`trl` keys too (gspo: `importance_sampling_level: sequence`); the user's `trl` keys win. The GRPOConfig fields
that pathor1 sets itself (`trl_owned()`, derived from `grpo_settings`, the one dict GRPOConfig is built from) are
refused there, with the RLConfig field to use instead.

vLLM rollouts (GPU only; TRL's options): `use_vllm=true vllm_mode=colocate` runs vLLM inside the training
process (set `vllm_gpu_memory_utilization`, e.g. 0.3); `vllm_mode=server` talks to a separate
`trl vllm-serve --model <ckpt>` process at `vllm_server_host:vllm_server_port`; everything else of TRL's vLLM
(`vllm_max_model_length`, `vllm_enable_sleep_mode`, `vllm_importance_sampling_*`, ...) through `trl`.
"""
from __future__ import annotations

import copy
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from corpora.judge import JudgeConfig
from corpora.slides.sampling import SlideSampling
from stages.config import Passthrough, owned_key_message
from stages.model import ModelConfig
from stages.rl.curriculum import ORDERS, CurriculumPhase
from stages.rl.grounding import GroundingConfig
from stages.rl.tools import ToolsConfig
from stages.runs import StepRunConfig

PRESETS: dict[str, dict] = {
    "grpo": dict(loss_type="grpo", scale_rewards="group", beta=0.04, epsilon=0.2, epsilon_high=0.2,
                 mask_truncated_completions=False, dynamic_sampling=False, rewards=["format", "accuracy"]),
    "dapo": dict(loss_type="dapo", scale_rewards="group", beta=0.0, epsilon=0.2, epsilon_high=0.28,
                 mask_truncated_completions=True, dynamic_sampling=True,
                 rewards=["format", "accuracy", "soft_overlong"]),
    "dr_grpo": dict(loss_type="dr_grpo", scale_rewards="none", beta=0.0, epsilon=0.2, epsilon_high=0.2,
                    mask_truncated_completions=False, dynamic_sampling=False, rewards=["format", "accuracy"]),
    # GSPO (Zheng et al. 2025): one importance ratio per sequence, exp(mean token log-ratio), clipped in a narrow
    # band; the settings TRL documents for it.
    "gspo": dict(loss_type="grpo", scale_rewards="group", beta=0.0, epsilon=3e-4, epsilon_high=4e-4,
                 mask_truncated_completions=False, dynamic_sampling=False, rewards=["format", "accuracy"],
                 trl={"importance_sampling_level": "sequence"}),
    # CISPO (MiniMax-M1): clip the detached IS weight at epsilon_high (ScaleRL's eps_max = 5), multiply by A * log p:
    # no token loses its gradient to clipping.
    "cispo": dict(loss_type="cispo", scale_rewards="group", beta=0.0, epsilon=0.2, epsilon_high=5.0,
                  mask_truncated_completions=False, dynamic_sampling=False, rewards=["format", "accuracy"]),
    # SAPO (Soft Adaptive Policy Optimization): a sigmoid gate of the ratio instead of the hard clip; a hotter gate
    # for negative advantages (TRL's defaults, the paper's values).
    "sapo": dict(loss_type="sapo", scale_rewards="group", beta=0.0, epsilon=0.2, epsilon_high=0.2,
                 mask_truncated_completions=False, dynamic_sampling=False, rewards=["format", "accuracy"],
                 trl={"sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05}),
}
# TrainingArguments fields stages.distributed.engine_arguments may set for the engine the launcher asked for.
ENGINE_KEYS = ("use_cpu", "ddp_backend")
# GRPOConfig fields copied from the RLConfig field of the same name.
_SAME_NAME = ("num_generations", "max_completion_length", "temperature", "top_p", "weight_decay", "max_grad_norm",
              "max_steps", "num_iterations", "loss_type", "scale_rewards", "beta", "epsilon", "epsilon_high",
              "mask_truncated_completions", "reward_weights", "use_vllm", "vllm_mode", "vllm_gpu_memory_utilization",
              "vllm_server_host", "vllm_server_port", "gradient_checkpointing", "logging_steps", "seed")


def grpo_settings(cfg: "RLConfig", output_dir="", *, cuda: bool = False, engine: dict | None = None) -> dict:
    """Every GRPOConfig field pathor1 sets: name -> (the RLConfig field it comes from, or None when fixed; value).

    The one place the TRL config is written: ``stages.rl.training.grpo_args`` builds GRPOConfig from these values
    and ``trl_owned`` refuses exactly these keys in the ``trl`` passthrough, so the two cannot disagree.
    Torch-free: ``cuda`` and ``engine`` (stages.distributed.engine_arguments) come from the caller."""
    out = {name: (name, getattr(cfg, name)) for name in _SAME_NAME}
    out.update(
        output_dir=("run", str(output_dir)),  # logs/rl/<run>: TensorBoard; checkpoints go to the registry
        # each device runs micro_batch completions per forward and accumulates the rest of batch_size x G
        per_device_train_batch_size=("micro_batch", cfg.micro_batch or cfg.batch_size * cfg.num_generations),
        gradient_accumulation_steps=("grad_accum", cfg.accumulation()),
        learning_rate=("lr", cfg.lr),
        lr_scheduler_type=("scheduler", cfg.scheduler),
        warmup_steps=("warmup_ratio", cfg.warmup_ratio),  # a float in [0, 1) is a ratio of the planned steps
        save_strategy=("save_every", "steps"),  # the Trainer also saves at the end: the final entry is published too
        save_steps=("save_every", cfg.save_every or 10**9),
        # bf16 autocast whenever the weights are bf16: the trainable ones are fp32 (stages.distributed)
        bf16=("model.dtype", cfg.model.dtype == "bfloat16" or (cuda and cfg.model.dtype == "auto")),
        log_completions=("log_completions", False),  # pathor1 writes its own samples (PathoGRPOTrainer)
        report_to=(None, ["tensorboard"]),
        remove_unused_columns=(None, False),  # the reward functions read the dataset's columns
        disable_tqdm=(None, False),
        dataloader_num_workers=(None, 0),
        max_tool_calling_iterations=("tools.max_turns", cfg.tools.turns()),  # None without tools: TRL's default
    )
    for key, value in (engine or {}).items():
        if key not in ENGINE_KEYS:
            raise ValueError(f"engine argument {key!r} is not in stages.rl.config.ENGINE_KEYS: add it there")
        out[key] = ("launcher", value)
    return out


@functools.cache
def trl_owned() -> dict[str, str | None]:
    """GRPOConfig fields pathor1 sets (name -> the RLConfig field to set instead, None when fixed): refused in
    ``trl``. Derived from ``grpo_settings``, the dict GRPOConfig is built from."""
    owned = {key: source for key, (source, _) in grpo_settings(RLConfig()).items()}
    return {**owned, **{key: "launcher" for key in ENGINE_KEYS}}


def grpo_config_fields() -> dict[str, Any]:
    """TRL's GRPOConfig fields (name -> type): what the `trl` mapping accepts. Imports trl, so called lazily."""
    import dataclasses

    from trl import GRPOConfig

    try:
        hints = typing.get_type_hints(GRPOConfig)
    except Exception:  # an annotation that does not resolve: accept that field's values as they are
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(GRPOConfig) if f.init}


TRL_PASSTHROUGH = Passthrough("GRPOConfig", grpo_config_fields, lambda: trl_owned())
DEFAULT_WEIGHTS = {"format": 0.1, "accuracy": 0.9, "consistency": 0.5, "length_aware_accuracy": 1.0, "soft_overlong": 1.0,
                   "judge": 0.9, "grounding": 0.1, "view_cost": 0.05}


# Rewards that say whether the answer is right (DAPO and verl's filter_groups gate on this, not on the sum: with a
# format or a continuous grounding / judge reward added almost no group has equal totals, and nothing is dropped).
OUTCOME_REWARDS = ("accuracy", "length_aware_accuracy")


def outcome_reward(rewards: list[str]) -> str:
    """The default dynamic-sampling metric: the first outcome reward among `rewards`, else total."""
    return next((name for name in OUTCOME_REWARDS if name in rewards), "total")


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class RLConfig(StepRunConfig):
    """RL with TRL's GRPOTrainer; the shared names (run, seed, max_steps, batch_size, lr, ...) are stages.runs'."""

    algorithm: Literal["grpo", "dapo", "dr_grpo", "gspo", "cispo", "sapo"] = _f(
        "grpo", "Preset that fills every field left unset (None); see stages/rl/config.py for the table.")
    init: str = _f("sft:latest", "Policy to start from: registry ref (sft:latest), folder, or tiny:qwen2_5_vl. "
                                  "Replaces model.name_or_path.")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Model loading, freezing, LoRA."})
    data: str = _f("", "QA file (kind qa, JSONL) or folder holding rl.jsonl; empty = the demo corpus.")
    curriculum: list[CurriculumPhase] = field(default_factory=list, metadata={"help": (
        "Ordered phases, e.g. [{data: closed.jsonl, max_steps: 40}, {data: open.jsonl, max_steps: 60}]: each phase "
        "trains its max_steps on its own file (data is then unused); max_steps = their sum.")})
    curriculum_order: Literal["shuffle", "pass_rate", "closed_first"] = _f(
        "shuffle", "Order of the questions (within each phase): shuffle (TRL's), pass_rate (highest first, easy to "
                   "hard; written by recipes.filter), closed_first (mcq and yes/no before open).")
    validate: Literal["strict", "lenient", "skip"] = _f(
        "strict", "Validate the data first (corpora.validate): strict refuses any problem, lenient leaves bad records "
                  "out, skip does not check.")
    template: str = _f("cot", "Prompt template (corpora/prompts); the format reward checks its response format.")
    slides: SlideSampling = field(default_factory=SlideSampling, metadata={
        "help": "How records naming a whole-slide image (\"slide\": PATH) become images: K tiles, selection, µm/px."})
    # -- rollouts
    num_generations: int = _f(8, "G: completions sampled per prompt (one group).")
    batch_size: int = _f(2, "Prompts (groups) per optimizer step on each device.")
    micro_batch: int | None = _f(
        None, "Completions per forward/backward on each device; None = batch x num_generations (all at once). Must "
              "divide batch x num_generations; the rest is accumulated, so an optimizer step sees the same batch.")
    max_completion_length: int = _f(256, "L_max: tokens per completion; longer ones are truncated.")
    temperature: float = _f(1.0, "Sampling temperature of the rollouts.")
    top_p: float = _f(1.0, "Nucleus sampling of the rollouts.")
    # -- optimisation
    max_steps: int = _f(100, "Optimizer steps.")
    lr: float = _f(1e-6, "Peak learning rate.")
    scheduler: str = _f("constant", "transformers lr_scheduler_type.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    grad_accum: int = _f(1, "Gradient accumulation steps (TRL then generates grad_accum batches at once).")
    num_iterations: int = _f(1, "mu: policy updates per generated batch (PPO epochs).")
    train: Literal["projector_llm", "llm", "all"] = _f(
        "projector_llm", "Which towers train: llm, projector_llm, or all (vision tower too).")
    # -- algorithm (None = from the preset)
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"] | None = _f(
        None, "grpo: per-sequence mean then batch mean; dapo: token-level over the batch; dr_grpo: sum / (B * L_max); "
              "cispo, sapo, luspo, vespo: TRL's losses of those names.")
    scale_rewards: Literal["group", "batch", "none"] | None = _f(None, "Divide advantages by the group std (none: Dr. GRPO).")
    beta: float | None = _f(None, "KL (k3) coefficient to the reference model; the reference is loaded only if > 0.")
    epsilon: float | None = _f(None, "Lower clip epsilon (ratio >= 1 - epsilon).")
    epsilon_high: float | None = _f(None, "Upper clip epsilon (ratio <= 1 + epsilon_high); DAPO clip-higher 0.28.")
    mask_truncated_completions: bool | None = _f(None, "Exclude completions cut at L_max from the loss.")
    dynamic_sampling: bool | None = _f(None, "Drop groups with equal rewards and refill the batch (DAPO).")
    subset_scaling: Literal["none", "balance"] = _f(
        "none", "Domain-aware advantage scaling over the `subset` column (QoQ-Med): balance = each subset in a "
                "generation batch carries the same total weight whatever its number of rows (inverse frequency).")
    subset_weights: dict[str, float] = field(default_factory=dict, metadata={"help": (
        "Fixed advantage multiplier per subset name, e.g. {ct: 2.0, mri: 0.5} (others 1); on top of subset_scaling.")})
    max_num_gen_batches: int = _f(4, "Dynamic sampling: at most this many generation rounds per step.")
    dynamic_sampling_metric: str | None = _f(
        None, "Dynamic sampling: the reward whose spread makes a group informative -- one of `rewards`, or total (the "
              "weighted sum). None = the outcome: accuracy, else length_aware_accuracy, else total.")
    # -- rewards
    rewards: list[str] | None = _f(
        None, "Reward names: format, accuracy, consistency, length_aware_accuracy, soft_overlong, judge, grounding, "
              "view_cost (with tools.env), or package.module:function.")
    reward_weights: list[float] | None = _f(None, "One weight per reward; default format 0.1, accuracy 0.9, consistency 0.5, others 1.")
    overlong_cache: int | None = _f(None, "L_cache of the soft overlong punishment; default max_completion_length // 4.")
    length_min: int = _f(0, "length_aware_accuracy: shortest completion (tokens) that can earn +1.")
    length_max: int | None = _f(None, "length_aware_accuracy: longest completion (tokens); default max_completion_length.")
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={"help": "LLM judge of the `judge` reward."})
    grounding: GroundingConfig = field(default_factory=GroundingConfig,
                                       metadata={"help": "PathoCLIP checkpoint of the `grounding` reward."})
    tools: ToolsConfig = field(default_factory=ToolsConfig, metadata={
        "help": "Multi-turn tools (stages.rl.tools): tools.env=slide_view lets the policy zoom into each record's "
                "`slide`; the view_cost reward charges its weight per view."})
    # -- speed
    share_vision: bool = _f(True, "Encode each distinct prompt image once per forward (and once per step when the "
                                  "vision tower is frozen) instead of once per completion.")
    share_prefix: bool = _f(True, "Run each group's prompt once -- in the rollouts' prefill, the log-prob forwards and the "
                                  "backward -- and reuse its KV cache for the G completions; unshared where not exact.")
    device: Literal["auto", "cuda", "cpu"] = _f(
        "auto", "cuda: refuse to start without a usable GPU; cpu: train on the CPU; auto: CUDA when usable, the CPU "
                "only on a machine without NVIDIA GPUs and nothing asking for one (stages/cuda_check.py).")
    use_vllm: bool = _f(False, "Generate with vLLM (GPU only).")
    vllm_mode: Literal["colocate", "server"] = _f("colocate", "colocate: vLLM inside this process; server: `trl vllm-serve`.")
    vllm_gpu_memory_utilization: float = _f(0.3, "colocate: share of GPU memory vLLM may take.")
    vllm_server_host: str = _f("0.0.0.0", "server mode: host of `trl vllm-serve`.")
    vllm_server_port: int = _f(8000, "server mode: port of `trl vllm-serve`.")
    # -- any other field of TRL's GRPOConfig
    trl: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "GRPOConfig fields passed to TRL as they are, e.g. trl.top_entropy_quantile=0.2 "
                "trl.vllm_max_model_length=4096 trl.steps_per_generation=4 (checked against GRPOConfig).",
        "passthrough": TRL_PASSTHROUGH})
    # -- output
    log_completions: int = _f(4, "Completion samples written to TensorBoard per logging step (0 = none).")

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        if isinstance(self.judge, dict):
            self.judge = JudgeConfig(**self.judge)
        if isinstance(self.grounding, dict):
            self.grounding = GroundingConfig(**self.grounding)
        if isinstance(self.tools, dict):
            self.tools = ToolsConfig(**self.tools)
        self.curriculum = [CurriculumPhase(**p) if isinstance(p, dict) else p for p in self.curriculum]
        if self.curriculum_order not in ORDERS:
            raise ValueError(f"curriculum_order must be one of {'|'.join(ORDERS)}, got {self.curriculum_order!r}")
        super().__post_init__()
        if self.algorithm not in PRESETS:
            raise ValueError(f"algorithm must be one of {'|'.join(PRESETS)}, got {self.algorithm!r}")
        for name in ("num_generations", "max_completion_length", "max_steps", "num_iterations", "max_num_gen_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch is not None and (self.micro_batch < 1 or (self.batch_size * self.num_generations) % self.micro_batch):
            raise ValueError(f"micro_batch must divide batch x num_generations = {self.batch_size * self.num_generations}, "
                             f"got {self.micro_batch}")
        owned = sorted(set(self.trl) & set(trl_owned())) if self.trl else []
        if owned:  # from_dict refuses these with the origin; this catches configs built in Python
            raise ValueError(owned_key_message("GRPOConfig", owned[0], trl_owned()[owned[0]]))
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 (a group needs two completions), got {self.num_generations}")
        for name in ("log_completions", "length_min"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.beta is not None and self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        r = self.resolved_rewards()
        if self.reward_weights is not None and len(self.reward_weights) != len(r):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} values for {len(r)} rewards {r}")
        if "view_cost" in r and not self.tools.enabled:
            raise ValueError("rewards include view_cost but no tool environment is set: add tools.env=slide_view")
        if self.tools.enabled and self.curriculum:
            raise ValueError("tools.env reads one slide QA file (data); a curriculum of several is not supported yet")
        if "judge" in r and not self.judge.url:
            raise ValueError("rewards include judge but judge.url is empty: set judge.url=http://HOST:PORT judge.model=NAME")
        negative = {k: v for k, v in self.subset_weights.items() if not v >= 0}
        if negative:
            raise ValueError(f"subset_weights must be >= 0, got {negative}")
        metric = self.dynamic_sampling_metric
        if metric is not None and metric != "total" and metric not in r:
            raise ValueError(f"dynamic_sampling_metric must be total or one of the rewards {r}, got {metric!r}")
        cache = self.overlong_cache
        if cache is not None and not 0 <= cache <= self.max_completion_length:
            raise ValueError(f"overlong_cache must be in [0, max_completion_length={self.max_completion_length}], got {cache}")

    def resolved_rewards(self) -> list[str]:
        return list(self.rewards) if self.rewards is not None else list(PRESETS[self.algorithm]["rewards"])

    def resolved(self) -> "RLConfig":
        """A copy with every None filled from the preset (explicit values are kept)."""
        out = copy.deepcopy(self)
        for name, value in PRESETS[self.algorithm].items():
            if name == "trl":
                out.trl = {**copy.deepcopy(value), **out.trl}
            elif getattr(out, name) is None:
                setattr(out, name, copy.deepcopy(value))
        if out.reward_weights is None:
            out.reward_weights = [DEFAULT_WEIGHTS.get(n, 1.0) for n in out.rewards]
        if out.overlong_cache is None:
            out.overlong_cache = out.max_completion_length // 4
        if out.length_max is None:
            out.length_max = out.max_completion_length
        if out.micro_batch is None:
            out.micro_batch = out.batch_size * out.num_generations
        if out.curriculum:
            out.max_steps = sum(p.max_steps for p in out.curriculum)
        if out.dynamic_sampling_metric is None:
            out.dynamic_sampling_metric = outcome_reward(out.rewards)
        return out

    def gating_reward_index(self) -> int | None:
        """Index into the rewards of the one that gates dynamic sampling; None = the weighted total."""
        metric = self.dynamic_sampling_metric or outcome_reward(self.resolved_rewards())
        return None if metric == "total" else self.resolved_rewards().index(metric)

    def accumulation(self) -> int:
        """Micro-batches per optimizer step on each device: grad_accum x (batch x G / micro_batch)."""
        micro = self.micro_batch or self.batch_size * self.num_generations
        return self.grad_accum * (self.batch_size * self.num_generations // micro)
