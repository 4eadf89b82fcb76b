"""Tool-calling traces as an SFT record kind: a conversation in which the assistant calls tools and reads their
results (images included), e.g. ``corpora.slides.navdemo``'s navigation traces.

A trace record (one JSONL line)::

    {"id": "rl-000", "images": ["views/rl-000-overview.png", "views/rl-000.png"],
     "tools": [{"type": "function", "function": {"name": "zoom", "parameters": {...}}}, ...],
     "messages": [
       {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]},
       {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                             "function": {"name": "zoom", "arguments": {...}}}]},
       {"role": "tool", "name": "zoom", "content": [{"type": "image"}, {"type": "text", "text": "view 1/4 ..."}]},
       {"role": "assistant", "content": "<think>...</think><answer>A</answer>"}]}

``images`` fill the ``{"type": "image"}`` blocks in order of appearance, whatever the turn (TRL's tool loop puts a
view into its ``tool`` turn). The sample keeps the plain-text ``messages`` every SFT sample has (for lengths and
readers) and the whole conversation in ``trace`` (JSON), which the training collator renders with the tools
section; tool turns never train (stages.engine.ChatCollator masks everything but the assistant's tokens).
"""
from __future__ import annotations

import json

ROLES = ("system", "user", "assistant", "tool")


class TraceError(ValueError):
    """A trace that cannot be trained on; corpora.records turns it into its RecordError (code, message)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def is_trace(raw: dict) -> bool:
    """A record is a trace when it declares tools or holds a tool call or a tool turn."""
    messages = raw.get("messages")
    return "tools" in raw or (isinstance(messages, list) and any(
        isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in messages))


def _tool_names(tools) -> list[str]:
    if not isinstance(tools, list) or not tools:
        raise TraceError("bad-tools", "a trace needs 'tools': a non-empty list of function schemas "
                                       "({'type': 'function', 'function': {'name': ..., 'parameters': ...}})")
    names = []
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise TraceError("bad-tools", f"each tool must be {{'type': 'function', 'function': {{'name': ...}}}}, "
                                           f"got {t!r:.200}")
        names.append(fn["name"])
    return names


def _blocks(content, role: str, where: str) -> list[dict]:
    """Content as a list of text / image blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise TraceError("bad-messages", f"{where}: content must be a string or a list of blocks, got {content!r:.200}")
    out = []
    for b in content:
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            out.append({"type": "text", "text": b["text"]})
        elif kind == "image":
            if role not in ("user", "tool"):
                raise TraceError("bad-messages", f"{where}: an image belongs to a user or tool turn, not {role}")
            out.append({"type": "image"})
        else:
            raise TraceError("bad-messages", f"{where}: expected blocks {{'type': 'text', 'text': ...}} or "
                                              f"{{'type': 'image'}}, got {b!r:.200}")
    return out


def _calls(calls, names: list[str], where: str) -> list[dict]:
    if not isinstance(calls, list) or not calls:
        raise TraceError("bad-tool-call", f"{where}: tool_calls must be a non-empty list")
    out = []
    for c in calls:
        fn = c.get("function", c) if isinstance(c, dict) else None
        name, args = (fn.get("name"), fn.get("arguments", {})) if isinstance(fn, dict) else (None, None)
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = None
        if name not in names:
            raise TraceError("bad-tool-call", f"{where}: calls {name!r}, which is not among the tools "
                                               f"({', '.join(names)})")
        if not isinstance(args, dict):
            raise TraceError("bad-tool-call", f"{where}: arguments of {name!r} must be a JSON object, got "
                                               f"{fn.get('arguments')!r:.200}")
        out.append({"type": "function", "function": {"name": name, "arguments": args}})
    return out


def parse_trace(raw: dict) -> tuple[list[dict], list[str]]:
    """(the normalised conversation, the raw image entries) of a trace record; raises TraceError naming the turn
    at fault. Images, ids and text limits are corpora.records' business (normalize_sft)."""
    names = _tool_names(raw.get("tools"))
    raw_messages = raw.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise TraceError("bad-messages", "messages must be a non-empty list")
    messages, pending_calls = [], 0
    for i, m in enumerate(raw_messages):
        where = f"message {i}"
        if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m:
            raise TraceError("bad-messages", f"{where}: expected {{'role': {'|'.join(ROLES)}, 'content': ...}}, "
                                             f"got {m!r:.200}")
        role = m["role"]
        message = {"role": role, "content": _blocks(m["content"], role, where)}
        if role in ("assistant", "system"):  # a string, as TRL's tool loop writes them: a list of blocks would
            message["content"] = _text(message)  # render a newline before the tool call that the model never sees
        if role == "assistant" and m.get("tool_calls"):
            message["tool_calls"] = _calls(m["tool_calls"], names, where)
            pending_calls = len(message["tool_calls"])
        elif role == "tool":
            if pending_calls == 0:
                raise TraceError("bad-tool-result", f"{where}: a tool result without an assistant tool call "
                                                    "before it (or more results than calls)")
            pending_calls -= 1
            if m.get("name") is not None:
                if m["name"] not in names:
                    raise TraceError("bad-tool-result", f"{where}: result of {m['name']!r}, which is not among "
                                                        f"the tools ({', '.join(names)})")
                message["name"] = m["name"]
        elif pending_calls:
            raise TraceError("bad-tool-result", f"{where}: {pending_calls} tool call(s) before it have no result")
        messages.append(message)
    last = messages[-1]
    if last["role"] != "assistant" or "tool_calls" in last or not _text(last).strip():
        raise TraceError("bad-messages", "the last message must be a non-empty assistant answer without tool calls")
    value = next((raw[k] for k in ("images", "image") if raw.get(k) not in (None, "")), [])
    paths = value if isinstance(value, list) else [value]
    n_blocks = sum(b["type"] == "image" for m in messages if isinstance(m["content"], list) for b in m["content"])
    if n_blocks != len(paths):
        raise TraceError("image-count", f"{n_blocks} image block(s) in the messages but {len(paths)} image(s) in "
                                        "'images' (they fill the blocks in order of appearance)")
    return messages, paths


def plain_messages(messages: list[dict]) -> list[dict]:
    """The conversation as the text-only ``messages`` of an SFT sample (tool calls as their JSON)."""
    return [{"role": m["role"], "content": _text(m) + "".join(
        "\n" + json.dumps(c["function"]) for c in m.get("tool_calls", []))} for m in messages]


def _text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(b["text"] for b in content if b["type"] == "text")


def conversation(trace: str, images: list) -> tuple[list[dict], list[dict]]:
    """(messages with each image block holding its image, in order; the tools) of a sample's ``trace``."""
    data = json.loads(trace)
    pending = iter(images)
    messages = []
    for m in data["messages"]:
        if isinstance(m["content"], list):
            m = {**m, "content": [{**b, "image": next(pending)} if b["type"] == "image" else b for b in m["content"]]}
        messages.append(m)
    return messages, data["tools"]
