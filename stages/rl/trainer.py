"""`PathoGRPOTrainer`: TRL's GRPOTrainer plus what TRL 1.16 lacks.

* dynamic sampling (DAPO), on one process or many: `_generate_and_score_completions` is TRL's generation +
  scoring step, called once per generation batch from `_prepare_inputs`; we call it for as many rounds as the
  slowest rank needs (on fresh prompts), keep the informative groups (`stages.rl.sampling`), pad a shortfall
  with inert rows and hand TRL one merged batch of the planned size -- its advantages, losses, buffering over
  `num_iterations` and shuffling stay untouched (the batch layout it relies on: `stages.rl.trl_batch`);
* group-shared vision encoding on the policy and reference models (`stages.rl.vision_share`), and each
  distinct prompt image preprocessed once per generation step (`stages.rl.image_dedup`);
* shared-prefix log-prob forwards: each group's prompt runs once in the policy / reference / old-policy
  forwards and the backward (`stages.rl.prefix_share`, hooked into `_get_per_token_logps_and_entropies`),
  and once in the rollouts' prefill (`stages.rl.prefill_share`: an instance-level `generate` on the policy);
* checkpoints published to the registry (stages.checkpointing, shared with pretrain and SFT);
* completion samples written to TensorBoard as text.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import torch
from trl import GRPOTrainer

from stages import adapters
from stages.checkpointing import TRAINER_STATE_DIR, PublishingTrainer  # noqa: F401 (re-exported)
from stages.rl import prefill_share, prefix_share, skipped_step, trl_batch, vllm_sync
from stages.rl.image_dedup import dedup_images
from stages.rl.sampling import collect_informative, refill_prompt_indices
from stages.rl.vision_share import share_vision_encoding, sharing_stats

logger = logging.getLogger(__name__)
# The TRL / transformers internals this class overrides or reads on every run (stages/adapters.py): outside their
# tested releases the trainer is refused before it is built.
OVERRIDDEN = ("trl.GRPOTrainer._prepare_inputs", "trl.GRPOTrainer._calculate_rewards",
              "trl.GRPOTrainer._generate_and_score_completions", "trl.GRPOTrainer._metrics",
              "trl.GRPOTrainer._tokenizer", "trl.GRPOTrainer._logs", "transformers.Trainer._get_train_sampler")


class PathoGRPOTrainer(PublishingTrainer, GRPOTrainer):
    def __init__(self, *args, dynamic_sampling: bool = False, max_num_gen_batches: int = 4,
                 gating_reward: int | None = None, curriculum=None, subset_scaling=None, share_vision: bool = True, share_prefix: bool = True,
                 tensorboard_samples: int = 0, **kwargs):
        for symbol in OVERRIDDEN:
            adapters.check(symbol)
        super().__init__(*args, **kwargs)
        self.dynamic_sampling = dynamic_sampling
        self.gating_reward = gating_reward  # index of the reward that decides informativeness; None = weighted total
        self.curriculum = curriculum  # stages.rl.curriculum.CurriculumPlan: phases / ordered questions, or None
        self.subset_scaling = subset_scaling  # stages.rl.algos.SubsetScaling: domain-aware advantages, or None
        self.share_vision = share_vision
        self.max_num_gen_batches = max_num_gen_batches
        self.tensorboard_samples = tensorboard_samples
        self.last_sampling = None  # the last step's `Collected.summary()`: stats, kept / padding rows per round
        self.last_rounds: list = []  # (prompt ids, gathered rewards) of each generation round of the last step
        self._last_rewards_per_func = None
        self._generation_key = (-1, 0)  # (global step, generation batches drawn in it): keys the refill draw
        self._text_writer = None
        if dynamic_sampling:
            trl_batch.check_trl_version()
            if not hasattr(self.train_dataset, "__getitem__"):
                raise ValueError("dynamic_sampling refills with dataset rows drawn by index: it needs a map-style "
                                 f"train_dataset, got {type(self.train_dataset).__name__} (load without streaming)")
        self.prefix_stats = prefix_share.PrefixStats()
        self.share_prefix = share_prefix and prefix_share.trl_supported()
        if share_prefix and not self.share_prefix:
            logger.warning("share_prefix is off: it hooks a private TRL method checked against TRL %s only",
                           "-".join(dict.fromkeys(prefix_share.TRL_TESTED)))
        if share_prefix:  # rollouts: one prefill per group (a public-API override of the model's generate)
            prefill_share.share_prefill(self.model)
        if share_vision:
            for m in (self.model, self.ref_model):
                if m is not None:
                    share_vision_encoding(self.accelerator.unwrap_model(m))

    # ------------------------------------------------------------------------------ shared-prefix log-probs
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                           **inputs):
        # Private TRL hook (its version was checked in __init__): TRL's contract, each group's prompt run once.
        if self.share_prefix:
            with self.accelerator.autocast():
                shared = prefix_share.try_shared_logps(
                    model, input_ids, attention_mask, logits_to_keep, inputs, batch_size=batch_size,
                    compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, stats=self.prefix_stats)
            if shared is not None:
                return (*shared, None)
        return super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size, compute_entropy=compute_entropy,
            compute_aux_loss=compute_aux_loss, **inputs)

    def _get_train_sampler(self, dataset=None):
        if self.curriculum is None:
            return super()._get_train_sampler(dataset)
        # TRL's RepeatSampler layout (see its comment), each generation batch drawn from its step's phase
        per_chunk = self.num_iterations * self.args.steps_per_generation / self.args.gradient_accumulation_steps
        return self.curriculum.sampler(batch_size=self.args.generation_batch_size // self.num_generations,
                                       mini_repeat_count=self.num_generations,
                                       repeat_count=self.num_iterations * self.args.steps_per_generation,
                                       steps_per_chunk=per_chunk, seed=self.args.seed)

    def _prepare_inputs(self, generation_batch):
        # TRL preprocesses every row's images (each prompt's G times) for generation and again for the forwards.
        with dedup_images(self.processing_class) if self.share_vision else nullcontext():
            return super()._prepare_inputs(generation_batch)

    # ------------------------------------------------------------------------------ dynamic sampling
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards
        return rewards

    def _weighted_rewards(self) -> torch.Tensor:
        """TRL's per-completion reward (weighted sum; NaN where no reward function scored)."""
        per_func = self._last_rewards_per_func
        weights = self.reward_weights.to(per_func.device)
        rewards = (per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
        return rewards

    def _gating_rewards(self) -> torch.Tensor:
        """The per-completion values whose spread within a group makes it informative: one reward function's
        (the outcome, by default: `RLConfig.dynamic_sampling_metric`) or the weighted total."""
        if self.gating_reward is None:
            return self._weighted_rewards()
        return self._last_rewards_per_func[:, self.gating_reward]

    def _refill(self, local_rows: int, key: tuple[int, ...]) -> list[dict]:
        """Fresh dataset rows for one refill round: different prompts on every rank, reproducible from `key`; with
        a curriculum, from the current phase."""
        pool = self.curriculum.pool_at(self.state.global_step) if self.curriculum else range(len(self.train_dataset))
        indices = refill_prompt_indices(len(pool), local_rows, self.num_generations,
                                        self.accelerator.process_index, self.accelerator.num_processes,
                                        self.args.seed, key)
        return [self.train_dataset[pool[i]] for i in indices]

    def _next_generation_key(self) -> tuple[int, int]:
        step, drawn = self._generation_key
        self._generation_key = (self.state.global_step, drawn + 1 if step == self.state.global_step else 0)
        return self._generation_key

    def _gather_counts(self, n: int) -> list[int]:
        return self.accelerator.gather(torch.tensor([n], device=self.accelerator.device)).tolist()

    def _scaled_advantages(self, inputs):
        """TRL's generation + scoring, with each row's advantage multiplied by its subset's scale (the balance
        counted over every rank's rows of this generation batch, so all ranks agree)."""
        out = super()._generate_and_score_completions(inputs)
        if self.subset_scaling is None or not self.model.training:
            return out
        ids = self.subset_scaling.ids([row.get("subset", "") for row in inputs]).to(self.accelerator.device)
        scales = self.subset_scaling.scales(self.accelerator.gather(ids).cpu())
        rank, n = self.accelerator.process_index, len(inputs)
        out["advantages"] = out["advantages"] * scales[rank * n:(rank + 1) * n].to(out["advantages"])
        self._metrics["train"]["subset_scaling/max_scale"].append(float(scales.max()))
        return out

    def _generate_and_score_completions(self, inputs):
        base = self._scaled_advantages
        if not (self.dynamic_sampling and self.model.training):
            return base(inputs)
        key = self._next_generation_key()

        def generate(round_index: int):
            batch = inputs if round_index == 0 else self._refill(len(inputs), (*key, round_index))
            if round_index:
                before_round()
            out, rewards = base(batch), self._gating_rewards()
            self.last_rounds.append(([row.get("id") for row in batch], rewards.detach().cpu()))
            return out, rewards

        self.last_rounds = []
        with vllm_sync.one_sync_per_step(self) as before_round:  # vLLM keeps this step's weights between rounds
            collected = collect_informative(generate, self.num_generations, len(inputs), self.max_num_gen_batches,
                                            rank=self.accelerator.process_index, all_gather=self._gather_counts)
        self.last_sampling = collected.summary()  # no batches: they are freed once merged
        stats = collected.stats
        for name, value in stats.as_metrics().items():
            self._metrics["train"][name].append(value)
        for warning in stats.warnings:
            logger.warning(warning)
        if stats.skipped:  # decided from an all-gather: every rank returns an empty batch this step
            return trl_batch.empty_batch(self.accelerator.device)
        merged = trl_batch.merge_rows(collected.parts, self._tokenizer.pad_token_id)
        merged = trl_batch.make_inert(merged, collected.padding_rows)
        # TRL's normaliser for the dapo loss is the token count over every rank's batch: recount the kept rows
        # and sum across ranks (each rank divides by it, DDP averages, so the loss is a mean over all tokens).
        merged["num_items_in_batch"] = self.accelerator.gather(trl_batch.loss_token_count(merged)[None]).sum()
        return merged

    def training_step(self, model, inputs, num_items_in_batch=None):
        # A skipped step (compute_loss saw the empty batch) never reaches the engine's backward / step: every
        # weight, moment and step count stays as it was under DDP, ZeRO-2/3 and FSDP2 (stages.rl.skipped_step).
        self._nothing_to_train = False
        with skipped_step.backward_unless(self.accelerator, model, lambda: self._nothing_to_train):
            return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if inputs["completion_ids"].size(0) == 0:
            # Nothing informative on any rank: a zero loss outside the model; training_step skips its backward.
            self._nothing_to_train = True
            return torch.zeros((), device=self.accelerator.device, requires_grad=True)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    # ------------------------------------------------------------------------------ logging
    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self.model.training:
            for key, value in sharing_stats(self.accelerator.unwrap_model(self.model)).items():
                logs[f"vision_share/{key}"] = float(value)
            if self.share_prefix:
                logs.update(self.prefix_stats.as_metrics())
            prefill = prefill_share.prefill_stats(self.model)
            if prefill is not None:
                logs["prefix_share/generate_token_saving"] = prefill.as_metrics()["prefix_share/token_saving"]
        if self.tensorboard_samples and self.model.training and self.state.is_world_process_zero:
            self._write_samples()
        self._last_logs = dict(logs)
        super().log(logs, start_time)

    def _write_samples(self) -> None:
        completions = list(self._logs["completion"])[-self.tensorboard_samples:]
        if not completions:
            return
        if self._text_writer is None:  # share the writer of transformers' TensorBoard callback when there is one
            writers = [getattr(cb, "tb_writer", None) for cb in self.callback_handler.callbacks]
            self._text_writer = next((w for w in writers if w is not None), None)
            if self._text_writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._text_writer = SummaryWriter(str(Path(self.args.output_dir) / "samples"))
        rewards = {name: list(v)[-len(completions):] for name, v in self._logs["rewards"].items()}
        lines = []
        for i, completion in enumerate(completions):
            text = completion if isinstance(completion, str) else str(completion[-1].get("content", completion))
            scores = ", ".join(f"{n}={v[i]:.2f}" for n, v in rewards.items() if i < len(v))
            lines.append(f"**{scores}**\n\n    {text[:2000]}")
        self._text_writer.add_text("completions", "\n\n---\n\n".join(lines), self.state.global_step)
        self._text_writer.flush()

    # ------------------------------------------------------------------------------ checkpoints
    def checkpoint_metrics(self) -> dict:  # published by stages.checkpointing with every registry entry
        return {k: v for k, v in getattr(self, "_last_logs", {}).items() if isinstance(v, (int, float))}
