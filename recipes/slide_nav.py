"""Learning to look (issue 26): SFT on the looking exercises, then on navigation traces, then RL with the slide
viewer, evaluated against the thumbnail-only model on held-out slides.

    python -m recipes.slide_nav                                   # the navigation demo, tiny Qwen3-VL, CPU
    python -m recipes.slide_nav rl.max_steps=40 demo.n_eval=200   # any field, dotted
    python -m recipes.slide_nav data=MY_NAV_CORPUS                # a folder in the navdemo layout

The corpus (corpora.slides.navdemo) holds slides whose answer shows only at 0.25 µm/px in one darker focus. Stage
``look`` (an SFT run named ``<run>_look``) trains on its look.jsonl: each trace's two decisions (where to zoom, how
the cells lie in the view) as short records without the tools section, where the tiny model learns them; stage
``sft`` then on its sft.jsonl (the traces, overview -> zoom on the focus -> answer, a tool-calling trace kind of
recipes.sft, each beside the same question without tools, so the thumbnail-only baseline answers in format), which
carries both decisions into the tools context (corpora.slides.navdemo.looking_records says what was measured);
rl.jsonl holds the RL questions (stages.rl with tools.env=slide_view), eval.jsonl the held-out slides. ``viewer``
is the one set of viewer limits the traces, RL and evaluation share. The SFT and RL checkpoints are evaluated with
the viewer (views_per_question before and after RL) and the RL checkpoint also thumbnail-only (--view-budget 0: the
same overview and prompt, no tools); ``comparisons`` hold tools vs thumbnail and RL vs SFT (paired 95 % CI, McNemar
p). The last printed line is the run's metrics.json.
"""
from __future__ import annotations

import resource
from dataclasses import dataclass, field, replace
from pathlib import Path

from corpora.slides.navdemo import OVERVIEW, VERSION, build_nav_demo
from corpora.slides.viewer import ViewerSettings
from evaluation.config import Decoding, EvalConfig
from stages.cli import run_cli
from stages.registry import home, reports_dir
from stages.rl.config import RLConfig
from stages.rl.tools import ToolsConfig
from stages.sft import SFTConfig

from recipes.launch import LaunchConfig, LaunchError, entry_id, forget_driver_ranks, plan_launch, run_stage
from recipes.pipeline import Timer, compare_stages, peak_memory_gib, recipe_eval, stage_config, write_metrics

STAGES = ("look", "sft", "rl")
# Completion tokens (all turns) in RL and evaluation: with the tiny tokenizer a call is ~50 tokens, a tool result ~65
# (its view included), the answer ~40; 320 holds two full views, so a second view is never cut inside its image
# tokens (TRL then drops every image of the batch).
MAX_TOKENS = 320


@dataclass
class NavDemoConfig:
    n_train: int = field(default=160, metadata={"help": "Training slides: one SFT trace and one RL question each."})
    n_eval: int = field(default=128, metadata={"help": "Held-out slides (the paired CI's n)."})
    seed: int = field(default=0, metadata={"help": "Seed of the corpus."})
    looks: int = field(default=4, metadata={"help": "Copies per training slide of the two looking exercises in "
                                                    "look.jsonl (overview -> zoom call, overview + view -> answer)."})


def _viewer() -> ViewerSettings:
    # A 64 px view at 0.25 µm/px covers the 64 px focus (4 image tokens with the tiny processor); a 192 px overview
    # still shows the darker focus; 2 views: the right one, and one retry.
    return ViewerSettings(budget=2, view_size=64, overview_size=192, max_turns=2)


def _sft(epochs: float = 3) -> SFTConfig:
    # 192 x 128 overviews need more than the tiny processor's 112^2 pixels (it would halve them: the focus would be
    # ~4 px); the processor saved with the checkpoint keeps the cap for RL and evaluation. Lengths grouped in
    # buckets of 512 tokens: traces (~1,150) batch together and the short records (~300-450) together, in random
    # order inside each; exact grouping with centred image tokens lost where-to-zoom (stages/centering.py).
    sft = SFTConfig(lr=1e-3, warmup_ratio=0.05, epochs=epochs, batch_size=8, train="all", group_by_length=True,
                    length_bucket=512, save_every=0, keep_last=1, center_image_features=True)
    sft.model.max_pixels = 192 * 128
    return sft


