"""Multi-turn RL with tools that return images, through TRL 1.16's public seam.

``GRPOTrainer(environment_factory=...)`` makes one environment per rollout, calls its ``reset(**row)`` and exposes
its public methods as tools; TRL's tool loop (``_tool_call_loop``) parses each assistant turn's tool calls with the
tokenizer's response template, runs them, appends the results as ``tool`` messages -- a list result as content
blocks, its images collected for the VLM -- and generates the next turn, up to ``max_tool_calling_iterations``. The
tool-result tokens are masked out of the loss (``tool_mask``); the images go into the policy forward.

What this module adds (TRL has none of it): the ``tools.*`` config fields, the slide-viewing environment
(``corpora.slides.viewer.SlideViewer``) as a factory, a view-cost reward in TRL's reward signature, and a one-line refusal of a chat template that renders no tools
(Qwen2-VL / Qwen2.5-VL: their released templates have no tool section; Qwen3-VL's has, and TRL parses its calls).

Compatibility with pathor1's speed paths (tests/stages/test_rl_tools.py, tests/reliability/test_tools_ddp.py,
README "Slide navigation"): dynamic sampling works unchanged (it calls TRL's generation + scoring, tool loop
included), also on 2 gloo ranks; the shared prefix shares each group's prompt up to the first tool result and
encodes each row's views with its completion (``stages.rl.prefix_share``: exact vs TRL's forward, tested). The
vLLM path: TRL's tool loop generates every turn with the same ``_generate_single_turn``, which hands vLLM the
row's ids (one run of image tokens per image) with the overview and the views as its images, so the tools need
nothing of their own there (tested against a stand-in engine; vLLM itself needs a GPU).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from corpora.slides.viewer import ViewerSettings

ENVIRONMENTS = ("", "slide_view")


def _f(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class ToolsConfig(ViewerSettings):
    """The ``tools.*`` fields of RL: which environment the policy may call, and its limits (corpora's
    ViewerSettings: budget, view_size, max_mpp, overview_size, max_turns, which evaluation shares)."""

    env: str = _f("", "Tool environment: '' (none) or slide_view (corpora.slides.viewer: zoom(x, y, mpp), "
                      "tissue_regions()); the data's records then name a `slide`.")
    log_views: bool = _f(True, "Append every view to logs/<stage>/<run>/views-rank<R>.jsonl.")

    def __post_init__(self):
        if self.env not in ENVIRONMENTS:
            raise ValueError(f"tools.env must be one of {', '.join(repr(e) for e in ENVIRONMENTS)}, got {self.env!r}")
        try:
            super().__post_init__()
        except ValueError as e:
            raise ValueError(f"tools: {e}") from None

    @property
    def enabled(self) -> bool:
        return bool(self.env)

    def turns(self) -> int | None:
        """TRL's max_tool_calling_iterations: None (TRL's default, no tools) when no environment is set."""
        return super().turns() if self.enabled else None


def environment_factory(cfg: ToolsConfig, log_path=None):
    """What ``GRPOTrainer(environment_factory=...)`` takes: a no-argument callable making one environment."""
    if cfg.env != "slide_view":
        raise ValueError(f"no tool environment {cfg.env!r}")
    return functools.partial(cfg.viewer, log_path=log_path)


def view_log_path(logs_dir, rank: int) -> Path:
    """One views file per rank: appends from several processes never interleave inside a line."""
    return Path(logs_dir) / f"views-rank{rank}.jsonl"


class ViewCountReward:
    """Minus the number of views each rollout took (``environments[i].views``), so a positive weight is the cost
    per view (``rewards=[..., view_cost] reward_weights=[..., 0.05]``). None (not scored) without an environment."""

    def __init__(self):
        self.__name__ = "view_cost"

    def __call__(self, completions, environments=None, **columns) -> list[float | None]:
        if environments is None:
            return [None] * len(completions)
        return [-float(len(getattr(env, "views", ()))) for env in environments]


def check_tool_template(processor, where: str = "init") -> None:
    """Refuse, in one line, a processor whose chat template cannot render tool calls (TRL would raise later).

    Qwen3-VL's template renders tools and TRL parses its tool calls; Qwen2-VL's and Qwen2.5-VL's templates (TRL's
    qwen2_5_vl.jinja, byte-identical to the released ones) render no tools at all, so a tool call could never
    reach the prompt the model is trained on."""
    from trl.chat_template_utils import supports_tool_calling

    from stages.config import ConfigError  # the CLI boundary's one line and exit 2, not a traceback

    if not supports_tool_calling(processor):
        raise ConfigError(f"{where}: expected a chat template that renders tool calls for tools.env, found one that "
                         "does not (Qwen2-VL / Qwen2.5-VL ship none); use a Qwen3-VL model (init=tiny:qwen3_vl or a "
                         "Qwen3-VL checkpoint)")
