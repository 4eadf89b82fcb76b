"""Ranking a slide's tiles by a PathoCLIP checkpoint's image-text similarity to a question or caption
(``slides.select=clip``). A PathoCLIP registry entry is open_clip's hf-hub folder (pathoclip.export), which
``open_clip.create_model_and_transforms("local-dir:<folder>")`` loads with no pathor1 code, so corpora needs
nothing from pathoclip. torch and open_clip are imported here only, on first use: ``corpora.slides`` stays
torch-free for every other selection.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

# Registry refs (pathoclip:latest) are resolved by the caller (stages / evaluation own the registry); corpora
# sees folders only. Tile embeddings are kept per (model, tile file): many questions ask about one slide.
_IMAGE_EMBEDDINGS: dict[tuple[str, str], object] = {}


@lru_cache(maxsize=2)
def _model(folder: str):
    import open_clip

    if not (Path(folder) / "open_clip_config.json").is_file():
        raise ValueError(f"{folder}: expected a PathoCLIP checkpoint folder (open_clip_config.json), found none; "
                         "pass slides.clip_model=pathoclip:latest or an exported folder")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device="cpu")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}")


def clip_scores(folder: str, image_paths: list[str], text: str) -> list[float]:
    """Cosine similarity of each image to ``text`` under the checkpoint in ``folder``."""
    import torch
    from PIL import Image

    model, preprocess, tokenizer = _model(str(folder))
    missing = [p for p in image_paths if (str(folder), p) not in _IMAGE_EMBEDDINGS]
    with torch.no_grad():
        for start in range(0, len(missing), 64):
            batch = missing[start:start + 64]
            pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in batch])
            features = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
            for p, f in zip(batch, features):
                _IMAGE_EMBEDDINGS[(str(folder), p)] = f
        query = torch.nn.functional.normalize(model.encode_text(tokenizer([text or "tissue"])), dim=-1)[0]
        images = torch.stack([_IMAGE_EMBEDDINGS[(str(folder), p)] for p in image_paths])
        return (images @ query).tolist()
