"""Reward functions in TRL's signature `f(completions, **dataset_columns) -> list[float | None]`.

Every correctness judgement goes through `corpora.grading` -- the scorer evaluation uses -- so the policy
is rewarded for exactly what it is later measured on. Completions arrive as strings or as chat message
lists (`[{"role": "assistant", "content": ...}]`); ground truth comes from the `answer` / `kind` /
`options` columns of a `qa` dataset when present, else from the R1-V style `solution` column.
"""
from __future__ import annotations

import importlib
import logging
from typing import Callable, Sequence

from trl.rewards import get_soft_overlong_punishment

from corpora.grading import answer_follows_reasoning, completion_text, extract_answer, format_ok, grade

logger = logging.getLogger(__name__)
RewardFn = Callable[..., list]
BUILTIN = ("format", "accuracy", "consistency", "length_aware_accuracy", "soft_overlong", "judge", "grounding",
           "view_cost")


def _column(columns: dict, name: str, n: int) -> list:
    value = columns.get(name)
    return list(value) if value is not None else [None] * n


def _reference(i, answers, kinds, options, solutions) -> tuple[str, str, tuple]:
    """(answer, kind, options) for sample i; from `solution` alone the kind is read off the answer's shape."""
    opts = tuple(options[i] or ())
    if answers[i] is not None and kinds[i]:
        return str(answers[i]), str(kinds[i]), opts
    solution = solutions[i] if solutions[i] is not None else answers[i]
    if solution is None:
        raise ValueError("accuracy reward needs a `solution` or `answer` column in the dataset")
    answer = extract_answer(str(solution)) or str(solution).strip()
    if kinds[i]:
        return answer, str(kinds[i]), opts
    if opts or (len(answer) == 1 and answer.isalpha()):
        return answer, "mcq", opts
    if answer.lower() in ("yes", "no"):
        return answer, "yesno", opts
    return answer, "open", opts


def _references(columns: dict, n: int):
    """(answer, kind, options) for each of the n completions, from the dataset columns TRL passes."""
    answers, kinds = _column(columns, "answer", n), _column(columns, "kind", n)
    options, solutions = _column(columns, "options", n), _column(columns, "solution", n)
    return [_reference(i, answers, kinds, options, solutions) for i in range(n)]


def _grades(completions, template: str, columns: dict):
    for completion, (answer, kind, opts) in zip(completions, _references(columns, len(completions))):
        yield grade(completion_text(completion), answer, kind, opts, template=template)


class FormatReward:
    """1.0 when the completion follows the response format of the prompt template, else 0.0."""

    def __init__(self, template: str = "cot"):
        self.template = template
        self.__name__ = "format_reward"

    def __call__(self, completions, **columns) -> list[float]:
        return [float(format_ok(completion_text(c), self.template)) for c in completions]


class AccuracyReward:
    """`Grade.score`: 1/0 for mcq and yes/no, token-F1 for open questions (exact match scores 1)."""

    def __init__(self, template: str = "cot"):
        self.template = template
        self.__name__ = "accuracy_reward"

    def __call__(self, completions, **columns) -> list[float]:
        return [g.score for g in _grades(completions, self.template, columns)]


class ConsistencyReward:
    """1.0 when the final answer is the option (or yes/no) the reasoning concluded, else 0.0; None (unscored) for
    open questions. The idea of GRPO-CARE's consistency bonus, written here as a rule.

    Why: the accuracy reward looks only at the answer, so a lucky answer after wrong reasoning is rewarded as
    much as a reasoned one. On the demo, RL with accuracy alone let the answer drift away from the reasoning
    (agreement 100 % -> 86 %), the reasoning read the image worse and held-out accuracy fell; with this reward
    the two stayed in agreement and accuracy rose (docs/DEMO_LEARNING.md).
    """

    def __init__(self):
        self.__name__ = "consistency_reward"

    def __call__(self, completions, **columns) -> list[float | None]:
        out = []
        for completion, (_, kind, opts) in zip(completions, _references(columns, len(completions))):
            agrees = answer_follows_reasoning(completion_text(completion), kind, opts)
            out.append(None if agrees is None else float(agrees))
        return out


class LengthAwareAccuracyReward:
    """Patho-R1's DAPO reward: +1 only if the answer is correct AND the length is in [min, max], else -1.

    Length is counted in completion tokens when TRL passes `completion_ids`, else in whitespace words.
    """

    def __init__(self, min_length: int = 0, max_length: int = 1024, template: str = "cot"):
        if not 0 <= min_length <= max_length:
            raise ValueError(f"length bounds must satisfy 0 <= min ({min_length}) <= max ({max_length})")
        self.min_length, self.max_length, self.template = min_length, max_length, template
        self.__name__ = "length_aware_accuracy_reward"

    def __call__(self, completions, completion_ids=None, **columns) -> list[float]:
        out = []
        for i, g in enumerate(_grades(completions, self.template, columns)):
            if not g.correct:  # no need to count words: a degenerate 10 MB completion would cost ~0.5 s and 250 MB
                out.append(-1.0)
                continue
            length = len(completion_ids[i]) if completion_ids is not None else len(completion_text(completions[i]).split())
            out.append(1.0 if self.min_length <= length <= self.max_length else -1.0)
        return out


