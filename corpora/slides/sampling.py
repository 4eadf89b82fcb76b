"""How a slide record becomes images for the model: K tiles of its cached tiling, chosen by tissue, at random
with a seed, or ranked by a PathoCLIP checkpoint's similarity to the record's question or caption; optionally
the slide's thumbnail first.

A corpora record may name ``"slide": PATH`` (CSV: a ``slide_path`` column) instead of ``images``;
``corpora.records.image_list`` calls ``slide_images`` with the ``SlideSampling`` the stage's config holds
(``slides.k=8 slides.select=random ...``). Tiling goes through the content-addressed cache (corpora.slides.tiling):
validation tiles each slide once and every later read (training epochs, evaluation) opens no slide.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from corpora.slides.reader import MPP_FALLBACKS, SlideError
from corpora.slides.tiling import TileParams, tile_slide

SELECTIONS = ("tissue", "random", "clip")


def _f(default, doc):
    return field(default=default, metadata={"help": doc})


@dataclass
class SlideSampling:
    """The ``slides.*`` fields of every stage and of evaluation: how a slide record becomes images."""

    k: int = _f(8, "Tiles per slide given to the model.")
    select: str = _f("tissue", "Which tiles: tissue (most tissue first), random (seeded), clip (ranked by a "
                               "PathoCLIP checkpoint's similarity to the question or caption; needs slides.clip_model).")
    seed: int = _f(0, "Seed of select=random (with the slide's hash: the same slide gets the same tiles).")
    thumbnail: bool = _f(False, "Put the whole-slide thumbnail (longest side slides.size) before the tiles.")
    mpp: float = _f(0.5, "Tile resolution in µm per pixel (0.5 is about 20x).")
    size: int = _f(224, "Tile side in pixels.")
    overlap: int = _f(0, "Overlap of neighbouring tiles in pixels.")
    min_tissue: float = _f(0.5, "Minimum tissue fraction of a tile (thumbnail mask).")
    mpp_fallback: str = _f("objective", "A slide without µm/px: objective (10 / objective power) or refuse.")
    clip_model: str = _f("", "PathoCLIP checkpoint (a registry ref such as pathoclip:latest, or an exported "
                             "open_clip folder) that ranks tiles for select=clip.")
    cache_dir: str = _f("", "Tile cache root (default $PATHOR1_HOME/cache/slides).")

    def __post_init__(self):
        if self.select not in SELECTIONS:
            raise ValueError(f"slides.select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        if self.k < 1:
            raise ValueError(f"slides.k must be >= 1, got {self.k}")
        if self.mpp_fallback not in MPP_FALLBACKS:
            raise ValueError(f"slides.mpp_fallback must be one of {', '.join(MPP_FALLBACKS)}, got {self.mpp_fallback!r}")
        if not (self.mpp > 0 and self.size >= 8 and 0 <= self.overlap < self.size and 0 <= self.min_tissue <= 1):
            raise ValueError(f"slides.* expects mpp > 0, size >= 8, 0 <= overlap < size and min_tissue in [0, 1], got "
                             f"mpp={self.mpp} size={self.size} overlap={self.overlap} min_tissue={self.min_tissue}")
        if self.select == "clip" and not self.clip_model:
            raise ValueError("slides.select=clip needs slides.clip_model (a PathoCLIP checkpoint)")

    def params(self) -> TileParams:
        return TileParams(mpp=self.mpp, size=self.size, overlap=self.overlap, min_tissue=self.min_tissue,
                          mpp_fallback=self.mpp_fallback)

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self, resolve) -> "SlideSampling":
        """A copy whose ``clip_model`` is a folder: ``resolve`` (the caller's registry, e.g.
        ``stages.registry.Registry().resolve``) turns ``pathoclip:latest`` into one; corpora knows no registry."""
        if self.select != "clip" or Path(self.clip_model).is_dir():
            return self
        return replace(self, clip_model=str(resolve(self.clip_model)))


def slide_images(path, sampling: SlideSampling | None = None, *, text: str = "") -> list[str]:
    """The image paths a slide record stands for: ``sampling.k`` tiles in reading order (row-major on the
    slide), the thumbnail first if asked. Raises SlideError (one line naming the slide)."""
    sampling = sampling or SlideSampling()
    tiles = tile_slide(path, sampling.params(), cache_root=sampling.cache_dir or None)
    records = tiles.records()
    if not records:
        raise SlideError(f"{path}: expected at least one tile with >= {sampling.min_tissue:g} tissue at "
                         f"{sampling.mpp:g} µm/px, found none; lower slides.min_tissue or check the slide")
    chosen = _choose(records, sampling, tiles.summary["sha256"], text, tiles.root)
    paths = [str(tiles.root / records[i]["file"]) for i in sorted(chosen)]
    return ([str(tiles.root / "thumbnail.png")] if sampling.thumbnail else []) + paths


def _choose(records: list[dict], sampling: SlideSampling, slide_sha: str, text: str, root: Path) -> list[int]:
    k = min(sampling.k, len(records))
    if sampling.select == "tissue":
        return sorted(range(len(records)), key=lambda i: (-records[i]["tissue"], i))[:k]
    if sampling.select == "random":
        return random.Random(f"{sampling.seed}:{slide_sha}").sample(range(len(records)), k)
    from corpora.slides.ranking import clip_scores

    scores = clip_scores(sampling.clip_model, [str(root / r["file"]) for r in records], text)
    return sorted(range(len(records)), key=lambda i: (-scores[i], i))[:k]
