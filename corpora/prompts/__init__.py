"""Prompt templates as files: one source for what SFT trains on, what RL samples from and what
evaluation asks. Each `<name>.jinja` defines two macros, `prompt(question, options)` (the user text)
and `response(reasoning, answer)` (the assistant target); `corpora.grading.format_ok` checks the
matching response format.
"""
from __future__ import annotations

import re
import string
from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent
DRAFT_WORDS = 5
# Words a terse draft can drop without losing the finding (Chain of Draft keeps the content words).
_FILLER = frozenset(
    "a an the is are was were be been of with and this these that which there in on by to it its as "
    "for so thus therefore shows show showing seen present image".split()
)


def _draft(reasoning: str) -> str:
    """Compress reasoning into Chain-of-Draft steps: each sentence -> at most DRAFT_WORDS content words."""
    steps = []
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", reasoning.strip()):
        words = [w for w in sentence.strip(" .!?").split() if w.lower().strip(",;:") not in _FILLER]
        if words:
            steps.append(" ".join(w.strip(",;:") for w in words[:DRAFT_WORDS]))
    return "; ".join(steps)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly instead of rendering ""
        keep_trailing_newline=False,
        autoescape=False,
    )
    env.filters["draft"] = _draft
    env.globals["letters"] = string.ascii_uppercase
    return env


def template_names() -> list[str]:
    """The shipped templates (files `corpora/prompts/<name>.jinja`, partials start with `_`)."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja") if not p.stem.startswith("_"))


@lru_cache(maxsize=None)
def _module(template: str):
    if template not in template_names():
        raise ValueError(f"unknown prompt template {template!r}; available: {', '.join(template_names())}")
    return _environment().get_template(f"{template}.jinja").module


def render_prompt(template: str, question: str, options=()) -> str:
    """The user text for `question` with its `options` (listed as `A. …` lines)."""
    return str(_module(template).prompt(question, list(options))).strip()


def render_response(template: str, reasoning: str, answer: str) -> str:
    """The assistant target, e.g. `<think>…</think><answer>C</answer>` for `cot`."""
    return str(_module(template).response(reasoning, answer)).strip()


def response_format(template: str) -> str:
    """The response format a template asks for: its ``{% set response_format = "cot" %}`` line, else its name.

    Several prompts can share one answer format (the MedVLM-R1 wording answers like ``cot``), so grading
    checks the format, not the prompt's name.
    """
    if template not in template_names():
        return template  # unknown names reach format_ok, which refuses them with the list of formats
    return getattr(_module(template), "response_format", template)
