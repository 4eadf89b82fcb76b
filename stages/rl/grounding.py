"""The PathoCLIP grounding reward (`rewards: [grounding]`): how well the `<think>` reasoning describes the image.

Each completion's reasoning is embedded with the text tower of a PathoCLIP checkpoint (an open_clip model in
open_clip's hf-hub layout, as `pathoclip.train` registers it) and compared with the image embedding (cosine).
Raw similarities differ by a few hundredths between a right and a wrong description, so they are normalised per
group (the G completions of one prompt): z = (s - mean) / std, 0 for a group whose reasonings all score alike.
A completion with no reasoning gets None (the format reward already punishes it); `span=completion` compares the
whole completion instead (templates without a reasoning span).

The checkpoint is loaded with open_clip's own `local-dir:` loader, not `pathoclip.export.load_exported`:
stages may not import pathoclip (tests/test_import_contracts.py), and the loader is three open_clip calls.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Literal

from corpora.grading import completion_text, think_text

logger = logging.getLogger(__name__)
OPEN_CLIP_CONFIG = "open_clip_config.json"  # the file open_clip's hf-hub layout (and pathoclip.export) writes


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class GroundingConfig:
    model: str = _f("pathoclip:latest", "PathoCLIP checkpoint: a registry ref (pathoclip:latest, pathoclip:RUN) or "
                                        "a folder in open_clip's hf-hub layout.")
    normalise: Literal["group", "none"] = _f("group", "group: z-score within each prompt's G completions; none: raw "
                                                      "cosine similarity.")
    span: Literal["think", "completion"] = _f("think", "Text compared with the image: the <think> reasoning, or the "
                                                       "whole completion (for templates without a reasoning span).")
    device: str = _f("auto", "auto (cuda when available) | cpu | cuda.")
    batch_size: int = _f(64, "Texts (and images) embedded per forward.")

    def __post_init__(self):
        if self.normalise not in ("group", "none"):
            raise ValueError(f"grounding.normalise must be group or none, got {self.normalise!r}")
        if self.span not in ("think", "completion"):
            raise ValueError(f"grounding.span must be think or completion, got {self.span!r}")
        if self.batch_size < 1:
            raise ValueError(f"grounding.batch_size must be >= 1, got {self.batch_size}")
        if not self.model:
            raise ValueError("grounding.model is empty: give a PathoCLIP registry ref or folder")


def _image_key(image) -> str:
    if isinstance(image, str):
        return image
    return hashlib.sha1(image.tobytes()).hexdigest() + str(image.size)


def group_normalise(values: list[float | None], keys: list) -> list[float | None]:
    """z-score of each value within the values sharing its key; None stays None; a constant group gives 0."""
    out: list[float | None] = [None] * len(values)
    for key in dict.fromkeys(keys):
        idx = [i for i, k in enumerate(keys) if k == key and values[i] is not None]
        if not idx:
            continue
        xs = [values[i] for i in idx]
        mean = sum(xs) / len(xs)
        std = (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5
        for i in idx:
            out[i] = (values[i] - mean) / std if std > 1e-6 else 0.0
    return out


class GroundingReward:
    def __init__(self, cfg: GroundingConfig | None = None):
        self.cfg = cfg or GroundingConfig()
        self.__name__ = "grounding_reward"
        self._model = None

    def load(self):
        """(model, preprocess, tokenizer, device), loaded once on first use."""
        if self._model is None:
            import open_clip
            import torch

            from stages.registry import Registry

            folder = Registry().resolve(self.cfg.model)
            if not (folder / OPEN_CLIP_CONFIG).is_file():
                raise ValueError(f"grounding.model {self.cfg.model!r} -> {folder}: not a PathoCLIP (open_clip) "
                                 f"checkpoint (no {OPEN_CLIP_CONFIG})")
            device = self.cfg.device if self.cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device=device)
            model.eval().requires_grad_(False)
            self._model = (model, preprocess, open_clip.get_tokenizer(f"local-dir:{folder}"), device)
            logger.info("grounding reward: PathoCLIP %s on %s", folder, device)
        return self._model

    def similarities(self, images: list, texts: list[str]) -> list[float]:
        """Cosine similarity of each image (a PIL image, a path, or a list of them: the mean embedding) and its text."""
        import torch
        from PIL import Image

        model, preprocess, tokenizer, device = self.load()
        groups = [im if isinstance(im, (list, tuple)) else [im] for im in images]
        distinct = {}
        for group in groups:
            for im in group:
                distinct.setdefault(_image_key(im), im)
        keys, bs = list(distinct), self.cfg.batch_size
        embedded = {}
        with torch.inference_mode():
            for start in range(0, len(keys), bs):
                chunk = [distinct[k] for k in keys[start:start + bs]]
                pixels = torch.stack([preprocess(Image.open(im).convert("RGB") if isinstance(im, str)
                                                 else im.convert("RGB")) for im in chunk]).to(device)
                feats = torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)
                embedded.update(zip(keys[start:start + bs], feats))
            text_feats = []
            for start in range(0, len(texts), bs):
                tokens = tokenizer(texts[start:start + bs]).to(device)
                text_feats.append(torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1))
            text_feats = torch.cat(text_feats)
            image_feats = torch.stack([torch.nn.functional.normalize(
                torch.stack([embedded[_image_key(im)] for im in g]).mean(0), dim=-1) for g in groups])
            return (image_feats * text_feats).sum(-1).tolist()

    def __call__(self, completions, images=None, prompts=None, **columns) -> list[float | None]:
        if images is None:
            raise ValueError("the grounding reward needs the `images` column (a vision QA dataset)")
        texts = [completion_text(c) for c in completions]
        thoughts = [think_text(t) for t in texts] if self.cfg.span == "think" else [t.strip() or None for t in texts]
        todo = [i for i, t in enumerate(thoughts) if t and images[i]]
        raw: list[float | None] = [None] * len(completions)
        if todo:
            sims = self.similarities([images[i] for i in todo], [thoughts[i] for i in todo])
            for i, s in zip(todo, sims):
                raw[i] = s
        if self.cfg.normalise == "none":
            return raw
        ids = columns.get("id")
        keys = list(ids) if ids is not None else [repr(p) for p in (prompts or range(len(completions)))]
        return group_normalise(raw, keys)
