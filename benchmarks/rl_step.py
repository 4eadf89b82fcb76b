"""One RL step, pathor1 vs plain TRL: PathoGRPOTrainer against trl.GRPOTrainer on the same tiny Qwen2.5-VL,
data and settings, in one process. Ours runs each group's prompt once (generation's prefill, the log-prob
forwards and the backward: stages.rl.prefix_share, stages.rl.prefill_share), encodes and preprocesses each distinct image once
(stages.rl.vision_share, stages.rl.image_dedup). The last line is one JSON object with the raw figures and
"speedup" = TRL time / pathor1 time (above 1: pathor1 is faster).

    OMP_NUM_THREADS=1 python benchmarks/rl_step.py                                  # 256 image tokens, 8-token completions
    OMP_NUM_THREADS=1 python benchmarks/rl_step.py --image-size 896 --completion 256  # 1,024 image tokens
    OMP_NUM_THREADS=1 python benchmarks/rl_step.py --gradient-checkpointing          # both trainers checkpoint
    OMP_NUM_THREADS=1 python benchmarks/rl_step.py --tiles 8 --image-size 224          # 8 slide tiles per prompt
    OMP_NUM_THREADS=1 python benchmarks/rl_step.py --tools --image-size 224            # multi-turn slide viewer

``--tools``: tiny Qwen3-VL on slide questions with ``tools.env=slide_view``; the rollouts follow
tests/slide_tools.py's script (even rows call zoom and answer after the view, odd rows answer at once), so every
step has the same tool turns; each prompt asks its own question (one group per prompt). Four trainers in one run:
TRL's GRPOTrainer with the tool, pathor1's with the prompt shared up to the first tool result, pathor1's with the
rollouts' prefill shared but TRL's own log-prob forward (what a micro-batch holding a view ran before the shared
prefix took tool results), and pathor1's without the tool (the same script: the call is written as text and
nothing runs -- the thumbnail-only step).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import stages  # noqa: E402,F401  (torchvision fix first)


def parse(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/rl_step.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=448, help="image side in pixels (448 -> 256 image tokens)")
    p.add_argument("--generations", type=int, default=8, help="G, completions per prompt")
    p.add_argument("--batch", type=int, default=2, help="prompts per step")
    p.add_argument("--completion", type=int, help="max completion tokens (default 8)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per trainer (after one warm-up step)")
    p.add_argument("--tiles", type=int, default=1,
                   help="images per prompt; > 1: that many tiles of a whole-slide image (corpora.slides), a new "
                        "random choice per prompt, each --image-size px")
    p.add_argument("--train", default="projector_llm", choices=["llm", "projector_llm", "all"],
                   help="which towers train (all: gradients flow into the vision tower)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="gradient checkpointing on in both trainers (the GPU configs' setting)")
    p.add_argument("--tools", action="store_true",
                   help="slide viewer rollouts on tiny Qwen3-VL (overview and views of --image-size px); "
                        "--completion defaults to 256 (the tool turn's tokens count)")
    a = p.parse_args(argv)
    a.completion = a.completion or (256 if a.tools else 8)
    return a


def make_data(folder: Path, size: int, n: int, tiles: int = 1):
    """n prompts, each with its own image (a real IHC tissue crop from scikit-image, shifted per prompt), or with
    ``tiles`` tiles of one slide (an Aperio SVS of the same tissue, read by corpora.slides)."""
    import numpy as np
    from datasets import Dataset
    from PIL import Image
    from skimage import data as skdata

    tissue = skdata.immunohistochemistry()  # 512 x 512: scaled up when a crop needs more
    if size > tissue.shape[0]:
        side = size + 64
        tissue = np.asarray(Image.fromarray(tissue).resize((side, side), Image.BICUBIC))
    rows = []
    for i in range(n):
        if tiles > 1:
            images = slide_tiles(folder, tissue, size, tiles, seed=i)
        else:
            y, x = (37 * i) % (tissue.shape[0] - size + 1), (53 * i) % (tissue.shape[1] - size + 1)
            images = [str(folder / f"img{i}.png")]
            Image.fromarray(tissue[y:y + size, x:x + size]).save(images[0])
        rows.append({"question": "Which stain pattern is present?", "options": ["nuclear", "membranous", "none"],
                     "answer": "A", "kind": "mcq", "solution": "<answer> A </answer>", "images": images})
    return Dataset.from_list(rows)


def slide_tiles(folder: Path, tissue, size: int, k: int, seed: int) -> list[str]:
    """``k`` tiles of ``size`` px from a slide of 4x4 tiles of ``tissue`` (written once), chosen at random."""
    from PIL import Image

    from corpora.slides.sampling import SlideSampling, slide_images
    from corpora.slides.synthetic import write_svs

    slide = folder / "slide.svs"
    if not slide.exists():
        import numpy as np

        write_svs(slide, np.asarray(Image.fromarray(tissue).resize((4 * size, 4 * size))), mpp=0.5, n_levels=2)
    sampling = SlideSampling(k=k, select="random", seed=seed, mpp=0.5, size=size, min_tissue=0.0,
                             cache_dir=str(folder / "tile_cache"))
    return slide_images(slide, sampling)


class StepTimer:
    def __init__(self):
        self.times, self._t = [], None

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _Cb(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.times.append(time.perf_counter() - timer._t)

        return _Cb()


def time_trainer(cls, folder, dataset, args_fn, rewards, train, script=False, share_forward=True, **extra):
    import torch

    from stages.model import ModelConfig, load_model
    from stages.checkpointing import TRAIN_POLICIES
    from stages.rl.training import pad_prompts_left

    freeze = dict(zip(("freeze_vision", "freeze_projector", "freeze_llm"), TRAIN_POLICIES[train]))
    model, processor = load_model(ModelConfig(name_or_path=str(folder), **freeze))
    if script:
        pad_prompts_left(processor)  # as stages.rl does (the tool runs only: the plain comparison stays as it was)
    torch.manual_seed(0)
    trainer = cls(model=model, reward_funcs=rewards, args=args_fn(), train_dataset=dataset,
                  processing_class=processor, **extra)
    if not share_forward:
        trainer.share_prefix = False  # the prefill stays shared; the log-prob forwards are TRL's
    if script:
        from tests.slide_tools import scripted

        scripted(trainer.model, processor.tokenizer)  # over the shared prefill's generate, if any
    timer = StepTimer()
    trainer.add_callback(timer.callback())
    trainer.train()
    return timer.times[1:], trainer  # the first step pays one-off costs


def tools_main(a) -> int:
    """--tools: step time of tool rollouts (TRL, pathor1 shared / unshared) and of the same script without the tool."""
    from dataclasses import replace

    import torch
    from trl import GRPOTrainer

    from stages.model import build_tiny
    from stages.rl.config import RLConfig
    from stages.rl.rewards import build_rewards
    from stages.rl.tools import ToolsConfig
    from stages.rl.training import grpo_args, prompt_dataset, tool_environment, tool_questions
    from stages.rl.trainer import PathoGRPOTrainer
    from tests.slide_tools import slide_qa_file

    work = Path(tempfile.mkdtemp(prefix="rl_step_tools_"))
    folder = build_tiny("qwen3_vl", work / "tiny", image_size=a.image_size)
    (work / "data").mkdir()
    data = slide_qa_file(work / "data", n=a.batch * (a.steps + 1))
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    data.write_text("".join(json.dumps({**r, "question": f"{r['question']} (case {i})"}) + "\n"
                            for i, r in enumerate(rows)))  # one group per prompt, as in real data
    tools = ToolsConfig(env="slide_view", budget=2, view_size=a.image_size, overview_size=a.image_size)
    cfg = RLConfig(algorithm="grpo", beta=0.0, init=str(folder), data=str(data), num_generations=a.generations,
                   batch_size=a.batch, max_completion_length=a.completion, max_steps=a.steps + 1, lr=1e-5,
                   train=a.train, gradient_checkpointing=a.gradient_checkpointing, rewards=["accuracy", "view_cost"],
                   tools=tools).resolved()
    plain = replace(cfg, tools=ToolsConfig(overview_size=a.image_size), rewards=["accuracy"], reward_weights=[1.0])
    dataset = prompt_dataset(tool_questions(cfg, data), "cot")
    runs = {}
    for name, cls, c, extra in (
            ("trl_tools", GRPOTrainer, cfg, {}),
            ("pathor1_tools", PathoGRPOTrainer, cfg, {"share_vision": True}),
            ("pathor1_tools_forward_unshared", PathoGRPOTrainer, cfg, {"share_vision": True, "share_forward": False}),
            ("pathor1_no_tools", PathoGRPOTrainer, plain, {"share_vision": True})):
        env = tool_environment(c, work / "logs" / name)
        times, trainer = time_trainer(cls, folder, dataset, lambda c=c: grpo_args(c, work / "out"),
                                      build_rewards(c.resolved_rewards()), a.train, script=True,
                                      **extra, **({"environment_factory": env} if env else {}))
        logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
        stats = getattr(trainer, "prefix_stats", None)
        runs[name] = {"step_s": round(statistics.median(times), 4), "steps_s": [round(t, 4) for t in times],
                      "completion_tokens": round(statistics.mean(h["completions/mean_length"] for h in logs), 1),
                      "tool_calls_per_rollout": round(statistics.mean(h.get("tools/call_frequency", 0.0)
                                                                      for h in logs), 3),
                      **({"shared_forwards": stats.shared_forwards, "logprob_forwards": stats.forwards,
                          "forward_token_saving": stats.as_metrics()["prefix_share/token_saving"]} if stats else {})}
        print(f"{name:30s} {runs[name]['step_s']:.3f} s  (steps {runs[name]['steps_s']})")
    step = {k: v["step_s"] for k, v in runs.items()}
    print(json.dumps({
        "benchmark": "rl_step", "tools": "slide_view", "device": "cuda" if torch.cuda.is_available() else "cpu",
        "image_size": a.image_size, "num_generations": a.generations, "batch": a.batch,
        "max_completion_length": a.completion, "train": a.train, "gradient_checkpointing": a.gradient_checkpointing,
        "runs": runs,
        "speedup": round(step["trl_tools"] / step["pathor1_tools"], 3),  # TRL / pathor1, both with the tool
        "share_gain": round(step["pathor1_tools_forward_unshared"] / step["pathor1_tools"], 3),  # fallback / shared
        "tool_cost": round(step["pathor1_tools"] / step["pathor1_no_tools"], 3),  # with the tool / thumbnail only
    }))
    return 0


def main(argv=None) -> int:
    a = parse(argv)
    if a.tools:
        return tools_main(a)
    import torch
    from trl import GRPOTrainer

    from stages.model import build_tiny
    from stages.rl.config import RLConfig
    from stages.rl.rewards import build_rewards
    from stages.rl.training import grpo_args, prompt_dataset
    from stages.rl.trainer import PathoGRPOTrainer
    from stages.rl.prefill_share import prefill_stats
    from stages.rl.vision_share import sharing_stats

    work = Path(tempfile.mkdtemp(prefix="rl_step_"))
    folder = build_tiny("qwen2_5_vl", work / "tiny", image_size=a.image_size)
    n_prompts = a.batch * (a.steps + 1)
    dataset = prompt_dataset(make_data(work, a.image_size, n_prompts, a.tiles), "cot")
    cfg = RLConfig(algorithm="grpo", beta=0.0, init=str(folder), num_generations=a.generations, batch_size=a.batch,
                   max_completion_length=a.completion, max_steps=a.steps + 1, lr=1e-5, train=a.train,
                   gradient_checkpointing=a.gradient_checkpointing).resolved()
    rewards = build_rewards(cfg.rewards, template="cot")
    args_fn = lambda: grpo_args(cfg, work / "out")  # noqa: E731  (fresh args: TRL mutates them)
    processor_tokens = a.image_size // 28 * (a.image_size // 28)

    trl_times, _ = time_trainer(GRPOTrainer, folder, dataset, args_fn, rewards, a.train)
    ours_times, ours = time_trainer(PathoGRPOTrainer, folder, dataset, args_fn, rewards, a.train, share_vision=True)
    trl_s, ours_s = statistics.median(trl_times), statistics.median(ours_times)
    stats = sharing_stats(ours.model)
    forward_saving = ours.prefix_stats.as_metrics()["prefix_share/token_saving"]
    prefill = prefill_stats(ours.model)
    prefill_saving = prefill.as_metrics()["prefix_share/token_saving"] if prefill else 0.0
    print(f"TRL GRPOTrainer step:     {trl_s:.3f} s  (steps {['%.2f' % t for t in trl_times]})")
    print(f"pathor1 PathoGRPOTrainer: {ours_s:.3f} s  (steps {['%.2f' % t for t in ours_times]})")
    print(f"vision tower: {stats.get('images_seen')} images handed in, {stats.get('images_encoded')} encoded")
    print(f"language model tokens not run: {forward_saving:.1%} of the log-prob forwards, {prefill_saving:.1%} of prefill")
    print(json.dumps({
        "benchmark": "rl_step", "device": "cuda" if torch.cuda.is_available() else "cpu",
        "image_tokens_per_prompt": processor_tokens * a.tiles, "tiles": a.tiles, "num_generations": a.generations,
        "batch": a.batch, "max_completion_length": a.completion, "train": a.train,
        "gradient_checkpointing": a.gradient_checkpointing,
        "trl_step_s": round(trl_s, 4), "pathor1_step_s": round(ours_s, 4),
        "trl_steps_s": [round(t, 4) for t in trl_times], "pathor1_steps_s": [round(t, 4) for t in ours_times],
        "images_seen": stats.get("images_seen"), "images_encoded": stats.get("images_encoded"),
        "forward_token_saving": forward_saving, "prefill_token_saving": prefill_saving,
        # log-prob forwards that ran shared / all of them (with checkpointing too, the trained forward shares)
        "shared_forwards": ours.prefix_stats.shared_forwards, "logprob_forwards": ours.prefix_stats.forwards,
        "speedup": round(trl_s / ours_s, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
