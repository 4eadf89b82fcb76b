"""Turning one raw record (a JSONL line, a CSV row, a WebDataset sample...) into the sample schema of
docs/ARCHITECTURE.md. Readers and validation share these functions, so what validation accepts is
exactly what training reads; a record that cannot be normalised raises RecordError(code, message).
"""
from __future__ import annotations

import re
from pathlib import Path

from corpora.grading import LETTERS, extract_answer, match_option

IMAGE_KEYS = ("images", "image", "image_path", "image_paths", "img_path", "filepath", "file_name", "path")
# A whole-slide image instead of images (corpora.slides.sampling turns it into K tiles); CSV: slide_path.
SLIDE_KEYS = ("slide", "slide_path")
CAPTION_KEYS = ("caption", "title", "text", "corrected_text")
QUESTION_KEYS = ("question", "problem", "query")
REASONING_KEYS = ("reasoning", "thinking", "rationale", "cot")
SUBSET_KEYS = ("subset", "modality", "task")
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.):]\s*(.+?)\s*$")
_IMAGE_PLACEHOLDER = re.compile(r"<image>\s*")
# Far above real captions (PubMed figure legends run to a few thousand characters) and chat turns:
# a longer text is a broken export (a whole file in one field), not a sample.
MAX_TEXT_CHARS = 100_000


class DataError(ValueError):
    """Data that cannot be trained on; the message names file:line of every problem."""


