"""`PathoGRPOTrainer`: TRL's GRPOTrainer plus what TRL 1.16 lacks.

* dynamic sampling (DAPO): `_generate_and_score_completions` is TRL's generation + scoring step, called
  once per generation batch from `_prepare_inputs`; we call it repeatedly on fresh prompts, keep the
  informative groups (`stages.rl.sampling`) and hand TRL one merged batch -- its advantages, losses,
  buffering over `num_iterations` and shuffling stay untouched;
* group-shared vision encoding on the policy and reference models (`stages.rl.vision_share`);
* checkpoints published to the registry (stages.checkpointing, shared with pretrain and SFT);
* completion samples written to TensorBoard as text.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from trl import GRPOTrainer

from stages.checkpointing import TRAINER_STATE_DIR, PublishingTrainer  # noqa: F401 (re-exported)
from stages.rl.algos import group_rows
from stages.rl.sampling import collect_informative, merge_rows
from stages.rl.vision_share import share_vision_encoding, sharing_stats

logger = logging.getLogger(__name__)


class PathoGRPOTrainer(PublishingTrainer, GRPOTrainer):
    def __init__(self, *args, dynamic_sampling: bool = False, max_num_gen_batches: int = 4,
                 share_vision: bool = True, tensorboard_samples: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.dynamic_sampling = dynamic_sampling
        self.max_num_gen_batches = max_num_gen_batches
        self.tensorboard_samples = tensorboard_samples
        self.last_sampling_stats = None
        self._last_rewards_per_func = None
        self._prompt_order = None
        self._text_writer = None
        if dynamic_sampling and self.accelerator.num_processes > 1:
            # Groups are scored across ranks but sliced per rank; keeping whole groups would need a cross-rank
            # re-balance that is not written yet.
            raise NotImplementedError("dynamic_sampling runs on a single process for now")
        if share_vision:
            for m in (self.model, self.ref_model):
                if m is not None:
                    share_vision_encoding(self.accelerator.unwrap_model(m))

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

    def _fresh_prompts(self, n_prompts: int) -> list[dict]:
        """The next `n_prompts` dataset rows, each repeated G times (TRL's RepeatSampler layout)."""
        if self._prompt_order is None:
            self._prompt_order = self._endless_order()
        rows = [self.train_dataset[next(self._prompt_order)] for _ in range(n_prompts)]
        return [row for row in rows for _ in range(self.num_generations)]

    def _endless_order(self):
        generator = torch.Generator().manual_seed(self.args.seed + 7919)
        while True:
            yield from torch.randperm(len(self.train_dataset), generator=generator).tolist()

    def _generate_and_score_completions(self, inputs):
        base = super()._generate_and_score_completions
        if not (self.dynamic_sampling and self.model.training):
            return base(inputs)
        G = self.num_generations
        pending = [inputs]

        def generate():
            batch = pending.pop() if pending else self._fresh_prompts(len(inputs) // G)
            out = base(batch)
            return out, self._weighted_rewards()

        kept, stats = collect_informative(generate, G, len(inputs) // G, self.max_num_gen_batches)
        self.last_sampling_stats = stats
        for key, value in stats.as_metrics().items():
            self._metrics["train"][key].append(value)
        for warning in stats.warnings:
            logger.warning(warning)
        if not kept:
            return self._empty_batch()
        return merge_rows([(out, group_rows(idx, G)) for out, idx in kept], self._tokenizer.pad_token_id)

    def _empty_batch(self) -> dict:
        device = self.accelerator.device
        ids = torch.zeros((0, 1), dtype=torch.long, device=device)
        return {"prompt_ids": ids, "prompt_mask": ids.clone(), "completion_ids": ids.clone(),
                "completion_mask": ids.clone(), "advantages": torch.zeros(0, device=device),
                "num_items_in_batch": torch.tensor(0, device=device)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if inputs["completion_ids"].size(0) == 0:
            # Nothing informative: a leaf loss leaves every .grad at None, so the optimizer skips all parameters
            # (a zero-valued loss through the model would still move them via Adam's momentum).
            return torch.zeros((), device=self.accelerator.device, requires_grad=True)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    # ------------------------------------------------------------------------------ logging
    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self.model.training:
            for key, value in sharing_stats(self.accelerator.unwrap_model(self.model)).items():
                logs[f"vision_share/{key}"] = float(value)
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
