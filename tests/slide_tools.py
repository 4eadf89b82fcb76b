"""Shared by the slide-tool tests (tests/stages/test_rl_tools.py, tests/evaluation/test_navigate.py): a slide QA
file on a real pyramidal TIFF, and a script that decides what a tiny policy writes on each turn.

The script is a logits processor handed to the model's real ``generate`` (every other token is masked), so the
tool call is known while TRL's / evaluation's loop, the viewer, the chat template, the vision tower and the loss
all run for real.
"""
import json

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from corpora.slides.synthetic import GLASS, write_pyramidal_tiff

CALL = '<tool_call>\n{"name": "zoom", "arguments": {"x": 300, "y": 200, "mpp": 1.0}}\n</tool_call>'
DIRECT = "<think>looks normal</think><answer>B</answer>"  # answers from the overview alone: wrong
AFTER = "<think>atypical nuclei in the view</think><answer>A</answer>"  # answers after the view: right


def slide_qa_file(folder, n: int = 1):
    """``folder/rl.jsonl``: ``n`` questions (ids s0..) on one 768x512 slide at 0.5 µm/px whose answer is A."""
    img = np.empty((512, 768, 3), np.uint8)
    img[:] = GLASS
    img[100:400, 150:650] = (222, 140, 180)
    (folder / ".dataset-root").touch()
    slide = write_pyramidal_tiff(folder / "case.tiff", img, mpp=0.5, compression="zlib")
    records = [{"id": f"s{i}", "slide": slide.name, "question": "What is in the tissue?",
                "options": ["tumour", "normal"], "answer": "A"} for i in range(n)]
    (folder / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder / "rl.jsonl"


class Script(LogitsProcessor):
    """Forces each row's tokens: on the first turn even rows call zoom, odd rows answer at once; after a tool
    result (two more <|im_start|> than the first turn's prompt had) the row answers from the view."""

    def __init__(self, tok, first_turn_starts):
        end = [tok.convert_tokens_to_ids("<|im_end|>")]
        self.call, self.direct, self.after = (tok.encode(t) + end for t in (CALL, DIRECT, AFTER))
        self.im_start, self.first, self.start = tok.convert_tokens_to_ids("<|im_start|>"), first_turn_starts, None

    def __call__(self, input_ids, scores):
        self.start = self.start or input_ids.size(1)
        k = input_ids.size(1) - self.start
        forced = torch.full_like(scores, float("-inf"))
        for i, row in enumerate(input_ids):
            first = int((row == self.im_start).sum()) <= self.first
            seq = (self.call if i % 2 == 0 else self.direct) if first else self.after
            forced[i, seq[min(k, len(seq) - 1)]] = 0.0
        return forced


def scripted(model, tok):
    """The model's generate (the shared prefill's when installed) with a Script per call, as an instance attribute.
    Calling it again restarts the script (the first call after it is a first turn again)."""
    plain = getattr(model, "_unscripted_generate", None) or model.generate
    model._unscripted_generate, state = plain, {}

    def generate(*args, **kwargs):
        starts = int((kwargs["input_ids"] == tok.convert_tokens_to_ids("<|im_start|>")).sum(1).min())
        state.setdefault("first", starts)
        return plain(*args, logits_processor=LogitsProcessorList([Script(tok, state["first"])]), **kwargs)

    model.generate = generate


