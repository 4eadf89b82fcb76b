"""``EvalConfig``: every setting of an evaluation, typed, loaded like every stage's config.

``python -m evaluation.run --config eval.yaml suite=pathmmu decoding.max_new_tokens=512`` (YAML, then
``key=value``; ``--help`` lists every field) -- and the familiar flags (``--suite pathmmu --max-new-tokens 512``)
are the same fields under other names (``FLAGS``). ``evaluation.run``, ``evaluation.table``,
``evaluation.matrix`` and the recipes all build their evaluations from this one class, so a default is set in
one place.

Foundation-light: imports only the standard library, ``stages.config`` and the ``Decoding`` dataclass.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Literal

from evaluation.generate import Decoding


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class JudgeSettings:
    """Who scores open answers (default: exact match + token F1)."""

    spec: str = _f("", "An OpenAI-compatible endpoint URL (the RL judge reward's implementation), or a dotted "
                       "path of judge(question, prediction, reference) -> float; empty = no judge.")
    model: str = _f("", "Model name the judge endpoint serves (with a URL).")


@dataclass
class EvalConfig:
    """One checkpoint on one benchmark suite: data, prompt profile, decoding, judge, hardware."""

    model: str = _f("", "Registry ref (rl:latest, sft:<run>/<step>) or a model folder (evaluation.run).")
    suite: str = _f("demo-mcq", "Benchmark suite (python -m evaluation.run --help lists them).")
    data: str = _f("", "The suite's release folder or file; empty = --data-root layout or its default place.")
    data_root: str = _f("", "Folder holding each suite's release in its usual layout (README: suites).")
    split: str = _f("", "Split to evaluate, or all; empty = the split papers report.")
    profile: str = _f("pathor1", "Prompt wording, option formatting and answer extraction: pathor1 | vlmevalkit "
                                 "| medvlm-r1 | med-r1 (README: profiles).")
    template: str = _f("", "Prompt template (pathor1 profile); empty = the checkpoint's training template, else cot.")
    limit: int | None = _f(None, "Evaluate only the first N questions.")
    batch_size: int = _f(8, "Questions generated per batch.")
    decoding: Decoding = field(default_factory=Decoding, metadata={"help": "How answers are generated."})
    judge: JudgeSettings = field(default_factory=JudgeSettings, metadata={"help": "LLM judge of open answers."})
    backend: Literal["hf", "vllm"] = _f("hf", "Generate with transformers or vLLM (GPU).")
    device: str = _f("", "cuda / cpu; empty = cuda when available (one GPU per rank).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f("auto", "Model dtype (auto: bf16 on CUDA, fp32 on CPU).")
    image_root: str = _f("", "Folder the data's relative image paths start from (default: the release's).")
    subset_by: Literal["modality", "question_type"] = _f("modality", "OmniMedVQA subset field.")
    manifest: str = _f("", "manifest.json of an earlier evaluation: evaluate exactly its questions.")
    progress: bool = _f(True, "Show progress bars.")
    out: str = _f("", "Output folder (evaluation.run; default $PATHOR1_HOME/reports/<checkpoint>/<suite>).")
    export: Literal["", "vlmeval"] = _f("", "Also write the predictions in this toolkit's format.")
    tools: str = _f("", "slide_view: answer slide questions (suite qa, records naming a slide) by navigating each "
                        "slide with the viewer: zoom(x, y, mpp), tissue_regions(); empty = off.")
    view_budget: int = _f(4, "Views per question with tools (0: thumbnail only).")
    view_size: int = _f(224, "Side of each view in pixels, with tools (as the model was trained: RL tools.view_size).")
    overview_size: int = _f(448, "Longest side of the slide overview, the prompt's image, with tools (RL "
                                 "tools.overview_size).")

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or null, got {self.limit}")
        from evaluation.profiles import PROFILES

        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; known: {', '.join(PROFILES)}")
        if self.tools:  # here, not where the viewer loads: a misspelt --tools is refused before the model
            check_tools(self.tools, self.view_budget)

    def evaluate_kwargs(self) -> dict:
        """Keyword arguments of ``evaluation.run.evaluate`` (and ``Evaluation``) for everything but model/suite/data."""
        d = self.decoding
        return dict(limit=self.limit, batch_size=self.batch_size, template=self.template or None,
                    max_new_tokens=d.max_new_tokens, samples=d.samples, temperature=d.temperature, top_p=d.top_p,
                    top_k=d.top_k, seed=d.seed, judge=self.judge.spec or None, judge_model=self.judge.model or None,
                    device=self.device or None, dtype=self.dtype, progress=self.progress,
                    image_root=self.image_root or None, split=self.split or None, subset_by=self.subset_by,
                    backend=self.backend, manifest=self.manifest or None, data_root=self.data_root or None,
                    profile=self.profile, tools=self.tools or None, view_budget=self.view_budget,
                    view_size=self.view_size, overview_size=self.overview_size)


# The command-line flags evaluation has always taken, as the EvalConfig fields they set.
FLAGS = {
    "--model": "model", "--suite": "suite", "--data": "data", "--data-root": "data_root", "--split": "split",
    "--profile": "profile", "--template": "template", "--limit": "limit", "--batch-size": "batch_size",
    "--max-new-tokens": "decoding.max_new_tokens", "--samples": "decoding.samples",
    "--temperature": "decoding.temperature", "--top-p": "decoding.top_p", "--top-k": "decoding.top_k",
    "--seed": "decoding.seed", "--judge": "judge.spec", "--judge-model": "judge.model", "--backend": "backend",
    "--device": "device", "--dtype": "dtype", "--image-root": "image_root", "--subset-by": "subset_by",
    "--manifest": "manifest", "--out": "out", "--export": "export", "--tools": "tools",
    "--view-budget": "view_budget", "--view-size": "view_size", "--overview-size": "overview_size",
}
SWITCHES = {"--no-progress": "progress=false"}


def flags_to_overrides(argv: list[str], flags: dict[str, str] = FLAGS) -> list[str]:
    """``--max-new-tokens 64`` / ``--max-new-tokens=64`` -> ``decoding.max_new_tokens=64``; everything else
    (``--config FILE``, ``key=value``, ``--help``) passes through for ``stages.config.load_config``."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if arg in SWITCHES:
            out.append(SWITCHES[arg])
        elif name in flags and eq:
            out.append(f"{flags[name]}={value}")
        elif arg in flags:
            if i + 1 >= len(argv):
                from stages.config import ConfigError

                raise ConfigError(f"{arg} expects a value: {arg} VALUE")
            out.append(f"{flags[arg]}={argv[i + 1]}")
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def flag_help(flags: dict[str, str] = FLAGS) -> str:
    names = sorted(flags.items(), key=lambda kv: kv[1])
    return "flags (the same fields):\n" + "\n".join(f"  {flag} VALUE  = {field_}=VALUE" for flag, field_ in names) + \
        "\n  --no-progress  = progress=false\n"


