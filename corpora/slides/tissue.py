"""Tissue detection on a slide's thumbnail: Otsu on saturation plus morphology, pen marks and background out.

Glass is bright and grey (low saturation); stained tissue (haematoxylin purple, eosin pink) is saturated, so an
Otsu threshold on HSV saturation separates them (the approach of CLAM's and HistoQC's tissue masks; written here
on scikit-image). Marker pens are saturated too, but blue and green ink sit at hues H&E never reaches, and black
ink is darker than any stained tissue, so those are removed by hue and value. Red pen is left in (its hue is
eosin's). Morphology closes gaps between nuclei and drops specks of dust smaller than a few cells.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Saturation below this is glass whatever Otsu says: a blank slide has no bimodal histogram to split.
MIN_SATURATION = 0.07
# ... and above this is tissue: where nuclei are far more saturated than pale stroma, Otsu splits nuclei from
# stroma instead of tissue from glass (measured on the slide demo's pale stroma, saturation ~0.16-0.2 against
# glass ~0.02, Otsu ~0.25). Glass stays well below it.
MAX_SATURATION_THRESHOLD = 0.12
# Hues (0-1) of blue and green marker ink (blue ink ~0.60-0.65, green ~0.3-0.45); H&E lies in purple-pink-red
# (about 0.75-1.0 and 0-0.1). The upper bound stops short of violet: haematoxylin-rich and cytology (Giemsa-like)
# stains sit at 0.67-0.72, and an upper bound of 0.70 took such tissue for ink (the slide demo's cytology slides).
PEN_HUES = (0.20, 0.66)
# Any visible colour at those hues is ink (stained tissue is never blue-green), including the pale fringe where a
# stroke blends into glass in the thumbnail.
PEN_MIN_SATURATION = 0.07
# Darker than any stained tissue: black ink, folds of debris, the slide's edge.
MAX_DARK_VALUE = 0.20
# Morphology, in thumbnail pixels.
CLOSE_RADIUS = 2
MIN_OBJECT_PIXELS = 16
# Mask resolution (corpora.slides.tiling picks it per tiling): tiles span >= 8 mask pixels a side.
MASK_PIXELS_PER_TILE = 8
MIN_MASK_SIDE, MAX_MASK_SIDE = 512, 4096


def tissue_array(rgb: np.ndarray) -> np.ndarray:
    """A boolean tissue mask of an RGB uint8 image (H, W, 3)."""
    from PIL import Image
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, remove_small_holes, remove_small_objects

    # PIL's HSV conversion (C, uint8) rather than skimage.color.rgb2hsv (float64): ~20x faster on a 2k thumbnail
    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., :3])).convert("HSV"), dtype=np.float32) / 255.0
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    pen = ((hue >= PEN_HUES[0]) & (hue <= PEN_HUES[1]) & (sat >= PEN_MIN_SATURATION)) | (val <= MAX_DARK_VALUE)
    candidates = sat[~pen]
    threshold = MIN_SATURATION
    if candidates.size and candidates.max() - candidates.min() > 1e-6:
        threshold = min(MAX_SATURATION_THRESHOLD, max(MIN_SATURATION, float(threshold_otsu(candidates))))
    mask = (sat > threshold) & ~pen
    mask = ndimage.binary_closing(mask, disk(CLOSE_RADIUS), border_value=0)
    mask &= ~pen  # closing must not bridge tissue back over an ink line
    mask = remove_small_objects(mask, max_size=MIN_OBJECT_PIXELS)
    return remove_small_holes(mask, max_size=MIN_OBJECT_PIXELS)


def mask_size(width: int, height: int, tile0: float) -> int:
    """Thumbnail side for the mask: a tile spans at least MASK_PIXELS_PER_TILE mask pixels, within
    [MIN_MASK_SIDE, MAX_MASK_SIDE] (a bigger thumbnail costs a read of a finer level)."""
    return int(min(MAX_MASK_SIDE, max(MIN_MASK_SIDE, np.ceil(max(width, height) * MASK_PIXELS_PER_TILE / tile0))))


@dataclass
class TissueMask:
    """``mask`` (H, W) over the whole slide; mask pixel (i, j) covers level-0 pixels
    [j*scale_x, (j+1)*scale_x) x [i*scale_y, (i+1)*scale_y)."""

    mask: np.ndarray
    scale_x: float
    scale_y: float

    @classmethod
    def of_slide(cls, slide, thumb_size: int = 1024) -> "TissueMask":
        thumb = slide.thumbnail(thumb_size)
        mask = tissue_array(np.asarray(thumb))
        return cls(mask, slide.info.width / mask.shape[1], slide.info.height / mask.shape[0])

    def __post_init__(self):
        # Summed-area table: the tissue fraction of any rectangle in O(1), for every tile of the grid.
        self._sat = np.pad(self.mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fractions(self, xs: np.ndarray, ys: np.ndarray, w0: float, h0: float) -> np.ndarray:
        """Tissue fraction of each level-0 rectangle (xs[k], ys[k], w0, h0); a rectangle narrower than one mask
        pixel takes the pixel it starts in."""
        h, w = self.mask.shape
        c0 = np.clip(np.floor(xs / self.scale_x).astype(int), 0, w - 1)
        r0 = np.clip(np.floor(ys / self.scale_y).astype(int), 0, h - 1)
        c1 = np.clip(np.ceil((xs + w0) / self.scale_x).astype(int), c0 + 1, w)
        r1 = np.clip(np.ceil((ys + h0) / self.scale_y).astype(int), r0 + 1, h)
        s = self._sat
        total = s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0]
        return total / ((r1 - r0) * (c1 - c0))

    def overlay(self, thumb, colour=(0, 200, 0), alpha: float = 0.4):
        """``thumb`` (a PIL image of the same slide) with the tissue tinted ``colour``: what `thumbnail --mask` shows."""
        from PIL import Image

        base = np.asarray(thumb.convert("RGB")).astype(np.float32)
        mask = np.asarray(Image.fromarray(self.mask.astype(np.uint8) * 255).resize(thumb.size, Image.NEAREST)) > 0
        base[mask] = base[mask] * (1 - alpha) + np.asarray(colour, np.float32) * alpha
        return Image.fromarray(base.round().astype(np.uint8))
