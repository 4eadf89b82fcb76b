"""Shared by the slide tests of corpora and pathoclip: a small SVS whose tissue sits on chosen 64 px cells of a
glass background, so the tile count under 64 px tiles at 0.5 µm/px is known exactly (one tile per tissue cell)."""
import numpy as np

from corpora.slides.synthetic import GLASS, write_svs

TISSUE = (222, 140, 180)


def cells_slide(path, cells, *, rows=4, cols=6, colour=TISSUE, mpp=0.5, seed=0):
    """A ``rows`` x ``cols`` grid of 64 px cells at ``mpp`` (None: no µm/px), tissue of ``colour`` on ``cells``."""
    rng = np.random.default_rng(seed)
    img = np.empty((rows * 64, cols * 64, 3), np.uint8)
    img[:] = GLASS
    for r, c in cells:
        block = img[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64]
        block[:] = colour
        block[rng.random(block.shape[:2]) < 0.1] = (110, 60, 150)
    return write_svs(path, img, mpp=mpp, n_levels=2, tile=64, label=False)
