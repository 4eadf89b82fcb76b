"""Evaluation profiles: the prompt wording, option formatting and answer extraction of a field harness, so a
score can stand next to a published row measured the same way. Recorded in ``metrics.json["settings"]["profile"]``.

* ``pathor1``     our templates (``corpora/prompts``, the checkpoint's training template by default); the single
  ``<answer>`` span graded by ``corpora.grading`` (the RL reward's scorer: a letter, ``(C)``, ``C) text`` or the
  option's text; yes/no; exact match + token F1 for open answers).
* ``vlmevalkit``  VLMEvalKit's multiple-choice prompt (``Question:`` / ``Options:`` / ``A. x`` lines); the answer
  is read from the free text as VLMEvalKit's exact-matching step does before it would call an LLM: the one option
  letter among the words, else the one option text the answer contains; yes/no from the words (one of yes, no);
  open answers as written. Where VLMEvalKit would ask its LLM extractor, we count the answer wrong (no judge).
* ``medvlm-r1``   MedVLM-R1's test prompt (options as ``A) x`` lines, the three-step instruction); correct only when
  ``<answer>`` holds exactly one capital letter, the right one (``<answer>\\s*([A-Z])\\s*</answer>``).
* ``med-r1``      Med-R1's test prompt (options inline ``A)x, B)y``, the think instruction); correct when the first
  ``<answer>`` span holds one word equal to the right letter (``<answer>\\s*(\\w+)\\s*</answer>``).

The seeds' extractors only grade option letters; their yes/no and open questions fall back to ``corpora.grading``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from corpora.grading import LETTERS, Grade, format_ok, grade, normalize_text, token_f1, yes_no


@dataclass(frozen=True)
class Profile:
    name: str
    template: str | None  # None: the checkpoint's training template (or --template)
    extraction: str  # answer-tag | vlmeval | letter-tag | word-tag
    source: str


PROFILES = {p.name: p for p in [
    Profile("pathor1", None, "answer-tag", "this repository (corpora/prompts, corpora/grading.py)"),
    Profile("vlmevalkit", "vlmevalkit", "vlmeval",
            "open-compass/VLMEvalKit: vlmeval/dataset/image_mcq.py (prompt), vlmeval/utils/matching_util.py (matching)"),
    Profile("medvlm-r1", "medvlm_r1_paper", "letter-tag", "JZPeterPan/MedVLM-R1: src/eval/test_qwen2vl_med.py"),
    Profile("med-r1", "med_r1", "word-tag", "Yuxiang-Lai117/Med-R1: src/eval_vqa/test_qwen2vl_vqa.py"),
]}

_TAGGED = {"letter-tag": re.compile(r"<answer>\s*([A-Z])\s*</answer>"), "word-tag": re.compile(r"<answer>\s*(\w+)\s*</answer>")}
_VLMEVAL_PUNCT = re.compile(r"[.()\[\],:;!*#{}]")


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]


def vlmeval_choice(text: str, options) -> str | None:
    """The option a free-text answer names: the one option letter among its words, else the one option text in it."""
    letters = LETTERS[: len(options)]
    words = _VLMEVAL_PUNCT.sub(" ", text).split()
    named = {w for w in words if w in letters}
    if len(named) == 1:
        return named.pop()
    if named:
        return None  # several letters: ambiguous
    lowered = text.lower()
    hits = [LETTERS[i] for i, o in enumerate(options) if str(o).strip() and str(o).lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def grade_with(profile: Profile, completion: str, answer: str, kind: str, options=(), *, template: str) -> Grade:
    """One completion graded the way ``profile``'s harness grades it (``corpora.grading.grade`` for ours)."""
    if profile.extraction == "answer-tag" or (profile.extraction != "vlmeval" and kind != "mcq"):
        return grade(completion, answer, kind, options, template=template)
    well_formed = format_ok(completion, template)
    if profile.extraction == "vlmeval":
        if kind == "mcq":
            said = vlmeval_choice(completion, options)
            return Grade(said == answer, float(said == answer), said, well_formed)
        if kind == "yesno":
            said = yes_no(completion)
            return Grade(said == yes_no(answer), float(said == yes_no(answer)), said, well_formed)
        correct = normalize_text(completion) == normalize_text(answer)
        return Grade(correct, 1.0 if correct else token_f1(completion, answer), completion.strip(), well_formed)
    match = _TAGGED[profile.extraction].search(completion or "")
    said = match.group(1) if match else None
    return Grade(said == answer, float(said == answer), said, well_formed)