class JudgeReward:
    """An LLM judge's score in [0, 1] for open answers (`corpora.judge`, the judge `evaluation.run --judge` uses);
    None for closed questions (the accuracy reward grades those exactly) and when the judge fails or answers
    unparseably, so TRL leaves it out instead of reading a failure as a wrong answer. A completion without an
    `<answer>` is not sent: it scores 0. The failure rate is logged (and sent to TRL's metrics as
    `judge/failure_rate`)."""

    def __init__(self, judge):
        self.judge = judge
        self.__name__ = "judge_reward"

    def __call__(self, completions, question=None, images=None, log_metric=None, **columns) -> list[float | None]:
        from corpora.judge import JudgeItem

        n = len(completions)
        questions = list(question) if question is not None else [""] * n
        out: list[float | None] = [None] * n
        items, where = [], []
        for i, (completion, (answer, kind, opts)) in enumerate(zip(completions, _references(columns, n))):
            if kind != "open":
                continue
            extracted = extract_answer(completion_text(completion))
            if extracted is None:
                out[i] = 0.0
                continue
            items.append(JudgeItem(questions[i], extracted, answer, list(opts), list(images[i] or []) if images else []))
            where.append(i)
        if items:
            scores = self.judge.score_many(items)
            for i, s in zip(where, scores):
                out[i] = s
            failed = sum(s is None for s in scores)
            if failed:
                logger.warning("judge: %d of %d answers unscored this step (%.1f %% overall)", failed, len(scores),
                               100 * self.judge.failure_rate)
            if log_metric is not None:
                log_metric("judge/failure_rate", failed / len(scores))
        return out


format_reward = FormatReward("cot")
accuracy_reward = AccuracyReward("cot")
length_aware_accuracy_reward = LengthAwareAccuracyReward()


def soft_overlong_reward(max_completion_length: int, cache_length: int) -> RewardFn:
    """DAPO's soft overlong punishment (TRL's): 0 up to L_max - L_cache, linear to -1 at L_max, -1 beyond."""
    if not 0 <= cache_length <= max_completion_length:
        raise ValueError(f"overlong cache ({cache_length}) must be in [0, max_completion_length={max_completion_length}]")
    return get_soft_overlong_punishment(max_completion_len=max_completion_length, soft_punish_cache=cache_length)


def load_reward(path: str) -> RewardFn:
    """A custom reward by dotted path `package.module:function` (TRL's reward signature)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"custom reward {path!r} must look like 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load reward {path!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"reward {path!r} is not callable")
    return fn


def build_rewards(
    names: Sequence[str],
    *,
    template: str = "cot",
    max_completion_length: int = 256,
    overlong_cache: int = 64,
    length_bounds: tuple[int, int] = (0, 1024),
    judge=None,
    grounding=None,
) -> list[RewardFn]:
    """Reward callables for config names: `format`, `accuracy`, `consistency`, `length_aware_accuracy`, `soft_overlong`,
    `judge` (needs a `corpora.judge.JudgeConfig` with a url), `grounding` (a `GroundingConfig`), or `pkg.mod:fn`."""
    made = []
    for name in names:
        if name == "format":
            made.append(FormatReward(template))
        elif name == "accuracy":
            made.append(AccuracyReward(template))
        elif name == "consistency":
            from corpora.prompts import response_format

            if response_format(template) not in ("cot", "chain_of_draft"):
                raise ValueError(f"the consistency reward compares the answer with the <think> reasoning; template "
                                 f"{template!r} has no reasoning span (use cot or chain_of_draft)")
            made.append(ConsistencyReward())
        elif name == "length_aware_accuracy":
            made.append(LengthAwareAccuracyReward(*length_bounds, template=template))
        elif name == "soft_overlong":
            made.append(soft_overlong_reward(max_completion_length, overlong_cache))
        elif name == "judge":
            from corpora.judge import Judge, JudgeConfig

            made.append(JudgeReward(Judge(judge or JudgeConfig())))  # no url: Judge names the missing field
        elif name == "grounding":
            from stages.rl.grounding import GroundingReward

            made.append(GroundingReward(grounding))
        elif name == "view_cost":
            from stages.rl.tools import ViewCountReward

            made.append(ViewCountReward())
        elif ":" in name:
            made.append(load_reward(name))
        else:
            raise ValueError(f"unknown reward {name!r}; built in: {', '.join(BUILTIN)}, or 'package.module:function'")
    return made