def _rl() -> RLConfig:
    return RLConfig(algorithm="dapo", num_generations=4, batch_size=4, max_completion_length=MAX_TOKENS, max_steps=20,
                    lr=5e-5, temperature=0.7, max_num_gen_batches=2, train="all",
                    rewards=["format", "accuracy", "view_cost"], reward_weights=[0.1, 0.9, 0.02],
                    tools=ToolsConfig(env="slide_view"))  # its limits come from the recipe's viewer


def _eval() -> EvalConfig:
    # max_new_tokens counts every turn: the same budget as RL's completions
    return recipe_eval(batch_size=32, suite="qa", tools="slide_view", decoding=Decoding(max_new_tokens=MAX_TOKENS))


@dataclass
class SlideNavConfig:
    """SFT on navigation traces -> RL with the viewer -> tools vs thumbnail on held-out slides."""

    run: str = field(default="slide_nav", metadata={"help": "Run name of every stage (registry <stage>/<run>)."})
    base: str = field(default="tiny:qwen3_vl", metadata={"help": "Base VLM; its chat template must render tool calls "
                                                                 "(Qwen3-VL)."})
    data: str = field(default="", metadata={"help": "Corpus folder in the navdemo layout (sft.jsonl, rl.jsonl, "
                                                    "eval.jsonl); empty = build the navigation demo."})
    demo: NavDemoConfig = field(default_factory=NavDemoConfig, metadata={"help": "Navigation demo sizes."})
    viewer: ViewerSettings = field(default_factory=_viewer, metadata={
        "help": "Viewer limits of the traces, RL (copied into rl.tools) and evaluation: budget, view_size, "
                f"overview_size (<= {OVERVIEW} on the demo), max_mpp, max_turns."})
    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata={"help": "Stages to run: look, sft, rl."})
    device: str = field(default="cpu", metadata={"help": "auto|cuda|cpu for every stage."})
    look: SFTConfig = field(default_factory=lambda: _sft(epochs=2), metadata={
        "help": "SFT on look.jsonl (the looking exercises + thumbnail records), run <run>_look."})
    sft: SFTConfig = field(default_factory=_sft, metadata={
        "help": "SFT on sft.jsonl (traces + thumbnail records + one copy of the looking exercises)."})
    rl: RLConfig = field(default_factory=_rl, metadata={
        "help": "RL on rl.jsonl; rl.tools takes the viewer's limits (rl.tools.log_views stays its own)."})
    eval: EvalConfig = field(default_factory=_eval, metadata={"help": "Evaluation (suite qa on eval.jsonl)."})
    launch: LaunchConfig = field(default_factory=LaunchConfig, metadata={"help": "How each stage process starts."})

    def __post_init__(self):
        for name in ("demo", "viewer"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, {"demo": NavDemoConfig, "viewer": ViewerSettings}[name](**value))
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be one of auto|cuda|cpu, got {self.device!r}")
        if not self.stages or [s for s in self.stages if s not in STAGES]:
            raise ValueError(f"stages must be a non-empty list of {list(STAGES)}, got {self.stages}")
        if self.demo.looks < 0:
            raise ValueError(f"demo.looks must be >= 0, got {self.demo.looks}")
        if min(self.demo.n_train, self.demo.n_eval) < 1:
            raise ValueError(f"demo.n_train and demo.n_eval must be >= 1, got {self.demo.n_train}, {self.demo.n_eval}")
        if self.viewer.budget < 1:
            raise ValueError(f"viewer.budget must be >= 1 (budget 0 is the thumbnail baseline the recipe adds itself), "
                             f"got {self.viewer.budget}")
        if not self.data and self.viewer.overview_size > OVERVIEW:
            raise ValueError(f"viewer.overview_size must be <= {OVERVIEW} on the navigation demo (a larger overview "
                             f"shows the answer), got {self.viewer.overview_size}")


def corpus(cfg: SlideNavConfig) -> Path:
    """``data``, or the navigation demo for these sizes and viewer (built once under the home, then reused)."""
    if cfg.data:
        return Path(cfg.data)
    d, v = cfg.demo, cfg.viewer
    out = home() / "corpora" / (f"navdemo{VERSION}-s{d.seed}-{d.n_train}x{d.n_eval}-l{d.looks}-b{v.budget}-v{v.view_size}"
                                f"-o{v.overview_size}")
    if not (out / "navdemo.json").exists():  # written last: a half-built corpus is built again
        build_nav_demo(out, n_train=d.n_train, n_eval=d.n_eval, seed=d.seed, view_size=v.view_size,
                       budget=v.budget, overview_size=v.overview_size, looks=d.looks)
    return out