class RecordError(ValueError):
    """One record is unusable; `code` is the problem class (see corpora.validate)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def first_field(raw: dict, keys, what: str, *, required=True, skip_empty=False):
    """The value of the first of ``keys`` that ``raw`` has (not None; not "" either with ``skip_empty``)."""
    for key in keys:
        if key in raw and raw[key] is not None and not (skip_empty and raw[key] == ""):
            return raw[key]
    if required:
        raise RecordError("missing-field", f"missing field {what!r} (one of: {', '.join(keys)})")
    return None


def resolve_image(root: Path, value) -> str:
    """The absolute, symlink-resolved path of `value` under `root`; refuses anything that escapes root."""
    if not isinstance(value, str) or not value.strip():
        raise RecordError("bad-image-path", f"image path must be a non-empty string, got {value!r}")
    root = root.resolve()
    candidate = Path(value)
    try:
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a NUL byte in the name, a symlink loop
        raise RecordError("bad-image-path", f"image path {value!r} cannot be resolved ({e})") from None
    if not resolved.is_relative_to(root):
        raise RecordError("path-escapes-root", f"image path {value!r} resolves outside the dataset root {root}")
    return str(resolved)


def image_list(raw: dict, root: Path, slides=None) -> list[str]:
    """The record's image paths; a record naming a ``slide`` gets its tiles (``slides``: a
    corpora.slides.SlideSampling, None = its defaults), tiled once through the slide tile cache."""
    slide = first_field(raw, SLIDE_KEYS, "slide", required=False, skip_empty=True)
    if slide is not None:
        if first_field(raw, IMAGE_KEYS, "images", required=False, skip_empty=True) is not None:
            raise RecordError("bad-field", "record names both a slide and images; keep one")
        return _slide_tiles(resolve_image(root, slide), raw, slides)
    value = first_field(raw, IMAGE_KEYS, "images")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise RecordError("missing-field", "record has no image")
    return [resolve_image(root, v) for v in values]


def _slide_tiles(path: str, raw: dict, slides) -> list[str]:
    from corpora.slides import SlideError
    from corpora.slides.sampling import slide_images

    text = first_field(raw, QUESTION_KEYS + CAPTION_KEYS, "text", required=False, skip_empty=True)
    try:
        return slide_images(path, slides, text=text if isinstance(text, str) else "")
    except SlideError as e:
        raise RecordError("unreadable-slide", str(e)) from None


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError("bad-field", f"{what!r} must be a string, got {type(value).__name__}")
    return _checked(value, what).strip()


def _checked(text: str, what: str) -> str:
    """`text` unless it is binary garbage (a NUL character) or far longer than any real caption or turn."""
    if "\x00" in text:
        raise RecordError("bad-field", f"{what!r} contains a NUL character (binary data?)")
    if len(text) > MAX_TEXT_CHARS:
        raise RecordError("text-too-long", f"{what!r} is {len(text)} characters long (limit {MAX_TEXT_CHARS})")
    return text


def record_id(raw: dict, fallback: str) -> str:
    value = raw.get("id", raw.get("uuid", raw.get("__key__")))
    return str(value) if value not in (None, "") else fallback


def normalize_pair(raw: dict, root: Path, fallback_id: str, *, slides=None) -> dict:
    caption = _text(first_field(raw, CAPTION_KEYS, "caption"), "caption")
    if not caption:
        raise RecordError("empty-caption", "caption is empty")
    label = raw.get("label", "")
    return {"id": record_id(raw, fallback_id), "images": image_list(raw, root, slides), "caption": caption,
            "label": "" if label is None else str(label)}


def _options(raw_options) -> list[str]:
    """Options as a list in letter order; accepts a list or an {A: text, B: text} mapping."""
    if raw_options in (None, "", [], {}):
        return []
    if isinstance(raw_options, dict):
        keys = sorted(raw_options, key=str.upper)
        if [k.upper() for k in keys] != list(LETTERS[: len(keys)]):
            raise RecordError("bad-options", f"option keys must be A, B, C... in order, got {sorted(raw_options)}")
        return [str(raw_options[k]).strip() for k in keys]
    if isinstance(raw_options, list) and all(isinstance(o, str) for o in raw_options):
        return [_checked(o, "option").strip() for o in raw_options]
    raise RecordError("bad-options", f"options must be a list of strings or a letter mapping, got {raw_options!r}")


def split_inline_options(problem: str) -> tuple[str, list[str]]:
    """The question and options of a problem that carries its options in the text, ``(problem, [])`` if it has
    none: R1-V's ``A. text`` lines, or Med-R1's one line ``"Question? A)x, B)y, C)z"`` (there the letters must
    follow in order, so a comma inside an option, ``"No, It's normal"``, does not split it)."""
    lines = problem.splitlines()
    options, start = [], len(lines)
    for i, line in enumerate(lines):
        match = _OPTION_LINE.match(line)
        if match and match.group(1) == LETTERS[len(options)]:
            options.append(match.group(2))
            start = min(start, i)
        elif options:
            break  # only a contiguous A, B, C... block counts
    if len(options) >= 2:
        return "\n".join(lines[:start]).strip(), options
    return _split_one_line_options(problem)


def _split_one_line_options(problem: str) -> tuple[str, list[str]]:
    start = re.search(r"(?:^|\s)\(?A\)", problem)
    if not start:
        return problem.strip(), []
    question, rest = problem[: start.start()].strip(), problem[start.start():].strip()
    bounds, cuts = [re.match(r"\(?A\)", rest).end()], []
    for letter in LETTERS[1:]:
        m = re.compile(rf",\s*\(?{letter}\)").search(rest, bounds[-1])
        if not m:
            break
        cuts.append(m.start())
        bounds.append(m.end())
    if not cuts:  # "A)" alone is a phrase of the question ("vitamin A) deficiency"), not an option list
        return problem.strip(), []
    return question, [rest[b:e].strip() for b, e in zip(bounds, cuts + [len(rest)])]


def normalize_qa(raw: dict, root: Path, fallback_id: str, *, images: list[str] | None = None, slides=None) -> dict:
    """A QA record from ``raw``; ``images``: paths the caller already resolved and checked (an evaluation suite
    finds them in several folders, corpora.records.resolve_image per folder), else ``raw``'s under ``root``."""
    question = _text(first_field(raw, QUESTION_KEYS, "question"), "question")
    if not question:
        raise RecordError("empty-question", "question is empty")
    options = _options(raw.get("options", raw.get("choices")))
    if not options and "problem" in raw:
        question, options = split_inline_options(question)
    answer = raw.get("answer")
    if answer in (None, "") and raw.get("solution"):
        answer = extract_answer(str(raw["solution"]))
    if answer in (None, ""):
        raise RecordError("missing-field", "missing field 'answer' (or a solution with <answer>…</answer>)")
    answer = str(answer).strip()
    kind = raw.get("kind") or ("mcq" if options or re.fullmatch(r"[A-J]", answer.upper()) else
                               "yesno" if answer.lower() in ("yes", "no") else "open")
    if kind not in ("mcq", "yesno", "open"):
        raise RecordError("bad-kind", f"kind must be mcq, yesno or open, got {kind!r}")
    if kind == "mcq":
        letter = match_option(answer, options)
        if letter is None:
            listed = ", ".join(f"{LETTERS[i]}={o!r}" for i, o in enumerate(options)) or "A-J"
            raise RecordError("answer-not-in-options", f"answer {answer!r} is not one of the options ({listed})")
        answer = letter
    elif kind == "yesno":
        answer = answer.lower().rstrip(".")
        if answer not in ("yes", "no"):
            raise RecordError("answer-not-in-options", f"yes/no answer must be 'yes' or 'no', got {answer!r}")
    reasoning = first_field(raw, REASONING_KEYS, "reasoning", required=False) or ""
    subset = first_field(raw, SUBSET_KEYS, "subset", required=False) or ""
    return {"id": record_id(raw, fallback_id), "images": image_list(raw, root, slides) if images is None else list(images),
            "question": question, "options": options, "answer": answer, "kind": kind,
            "solution": str(raw.get("solution") or f"<answer> {answer} </answer>"),
            "subset": str(subset), "reasoning": _text(reasoning, "reasoning")}


