"""Informative groups per second, with and without dynamic sampling (PathoGRPOTrainer, tiny Qwen2.5-VL).

A sparse reward (most groups of G completions score all-zero, as accuracy does early in RL) makes most
groups carry no gradient. Without dynamic sampling those groups still cost a training forward/backward;
with it they are replaced by fresh prompts. Last line: one JSON object; "speedup" = informative groups/s
with dynamic sampling / without (above 1: dynamic sampling trains on signal faster).

    python benchmarks/dynamic_sampling.py --steps 4
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


def parse(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/dynamic_sampling.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    p.add_argument("--generations", type=int, default=8, help="G")
    p.add_argument("--batch", type=int, default=2, help="groups per step")
    p.add_argument("--max-gen-batches", type=int, default=4, help="dynamic sampling refill limit")
    return p.parse_args(argv)


def run_once(dynamic: bool, folder, dataset, a, work):
    from stages.model import ModelConfig, load_model
    from stages.rl.algos import informative_groups
    from stages.rl.config import RLConfig
    from stages.rl.training import grpo_args
    from stages.rl.trainer import PathoGRPOTrainer

    counts = {"informative_trained": 0, "groups_generated": 0}

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
            counts["groups_generated"] += informative_groups(rewards[:, 0], self.num_generations).numel()
            return rewards

    cfg = RLConfig(algorithm="dapo", init=str(folder), num_generations=a.generations, batch=a.batch,
                   max_completion_length=4, steps=a.steps, lr=1e-5, rewards=["x:y"], reward_weights=[1.0],
                   dynamic_sampling=dynamic, max_num_gen_batches=a.max_gen_batches).resolved()
    model, processor = load_model(ModelConfig(name_or_path=str(folder)))
    trainer = Counting(model=model, reward_funcs=[sparse_reward], args=grpo_args(cfg, work / f"out{dynamic}"),
                       train_dataset=dataset, processing_class=processor, dynamic_sampling=dynamic,
                       max_num_gen_batches=a.max_gen_batches)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), **counts, "informative_per_s": round(counts["informative_trained"] / seconds, 4)}


def main(argv=None) -> int:
    a = parse(argv)
    from stages.model import build_tiny
    from stages.rl.training import prompt_dataset

    work = Path(tempfile.mkdtemp(prefix="dyn_sampling_"))
    folder = build_tiny("qwen2_5_vl", work / "tiny", image_size=112)
    dataset = prompt_dataset(make_data(work, 112, 64), "cot")
    without = run_once(False, folder, dataset, a, work)
    with_ds = run_once(True, folder, dataset, a, work)
    print(f"without dynamic sampling: {without}")
    print(f"with dynamic sampling:    {with_ds}")
    speedup = with_ds["informative_per_s"] / without["informative_per_s"] if without["informative_per_s"] else None
    print(json.dumps({"benchmark": "dynamic_sampling", "without": without, "with": with_ds,
                      "speedup": round(speedup, 3) if speedup is not None else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
