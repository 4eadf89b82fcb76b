"""The one scorer: answer extraction and grading for RL rewards and evaluation alike.

Pure functions on strings, regexes compiled once: RL calls `grade` thousands of times per step.
The rules are deliberately strict so that a policy cannot farm reward: exactly one non-empty
`<answer>` span, nothing answer-like hedged inside it (several letters, every option listed),
and anything outside the tags is ignored rather than rescued.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass

# Beyond these sizes a completion is a degenerate generation, not an answer: graded wrong without
# running any regex over it (keeps the worst case O(1) for the RL loop).
MAX_COMPLETION_CHARS = 20_000
MAX_ANSWER_CHARS = 1_000
LETTERS = string.ascii_uppercase

_ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_ANSWER_TAG = re.compile(r"</?answer>", re.IGNORECASE)
_THINK_TAG = re.compile(r"</?think>", re.IGNORECASE)
_COT_FORMAT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.IGNORECASE | re.DOTALL)
_THINK_SPAN = re.compile(r"<think>(.*?)</think>", re.IGNORECASE | re.DOTALL)
_ANSWER_ONLY_FORMAT = re.compile(r"\s*<answer>(.*?)</answer>\s*", re.IGNORECASE | re.DOTALL)
# "answer: C", "the answer is (C)", "option C" -- a lead-in people and models write before the letter.
_LEAD_IN = re.compile(r"^(?:(?:the\s+)?(?:final\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*)", re.IGNORECASE)
# A bare letter: C | C. | (C) | C) | [C] | C:
_BARE_LETTER = re.compile(r"^[(\[]?([A-Za-z])[)\].:]?$")
# A letter followed by option text: "C) text", "C. text", "(C) text", "C: text", "C - text", "C text"
_LETTER_WITH_TEXT = re.compile(r"^[(\[]?([A-Za-z])([)\].:]|\s*-)?\s+(.+)$", re.DOTALL)
_PUNCT = re.compile(r"[^\w\s]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_WORDS = re.compile(r"\w+")
DRAFT_MAX_WORDS = 10  # Chain-of-Draft: each thinking step is a short draft line


@dataclass(frozen=True)
class Grade:
    correct: bool
    score: float
    extracted: str | None
    format_ok: bool


def extract_answer(text: str | None) -> str | None:
    """The stripped content of the single `<answer>…</answer>` span, else None.

    None when: no text, a huge text, no span, more than one `<answer>` tag (several spans or a stray
    open/close tag), an empty span, or an overlong span.
    """
    if not text or len(text) > MAX_COMPLETION_CHARS:
        return None
    if len(_ANSWER_TAG.findall(text)) != 2:
        return None
    match = _ANSWER_SPAN.search(text)
    if match is None:
        return None
    answer = match.group(1).strip()
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return None
    return answer


def format_ok(text: str | None, template: str = "cot") -> bool:
    """Whether `text` follows the response format of prompt template `template` (see corpora/prompts)."""
    if not text or len(text) > MAX_COMPLETION_CHARS:
        return False
    from corpora.prompts import response_format

    template = response_format(template)  # e.g. the medvlm_r1 prompt answers in the cot format
    if template == "caption":
        return bool(text.strip()) and not _ANSWER_TAG.search(text) and not _THINK_TAG.search(text)
    if template == "free":  # a harness that reads the answer out of free text (VLMEvalKit): any text is the format
        return bool(text.strip())
    if extract_answer(text) is None:
        return False
    if template == "nothink":
        return _ANSWER_ONLY_FORMAT.fullmatch(text) is not None and not _THINK_TAG.search(text)
    if template in ("cot", "chain_of_draft"):
        match = _COT_FORMAT.fullmatch(text)
        if match is None or len(_THINK_TAG.findall(text)) != 2 or not match.group(1).strip():
            return False
        if template == "chain_of_draft":
            steps = [s for s in re.split(r"[\n;.]", match.group(1)) if s.strip()]
            return all(len(s.split()) <= DRAFT_MAX_WORDS for s in steps)
        return True
    raise ValueError(f"unknown template {template!r}; known: caption, chain_of_draft, cot, free, nothink")


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = _PUNCT.sub(" ", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def match_option(answer: str, options=()) -> str | None:
    """Map an extracted MCQ answer to an option letter, or None when it is not exactly one option.

    Accepts `C`, `c`, `C.`, `(C)`, `C) text`, `Answer: C` and the text of an option instead of its
    letter. A letter whose text names a different option is contradictory and returns None.
    """
    text = _LEAD_IN.sub("", answer.strip()).strip().rstrip(".")
    n_letters = len(options) if options else 10
    normalized_options = [normalize_text(o) for o in options]

    def in_range(letter: str) -> str | None:
        letter = letter.upper()
        return letter if LETTERS.index(letter) < n_letters else None

    bare = _BARE_LETTER.match(text)
    if bare:
        return in_range(bare.group(1))
    with_text = _LETTER_WITH_TEXT.match(text)
    if with_text:
        letter = in_range(with_text.group(1))
        separator, said = with_text.group(2), normalize_text(with_text.group(3))
        if letter is not None and not options:
            return letter if separator else None
        if letter is not None:
            expected = normalized_options[LETTERS.index(letter)]
            if said == expected:
                return letter
            # "C) text" must not name another option's text (two answers in one); without a separator
            # ("a lymphoma") the leading letter is only trusted when the text confirms it.
            if separator and said not in normalized_options:
                return letter
    said = normalize_text(text)
    hits = [i for i, o in enumerate(normalized_options) if o and said == o]
    return LETTERS[hits[0]] if len(hits) == 1 else None


def yes_no(answer: str) -> str | None:
    """`yes` or `no` when the answer commits to exactly one of them, else None."""
    words = set(_WORDS.findall(answer.lower()))
    said = words & {"yes", "no"}
    return said.pop() if len(said) == 1 else None


def token_f1(prediction: str, reference: str) -> float:
    """Token-level F1 between normalised strings (SQuAD definition)."""
    pred, ref = normalize_text(prediction).split(), normalize_text(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _reference_letter(answer: str, options) -> str | None:
    """The expected letter; references are letters, but tolerate `<answer> C </answer>` or option text."""
    inner = extract_answer(answer) if "<answer>" in answer.lower() else answer
    return match_option(inner or "", options)


def think_text(completion: str | None) -> str | None:
    """The text inside the first `<think>…</think>` span, stripped; None when there is none or it is empty."""
    if not completion or len(completion) > MAX_COMPLETION_CHARS:
        return None
    match = _THINK_SPAN.search(completion)
    return (match.group(1).strip() or None) if match else None


def reasoning_conclusion(completion: str, kind: str, options=()) -> str | None:
    """What the `<think>` span concludes: for mcq the letter of the option it names last, for yesno the last
    yes/no it says; None when it names none (or for open questions, which have no closed answer set).

    "Last" is by where the mention ends, and on a tie the longer option wins ("very dense" over "dense").
    """
    if not completion or len(completion) > MAX_COMPLETION_CHARS:
        return None
    match = _THINK_SPAN.search(completion)
    if match is None:
        return None
    text = f" {normalize_text(match.group(1))} "
    if kind == "yesno":
        words = [w for w in text.split() if w in ("yes", "no")]
        return words[-1] if words else None
    if kind != "mcq":
        return None
    best = None  # ((end, length), letter)
    for i, option in enumerate(options):
        said = normalize_text(option)
        start = text.rfind(f" {said} ") if said else -1
        if start >= 0 and (best is None or (start + len(said), len(said)) > best[0]):
            best = ((start + len(said), len(said)), LETTERS[i])
    return best[1] if best else None


def answer_follows_reasoning(completion: str, kind: str, options=()) -> bool | None:
    """Whether the final answer is the one the reasoning concluded; None for open questions.

    False when either is missing: an answer the reasoning never reached earns no consistency credit.
    """
    if kind not in ("mcq", "yesno"):
        return None
    concluded = reasoning_conclusion(completion, kind, options)
    extracted = extract_answer(completion)
    if concluded is None or extracted is None:
        return False
    answered = match_option(extracted, options) if kind == "mcq" else yes_no(extracted)
    return answered == concluded


def grade(completion: str, answer: str, kind: str, options=(), *, template: str = "cot") -> Grade:
    """Grade one completion against the reference `answer` for a question of `kind` (mcq, yesno, open).

    `score` is 0/1 for mcq and yesno and token-F1 for open; `correct` is an exact (normalised) match.
    `format_ok` checks the response format of `template`; correctness never depends on it.
    """
    extracted = extract_answer(completion)
    well_formed = format_ok(completion, template)
    if extracted is None:
        return Grade(False, 0.0, None, well_formed)
    if kind == "mcq":
        expected = _reference_letter(answer, options)
        correct = expected is not None and match_option(extracted, options) == expected
        return Grade(correct, float(correct), extracted, well_formed)
    if kind == "yesno":
        expected = yes_no(answer)
        correct = expected is not None and yes_no(extracted) == expected
        return Grade(correct, float(correct), extracted, well_formed)
    if kind == "open":
        correct = normalize_text(extracted) == normalize_text(answer)
        return Grade(correct, 1.0 if correct else token_f1(extracted, answer), extracted, well_formed)
    raise ValueError(f"unknown question kind {kind!r}; expected mcq, yesno or open")


def completion_text(completion) -> str:
    """The assistant text of a completion given as a string, a message list, or multimodal content parts."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        # TRL's response parser (used whenever tools are on) moves a leading <think> span into reasoning_content
        reasoning = completion.get("reasoning_content")
        text = completion_text(completion.get("content"))
        return f"<think>{reasoning}</think>{text}" if reasoning else text
    if isinstance(completion, (list, tuple)):
        if all(isinstance(m, dict) and "role" in m for m in completion):
            replies = [m for m in completion if m.get("role") == "assistant"] or list(completion)
            return completion_text(replies[-1]) if replies else ""
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in completion)
    return str(completion)