def _content_text(content) -> str:
    """Message content as plain text: content-part lists keep their text parts, `<image>` markers go
    (images belong to the first user turn in our schema)."""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(content, str):
        raise RecordError("bad-messages", f"message content must be a string or a list of parts, got {content!r:.200}")
    return _IMAGE_PLACEHOLDER.sub("", _checked(content, "content")).strip()


def normalize_sft(raw: dict, root: Path, fallback_id: str, template: str = "cot", *, slides=None) -> dict:
    """A chat record (`messages` + `images`) as is, a tool-calling trace (corpora.traces: `tools`, `tool_calls`,
    `tool` turns; the conversation kept in `trace`), or a QA record rendered through prompt `template`."""
    from corpora.traces import is_trace

    if is_trace(raw):
        return _normalize_trace(raw, root, fallback_id)
    if "messages" not in raw:
        from corpora.prompts import render_prompt, render_response

        qa = normalize_qa(raw, root, fallback_id, slides=slides)
        messages = [{"role": "user", "content": render_prompt(template, qa["question"], qa["options"])},
                    {"role": "assistant", "content": render_response(template, qa["reasoning"], qa["answer"])}]
        return {"id": qa["id"], "images": qa["images"], "messages": messages, "trace": ""}
    raw_messages = raw["messages"]
    if not isinstance(raw_messages, list) or not raw_messages:
        raise RecordError("bad-messages", "messages must be a non-empty list")
    messages = []
    for m in raw_messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RecordError("bad-messages", f"each message needs 'role' and 'content', got {m!r}")
        if m["role"] not in ("system", "user", "assistant"):
            raise RecordError("bad-messages", f"unknown role {m['role']!r} (system, user, assistant; tool turns "
                                              "belong to a trace with 'tools', see corpora.traces)")
        messages.append({"role": m["role"], "content": _content_text(m["content"])})
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"]:
        raise RecordError("bad-messages", "the last message must be a non-empty assistant turn")
    return {"id": record_id(raw, fallback_id), "images": image_list(raw, root, slides), "messages": messages,
            "trace": ""}


def _normalize_trace(raw: dict, root: Path, fallback_id: str) -> dict:
    """A tool-calling trace (corpora.traces) as an SFT sample: plain-text ``messages`` plus the conversation and
    its tools as JSON in ``trace``; its ``images`` fill the image blocks in order of appearance."""
    import json

    from corpora.traces import TraceError, parse_trace, plain_messages

    try:
        messages, paths = parse_trace(raw)
    except TraceError as e:
        raise RecordError(e.code, e.message) from None
    plain = plain_messages(messages)
    for m in plain:
        _checked(m["content"], "content")
    return {"id": record_id(raw, fallback_id), "images": [resolve_image(root, p) for p in paths], "messages": plain,
            "trace": json.dumps({"tools": raw["tools"], "messages": messages})}


NORMALIZERS = {"pairs": normalize_pair, "qa": normalize_qa, "sft": normalize_sft}
KIND_ALIASES = {"pairs": "pairs", "sft": "sft", "qa": "qa", "rl": "qa", "eval": "qa"}


def canonical_kind(kind: str) -> str:
    if kind not in KIND_ALIASES:
        raise ValueError(f"unknown sample kind {kind!r}; expected one of {', '.join(KIND_ALIASES)}")
    return KIND_ALIASES[kind]
