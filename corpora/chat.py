"""Chat content for Qwen-VL processors: images first, then the text, in one user turn."""
from __future__ import annotations


def user_content(text: str, n_images: int) -> list[dict]:
    """`[{"type": "image"}, …, {"type": "text", "text": text}]` -- the processor's chat template turns each
    image entry into the vision placeholder tokens, in the order the images are passed."""
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    return [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