def parse_command(parser: argparse.ArgumentParser, argv: list[str] | None, *, suites: bool = False):
    """A command's own options (``parser``, e.g. table's ``--suites``) plus an EvalConfig from the rest:
    ``(args, cfg)``, or an exit code (``--help`` printed: 0; a bad option or config value, one line: 2)."""
    from stages.config import ConfigError, help_text

    argv = list(sys.argv[1:] if argv is None else argv)
    parser.allow_abbrev = False  # an EvalConfig flag must never be taken for an abbreviation of the command's own
    if any(a in ("-h", "--help") for a in argv):
        sys.stdout.write(parser.format_help() + "\n" + help_text(EvalConfig, parser.prog) + "\n" + flag_help())
        if suites:
            from evaluation.suites import SUITES

            sys.stdout.write("suites: " + ", ".join(SUITES) + "\n")
        return 0
    try:
        args, rest = parser.parse_known_args(argv)
        return args, load_config(rest, prog=parser.prog)
    except (ConfigError, argparse.ArgumentError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def load_config(argv: list[str], *, prog: str) -> EvalConfig:
    from stages.config import load_config as load

    return load(EvalConfig, flags_to_overrides(argv), prog=prog)


TOOLS = ("slide_view",)


def check_tools(tools: str, view_budget: int) -> None:
    """``--tools`` names a known tool set and ``--view-budget`` is >= 0 (ValueError otherwise)."""
    if tools not in TOOLS:
        raise ValueError(f"--tools: expected one of {', '.join(TOOLS)}, found {tools!r}")
    if view_budget < 0:
        raise ValueError(f"--view-budget: expected >= 0 (0 = thumbnail only), found {view_budget}")