def _cpu_seconds() -> float:
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def evaluate(cfg: SlideNavConfig, checkpoints: dict[str, str], data: Path, out_dir: Path) -> dict:
    """Every checkpoint with the viewer, the last one also thumbnail-only; accuracies, views and comparisons."""
    from evaluation.run import evaluate as run_eval

    kwargs = {**cfg.eval.evaluate_kwargs(), "tools": "slide_view", "view_size": cfg.viewer.view_size,
              "overview_size": cfg.viewer.overview_size}
    runs = [(f"{name}_tools", path, cfg.viewer.budget) for name, path in checkpoints.items()]
    last_name, last = list(checkpoints.items())[-1]
    runs.append((f"{last_name}_thumbnail", last, 0))
    table = {}
    for name, path, budget in runs:
        m = run_eval(path, "qa", data=str(data), out=out_dir / "eval" / name, **{**kwargs, "view_budget": budget})
        o = m["overall"]
        table[name] = {"checkpoint": path, "view_budget": budget, "accuracy": o["accuracy"], "ci95": o["ci95"],
                       "n": o["n"], "correct": o["correct"], "format_rate": o["format_rate"],
                       "views_per_question": m["views_per_question"],
                       "questions_with_views": m["questions_with_views"]}
        print(f"eval {name:16s} accuracy {o['accuracy']:.3f}  95% CI [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}]  "
              f"n={o['n']}  views/question {m['views_per_question']:.2f}", flush=True)
    # tools vs thumbnail of the final model, then the final model against the one before it (RL vs SFT)
    order = [f"{last_name}_thumbnail", f"{last_name}_tools"]
    comparisons = compare_stages(order, out_dir / "eval")
    if len(checkpoints) > 1:
        before = list(checkpoints)[-2]
        comparisons.update(compare_stages([f"{before}_tools", f"{last_name}_tools"], out_dir / "eval"))
    return {"evaluation": table, "comparisons": comparisons,
            "views_per_question": {name.removesuffix("_tools"): e["views_per_question"]
                                   for name, e in table.items() if name.endswith("_tools")}}


def run(cfg: SlideNavConfig) -> Path:
    timer, cpu0 = Timer(), _cpu_seconds()
    out_dir = reports_dir("slide_nav", cfg.run)
    plan = plan_launch(cfg.launch)
    forget_driver_ranks()  # the evaluation below is this process alone
    t = timer.t0
    data = corpus(cfg)
    t = timer.mark("corpus", t)
    tools = replace(cfg.rl.tools, env="slide_view", **{k: getattr(cfg.viewer, k) for k in
                                                       ("budget", "view_size", "max_mpp", "overview_size", "max_turns")})
    parent, checkpoints = cfg.base, {}
    steps = (("look", "sft", f"{cfg.run}_look", cfg.look, data / "look.jsonl"),
             ("sft", "sft", cfg.run, cfg.sft, data / "sft.jsonl"),
             ("rl", "rl", cfg.run, replace(cfg.rl, tools=tools), data / "rl.jsonl"))
    for name, stage, run_name, stage_cfg, file in steps:
        if name not in cfg.stages:
            continue
        stage_cfg = stage_config(stage_cfg, run=run_name, data=file, init=parent, device=cfg.device)
        folder = run_stage(plan, stage=stage, module=f"recipes.{stage}", cfg=stage_cfg, data=Path(stage_cfg.data),
                           config_dir=out_dir / "launch")
        parent = entry_id(folder)
        if name != "look" or cfg.stages == ["look"]:  # evaluated: the models the comparisons are about
            checkpoints[name] = str(folder)
        t = timer.mark(name, t)
    metrics: dict = {"run": cfg.run, "corpus": str(data), "checkpoints": checkpoints}
    print("== evaluation", flush=True)
    metrics.update(evaluate(cfg, checkpoints, data / "eval.jsonl", out_dir))
    timer.mark("evaluation", t)
    metrics.update(stage_seconds=timer.marks, wall_seconds=timer.total,
                   cpu_seconds=round(_cpu_seconds() - cpu0, 1), peak_memory_gib=round(peak_memory_gib(), 2))
    return write_metrics(out_dir, metrics, cfg)


def main(argv: list[str] | None = None) -> int:
    # config, home, packages, then the stages; a known error is one line and exit 2 (stages.cli)
    return run_cli(SlideNavConfig, run, "python -m recipes.slide_nav", argv, extra=(LaunchError,))


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())
