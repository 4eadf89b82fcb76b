"""Writing real slide files that OpenSlide reads, with tifffile (+ imagecodecs for JPEG tiles): for tests, the
benchmark and the slide demo. Two layouts:

* Aperio SVS (OpenSlide's ``aperio`` format, https://openslide.org/formats/aperio/): a TIFF whose first
  ImageDescription starts with "Aperio", ``|``-separated ``key = value`` fields (``AppMag``, ``MPP``), tiled
  pyramid levels, the thumbnail as the second, stripped page, then the label and macro pages (stripped, named
  on the description's second line).
* generic pyramidal TIFF (OpenSlide's ``generic-tiff``, https://openslide.org/formats/generic-tiff/): tiled
  pages of decreasing size, one per level, with XResolution / YResolution in pixels per centimetre, which
  OpenSlide turns into ``openslide.mpp-x`` / ``-y``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

GLASS = (236, 234, 238)


def pyramid(image: np.ndarray, n_levels: int, factor: int = 4) -> list[np.ndarray]:
    """``image`` and ``n_levels - 1`` smaller copies, each ``factor`` times smaller (box filter)."""
    levels = [image]
    for _ in range(n_levels - 1):
        prev = Image.fromarray(levels[-1])
        w, h = max(1, prev.width // factor), max(1, prev.height // factor)
        levels.append(np.asarray(prev.resize((w, h), Image.Resampling.BOX)))
    return levels


def _aperio_description(width, height, mpp, power, tail=""):
    head = f"Aperio Image Library v12.0.15\r\n{width}x{height} [0,0 {width}x{height}] (256x256){tail} JPEG/RGB Q=80"
    fields = [f"AppMag = {power:g}"] if power else []
    fields += [f"MPP = {mpp:.4f}"] if mpp else []
    return "|".join([head] + fields)


def write_svs(path, image: np.ndarray, *, mpp: float | None = 0.5, power: float | None = 20, n_levels: int = 3,
              tile: int = 256, label: bool = True) -> Path:
    """An Aperio SVS of ``image`` (H, W, 3 uint8) with ``n_levels`` levels (downsample 4 each), a thumbnail,
    and (``label``) label and macro images. ``mpp=None`` writes no MPP field (objective power only)."""
    import tifffile

    path = Path(path)
    height, width = image.shape[:2]
    levels = pyramid(image, n_levels)
    opts = dict(photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], tile=(tile, tile), compression="jpeg", description=_aperio_description(
            width, height, mpp, power), **opts)
        thumb = np.asarray(Image.fromarray(image).resize((max(1, width // 16), max(1, height // 16))))
        tw.write(thumb, compression="jpeg", rowsperstrip=16, description=_aperio_description(
            width, height, mpp, power).replace(f" [0,0 {width}x{height}] (256x256)",
                                               f" -> {thumb.shape[1]}x{thumb.shape[0]} -"), **opts)
        for level in levels[1:]:
            tw.write(level, tile=(tile, tile), compression="jpeg", description=_aperio_description(
                width, height, mpp, power, f" -> {level.shape[1]}x{level.shape[0]}"), **opts)
        if label:
            small = np.full((64, 128, 3), 250, np.uint8)
            tw.write(small, compression="lzw", rowsperstrip=64, subfiletype=1,
                     description="Aperio Image Library v12.0.15\r\nlabel 128x64", **opts)
            tw.write(small, compression="jpeg", rowsperstrip=64, subfiletype=9,
                     description="Aperio Image Library v12.0.15\r\nmacro 128x64", **opts)
    return path


def write_pyramidal_tiff(path, image: np.ndarray, *, mpp: float | None = 0.5, n_levels: int = 3,
                         tile: int = 256, compression: str = "jpeg", level: int | None = None) -> Path:
    """A generic tiled pyramidal TIFF; ``mpp=None`` writes no resolution tags (OpenSlide then knows no µm/px);
    ``level``: the compressor's level (zlib 1 writes ~4x faster than its default, files ~10 % larger)."""
    import tifffile

    path = Path(path)
    with tifffile.TiffWriter(path) as tw:
        for i, pixels in enumerate(pyramid(image, n_levels)):
            ds = image.shape[1] / pixels.shape[1]
            extra = {}
            if mpp:
                per_cm = 1e4 / (mpp * ds)
                extra = dict(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            if level is not None:
                extra["compressionargs"] = {"level": level}
            tw.write(pixels, tile=(tile, tile), compression=compression, photometric="rgb", metadata=None,
                     subfiletype=0 if i == 0 else 1, **extra)
    return path


def tissue_image(height: int, width: int, blobs, *, seed: int = 0, pen: bool = False) -> np.ndarray:
    """Glass with H&E-coloured tissue: ``blobs`` are (cx, cy, rx, ry) ellipses in pixels; nuclei as purple dots.
    ``pen`` draws a blue marker stroke across the top (tissue detection must leave it out)."""
    rng = np.random.default_rng(seed)
    # glass +- 4 stays inside 0..255 (no clip needed); each ellipse is computed on its bounding box only. The random
    # draws are the full-frame ones of the first version, so a seed gives the same image (a demo corpus keeps its
    # bytes) at about a third of the time (issue 26: navigation corpora of hundreds of slides)
    img = (np.asarray(GLASS, np.int16) + rng.integers(-4, 5, (height, width, 3))).astype(np.uint8)
    for cx, cy, rx, ry in blobs:
        top, bottom = max(0, math.ceil(cy - ry)), min(height, math.floor(cy + ry) + 1)
        left, right = max(0, math.ceil(cx - rx)), min(width, math.floor(cx + rx) + 1)
        yy, xx = np.ogrid[top:bottom, left:right]
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        box = img[top:bottom, left:right]
        box[inside] = (222, 140, 180)  # eosin stroma
        nuclei = inside & (rng.random((height, width))[top:bottom, left:right] < 0.08)
        box[nuclei] = (110, 60, 150)  # haematoxylin
    if pen:
        band = slice(max(0, height // 16), max(1, height // 16 + max(2, height // 40)))
        img[band, width // 8: width * 7 // 8] = (40, 70, 190)
    return img
