"""Informative groups per second, with and without dynamic sampling (PathoGRPOTrainer, tiny Qwen2.5-VL).

Two rewards (``--mode``):

* ``rare`` (default): exactly one group of G completions in five is informative (as on a hard corpus early in
  RL, where accuracy is 0 on most questions for every sample): the reward scores every completion 0 except in
  each fifth group it scores, where it is the parity of the completion's token-id sum. Counting groups instead
  of drawing them keeps the informative rate at 20 % in both runs, so the ratio is not at the mercy of a few
  lucky draws;
* ``common``: 1 when the first sampled token id is a multiple of 8, so most groups (~65 %) are informative.

Why filtering can win per informative group: without it, every group -- informative or not -- goes through
the policy forward and backward; with it a non-informative group costs only its generation and scoring, and
the optimizer step only runs on groups that carry a gradient. The rarer the signal, the larger the gain (and the
more refills per step, so ``--max-gen-batches`` must allow ~1/rate rounds).
Last line: one JSON object; "speedup" = informative groups/s with dynamic sampling / without.

    python benchmarks/dynamic_sampling.py [--steps 5] [--mode common]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_step import make_data  # noqa: E402  (also installs the torchvision fix and HF_HUB_OFFLINE)


def sparse_reward(completions, completion_ids, **columns):
    """1 when the first sampled token id is a multiple of 8 (p ~ 1/8 for the untrained model), else 0."""
    return [1.0 if ids and ids[0] % 8 == 0 else 0.0 for ids in completion_ids]


class RareReward:
    """Scores groups of `num_generations` consecutive completions; only every fifth group can vary."""

    __name__ = "rare_reward"

    def __init__(self, num_generations: int, every: int = 5):
        self.num_generations, self.every, self.groups_seen = num_generations, every, 0

    def __call__(self, completions, completion_ids, **columns):
        out = []
        for start in range(0, len(completion_ids), self.num_generations):
            live = self.groups_seen % self.every == 0
            self.groups_seen += 1
            out += [float(sum(ids) % 2) if live else 0.0 for ids in completion_ids[start:start + self.num_generations]]
        return out


REWARDS = {"rare": RareReward, "common": lambda num_generations: sparse_reward}


def parse(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/dynamic_sampling.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5,
                   help="optimizer steps per run (5 x 2 groups: the rare reward's 1 in 5 exactly)")
    p.add_argument("--generations", type=int, default=8, help="G")
    p.add_argument("--batch", type=int, default=2, help="groups per step")
    p.add_argument("--max-gen-batches", type=int, default=8, help="dynamic sampling refill limit")
    p.add_argument("--mode", choices=sorted(REWARDS), default="rare", help="which reward (see above)")
    return p.parse_args(argv)


def run_once(dynamic: bool, folder, dataset, a, work, steps: int | None = None):
    from stages.model import ModelConfig, load_model
    from stages.rl.algos import informative_groups
    from stages.rl.config import RLConfig
    from stages.rl.training import grpo_args
    from stages.rl.trainer import PathoGRPOTrainer

    counts = {"informative_trained": 0, "groups_generated": 0, "groups_informative": 0}

    class Counting(PathoGRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            G = self.num_generations
            # what the update actually trains on: groups with a non-zero advantage somewhere
            adv = out["advantages"]
            counts["informative_trained"] += int((adv.view(-1, G).abs().sum(1) > 0).sum()) if adv.numel() else 0
            return out

        def _calculate_rewards(self, *args):
            rewards = super()._calculate_rewards(*args)
            mask = informative_groups(rewards[:, 0], self.num_generations)
            counts["groups_generated"] += mask.numel()
            counts["groups_informative"] += int(mask.sum())
            return rewards

    cfg = RLConfig(algorithm="dapo", init=str(folder), num_generations=a.generations, batch_size=a.batch,
                   max_completion_length=4, max_steps=steps or a.steps, lr=1e-5, rewards=["x:y"], reward_weights=[1.0],
                   dynamic_sampling=dynamic, max_num_gen_batches=a.max_gen_batches).resolved()
    model, processor = load_model(ModelConfig(name_or_path=str(folder)))
    trainer = Counting(model=model, reward_funcs=[REWARDS[a.mode](a.generations)],
                       args=grpo_args(cfg, work / f"out{dynamic}{steps}"),
                       train_dataset=dataset, processing_class=processor, dynamic_sampling=dynamic,
                       max_num_gen_batches=a.max_gen_batches)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), **counts,
            "informative_per_s": round(counts["informative_trained"] / seconds, 4)}


def main(argv=None) -> int:
    a = parse(argv)
    from stages.model import build_tiny
    from stages.rl.training import prompt_dataset

    work = Path(tempfile.mkdtemp(prefix="dyn_sampling_"))
    folder = build_tiny("qwen2_5_vl", work / "tiny", image_size=112)
    dataset = prompt_dataset(make_data(work, 112, 64), "cot")
    run_once(False, folder, dataset, a, work, steps=1)  # warm-up (first-call costs), not measured
    without = run_once(False, folder, dataset, a, work)
    with_ds = run_once(True, folder, dataset, a, work)
    print(f"without dynamic sampling: {without}")
    print(f"with dynamic sampling:    {with_ds}")
    speedup = with_ds["informative_per_s"] / without["informative_per_s"] if without["informative_per_s"] else None
    rate = without["groups_informative"] / without["groups_generated"] if without["groups_generated"] else None
    print(json.dumps({"benchmark": "dynamic_sampling", "mode": a.mode, "informative_rate": rate and round(rate, 3),
                      "without": without, "with": with_ds,
                      "speedup": round(speedup, 3) if speedup is not None else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
