"""Pathology-like images rendered from a latent truth (tissue class x imaging style), for the demo corpus.

Written by hand because no library draws labelled toy histology. Images are composed like real
brightfield microscopy: stain concentration maps (hematoxylin on nuclei, eosin on stroma, DAB on
IHC-positive nuclei) turned into RGB by Beer-Lambert absorption, so colour, texture, nuclear density
and size and gland lumens all follow from the class. Per-image nuisance (stain strength and hue,
brightness, orientation, noise) keeps the task from being a lookup of one pixel value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Optical-density vectors of the stains (Ruifrok & Johnston; the same ones skimage.color.rgb2hed uses).
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])
DAB = np.array([0.27, 0.57, 0.78])
REFERENCE_SIZE = 56  # the per-class numbers below are in pixels at this image size


@dataclass(frozen=True)
class Tissue:
    """What a tissue class looks like; numbers are at REFERENCE_SIZE and scale with the image."""

    nuclei: int  # how many nuclei in the field
    radius: float  # nuclear radius (px)
    elongation: float  # long/short axis ratio (spindle cells > 1)
    glands: int  # gland lumens in the field
    gland_radius: float  # lumen radius (px)
    irregularity: float  # lumen outline wobble (0 = round)
    fibres: bool  # eosinophilic streaks (collagen)
    dab_positive: float  # fraction of nuclei stained by DAB in IHC (e.g. a proliferation marker)


TISSUES = {
    "normal": Tissue(nuclei=34, radius=1.4, elongation=1.0, glands=2, gland_radius=8.5, irregularity=0.0,
                     fibres=False, dab_positive=0.1),
    "adenocarcinoma": Tissue(nuclei=85, radius=2.3, elongation=1.3, glands=4, gland_radius=4.5, irregularity=0.35,
                             fibres=False, dab_positive=0.75),
    "lymphoma": Tissue(nuclei=170, radius=1.3, elongation=1.0, glands=0, gland_radius=0.0, irregularity=0.0,
                       fibres=False, dab_positive=0.9),
    "stroma": Tissue(nuclei=16, radius=1.1, elongation=3.2, glands=0, gland_radius=0.0, irregularity=0.0,
                     fibres=True, dab_positive=0.05),
}


@dataclass(frozen=True)
class Style:
    """An imaging style (the `subset` / modality of a sample): how much of each stain goes where."""

    stroma_eosin: float  # eosin in the background tissue
    stroma_hematoxylin: float  # counterstain tint of the background
    nuclear_hematoxylin: float
    uses_dab: bool
    cytoplasm_halo: float  # cytology: cells float on a clear slide, each with a pale cytoplasm


STYLES = {
    "he": Style(stroma_eosin=0.55, stroma_hematoxylin=0.05, nuclear_hematoxylin=1.6, uses_dab=False, cytoplasm_halo=0.0),
    "ihc": Style(stroma_eosin=0.0, stroma_hematoxylin=0.12, nuclear_hematoxylin=0.9, uses_dab=True, cytoplasm_halo=0.0),
    "cytology": Style(stroma_eosin=0.04, stroma_hematoxylin=0.02, nuclear_hematoxylin=1.5, uses_dab=False,
                      cytoplasm_halo=0.35),
}


def _ellipses(size, centres, rx, ry, angles, edge=1.0):
    """Soft coverage (0..1) of each pixel by the union of ellipses (max over shapes).

    Vectorised over shapes, each evaluated only in a square window around its centre: a full-grid
    evaluation costs shapes x pixels and made the demo corpus ten times slower to build.
    """
    out = np.zeros((size, size))
    if len(centres) == 0:
        return out
    half = int(np.ceil(max(rx.max(), ry.max()) + edge + 1))
    offsets = np.arange(-half, half + 1)
    top_left = np.floor(centres).astype(int)  # window anchored at the pixel holding the centre
    rows = top_left[:, 0, None, None] + offsets[None, :, None]  # (n, w, 1)
    cols = top_left[:, 1, None, None] + offsets[None, None, :]  # (n, 1, w)
    dy = rows + 0.5 - centres[:, 0, None, None]
    dx = cols + 0.5 - centres[:, 1, None, None]
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    u, v = (dx * cos + dy * sin) / rx[:, None, None], (-dx * sin + dy * cos) / ry[:, None, None]
    # distance to the outline in pixels (approximately), turned into an anti-aliased edge
    coverage = np.clip((1.0 - np.sqrt(u * u + v * v)) * np.minimum(rx, ry)[:, None, None] / edge + 0.5, 0.0, 1.0)
    rows, cols = np.broadcast_to(rows, coverage.shape), np.broadcast_to(cols, coverage.shape)
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size) & (coverage > 0)
    np.maximum.at(out, (rows[inside], cols[inside]), coverage[inside])
    return out


def _lumens(rng, grid, tissue, size, scale):
    """Gland lumens (coverage map) and their centres/radii; irregular outlines for malignant glands."""
    yy, xx = grid
    centres, radii, lumen = [], [], np.zeros(yy.shape)
    for _ in range(tissue.glands):
        r = tissue.gland_radius * scale * rng.uniform(0.85, 1.15)
        c = rng.uniform(r, size - r, 2)
        theta = np.arctan2(yy - c[0], xx - c[1])
        wobble = 1 + tissue.irregularity * np.sin(rng.integers(2, 5) * theta + rng.uniform(0, 2 * np.pi))
        dist = np.hypot(yy - c[0], xx - c[1]) / (r * wobble)
        lumen = np.maximum(lumen, np.clip((1 - dist) * r + 0.5, 0, 1))
        centres.append(c)
        radii.append(r)
    return lumen, np.array(centres).reshape(-1, 2), np.array(radii)


def _nuclei_positions(rng, tissue, size, scale, gland_centres, gland_radii):
    """Nuclear centres: epithelium lines the glands (a ring per lumen), the rest lie at random."""
    n = int(round(tissue.nuclei * scale * scale * rng.uniform(0.85, 1.15)))
    ring = []
    for c, r in zip(gland_centres, gland_radii):
        k = max(6, int(2 * np.pi * r / (2.6 * tissue.radius * scale)))
        angles = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 2 * np.pi)
        distance = r + tissue.radius * scale * (1.3 + rng.uniform(0, 1.5 * tissue.irregularity, k))
        ring.append(np.stack([c[0] + distance * np.sin(angles), c[1] + distance * np.cos(angles)], axis=1))
    ring = np.concatenate(ring) if ring else np.zeros((0, 2))
    scattered = rng.uniform(0, size, (max(n - len(ring), 0), 2))
    return np.concatenate([ring, scattered])


def render(rng: np.random.Generator, tissue_name: str, style_name: str, size: int = REFERENCE_SIZE) -> np.ndarray:
    """An RGB uint8 image (size x size) of `tissue_name` imaged in `style_name`."""
    tissue, style = TISSUES[tissue_name], STYLES[style_name]
    scale = size / REFERENCE_SIZE
    grid = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    lumen, gland_centres, gland_radii = _lumens(rng, grid, tissue, size, scale)
    centres = _nuclei_positions(rng, tissue, size, scale, gland_centres, gland_radii)
    n = len(centres)
    radius = tissue.radius * scale * rng.uniform(0.8, 1.25, n)
    rx, ry = radius * np.sqrt(tissue.elongation), radius / np.sqrt(tissue.elongation)
    # spindle cells stream along one direction; round cells have no orientation to speak of
    angles = rng.normal(rng.uniform(0, np.pi), 0.25, n) if tissue.elongation > 1 else rng.uniform(0, np.pi, n)
    positive = rng.random(n) < tissue.dab_positive if style.uses_dab else np.zeros(n, bool)

    nuclei = _ellipses(size, centres, rx, ry, angles)
    dab = _ellipses(size, centres[positive], rx[positive] * 1.15, ry[positive] * 1.15, angles[positive])

    stroma = np.ones((size, size))
    if tissue.fibres:  # wavy collagen bundles along the spindle direction
        direction = angles.mean() if n else 0.0
        along = grid[1] * np.cos(direction) + grid[0] * np.sin(direction)
        across = -grid[1] * np.sin(direction) + grid[0] * np.cos(direction)
        stroma = 0.75 + 0.45 * np.sin(across * 1.3 / scale + 0.8 * np.sin(along * 0.2 / scale))
    if style.cytoplasm_halo:  # cytology: no stroma, only cells with a halo of cytoplasm
        halo = _ellipses(size, centres, rx * 2.4, ry * 2.4, angles, edge=2.0)
        stroma = stroma * 0.15 + halo * style.cytoplasm_halo / max(style.stroma_eosin, 1e-6)
    stroma = stroma * (1 - lumen)

    strength = rng.uniform(0.8, 1.2, 3)  # per-image stain strength: labs and batches differ
    hematoxylin = strength[0] * (style.stroma_hematoxylin * (1 - lumen) + style.nuclear_hematoxylin * nuclei)
    eosin = strength[1] * style.stroma_eosin * stroma * (1 - 0.7 * nuclei)
    dab_map = strength[2] * 1.2 * dab
    vectors = [v + rng.normal(0, 0.04, 3) for v in (HEMATOXYLIN, EOSIN, DAB)]  # hue jitter
    density = hematoxylin[..., None] * vectors[0] + eosin[..., None] * vectors[1] + dab_map[..., None] * vectors[2]
    image = 255.0 * rng.uniform(0.9, 1.03) * np.exp(-np.clip(density, 0, None))
    image += rng.normal(0, 3.0, image.shape)

    image = np.rot90(image, int(rng.integers(4)))
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
