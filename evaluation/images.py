"""Benchmark images as the model sees them: RGB, whatever the release encoded.

Releases ship JPEG (some CMYK), palette PNGs, 16-bit greyscale PNGs (radiology) and TIFFs. PIL's ``convert("RGB")``
handles CMYK and palettes but clips a 16-bit image to white (values above 255 saturate), and drops alpha onto
black; here 16-bit and 32-bit images are rescaled to their own range and transparency is laid on white.
"""
from __future__ import annotations

from pathlib import Path


def to_rgb(im):
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        scaled = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im.convert("RGBA"), mask=im.convert("RGBA").split()[-1])
        return background
    return im.convert("RGB")


def open_rgb(path: str | Path):
    """The first frame of the image at ``path`` as RGB (a multi-page TIFF gives its first page)."""
    from PIL import Image

    with Image.open(path) as im:
        im.seek(0)
        return to_rgb(im)
