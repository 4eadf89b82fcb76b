"""Tiling a slide at a requested µm/px, and the content-addressed tile cache.

``plan_tiles`` lays a grid of full tiles over level 0 (tile size and overlap in output pixels at the requested
µm/px) and keeps those whose tissue fraction on the thumbnail mask reaches ``min_tissue``; background tiles are
never read. ``tile_slide`` reads the kept tiles into a folder of the cache keyed by the slide's content hash and
the parameters: built in a staging folder and renamed into place (corpora.files.build_folder_once), so a crash
or a corrupt tile mid-way leaves nothing, and a second pass (another epoch, another run) opens no slide.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from corpora.files import build_folder_once, write_text_atomic
from corpora.slides.reader import SlideError, open_slide
from corpora.slides.tissue import mask_size

# Bump when tile pixels or the mask change for the same parameters: old cache entries are then never reused.
CACHE_VERSION = 5
SUMMARY = "summary.json"


@dataclass(frozen=True)
class TileSpec:
    """One tile: top-left (x, y) in level-0 pixels, the level it is read from, its µm/px, side in output pixels,
    and the fraction of it the tissue mask covers."""

    x: int
    y: int
    level: int
    mpp: float
    size: int
    tissue: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TileParams:
    mpp: float = 0.5
    size: int = 224
    overlap: int = 0
    min_tissue: float = 0.5
    thumb_size: int = 0  # tissue-mask thumbnail side; 0 = by tile size (corpora.slides.tissue.mask_size)
    mpp_fallback: str = "objective"

    def check(self, path) -> None:
        if not (isinstance(self.size, int) and self.size >= 8):
            raise SlideError(f"{path}: expected a tile size >= 8 pixels, found {self.size!r}; pass e.g. --size 224 (a stage: slides.size=224)")
        if not (isinstance(self.overlap, int) and 0 <= self.overlap < self.size):
            raise SlideError(f"{path}: expected 0 <= overlap < size ({self.size}), found {self.overlap!r}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise SlideError(f"{path}: expected a minimum tissue fraction in [0, 1], found {self.min_tissue!r}")

    def key(self) -> dict:
        return {**asdict(self), "version": CACHE_VERSION}


def plan_tiles(slide, *, mpp: float, size: int, overlap: int = 0, min_tissue: float = 0.5, mask=None,
               thumb_size: int = 0) -> list[TileSpec]:
    """Every full tile of the grid whose tissue fraction is at least ``min_tissue`` (row-major order)."""
    TileParams(mpp=mpp, size=size, overlap=overlap, min_tissue=min_tissue).check(slide.path)
    factor = slide.level0_per_pixel(mpp)
    tile0, stride0 = size * factor, (size - overlap) * factor
    width, height = slide.info.width, slide.info.height
    if width < tile0 or height < tile0:
        raise SlideError(f"{slide.path}: expected a slide of at least one tile ({tile0:.0f} level-0 px = {size} px at "
                         f"{mpp:g} µm/px), found {width}x{height}; pass a smaller --size or a finer --mpp (a stage: "
                         "slides.size / slides.mpp)")
    nx, ny = int((width - tile0) // stride0) + 1, int((height - tile0) // stride0) + 1
    gx, gy = np.meshgrid(np.arange(nx) * stride0, np.arange(ny) * stride0)
    xs, ys = np.round(gx.ravel()).astype(np.int64), np.round(gy.ravel()).astype(np.int64)
    mask = mask if mask is not None else slide.tissue_mask(thumb_size or mask_size(width, height, tile0))
    fractions = mask.fractions(xs.astype(float), ys.astype(float), tile0, tile0)
    level = slide.best_level(mpp)
    keep = np.flatnonzero(fractions >= min_tissue - 1e-9)
    return [TileSpec(int(xs[k]), int(ys[k]), level, float(mpp), int(size), round(float(fractions[k]), 4))
            for k in keep]


def read_tiles(slide, specs, workers: int = 1):
    """The tiles' RGB images in order; ``workers`` threads (OpenSlide decodes without holding the GIL)."""
    def one(spec):
        return slide.read_region_mpp(spec.x, spec.y, spec.mpp, spec.size)

    if workers <= 1:
        return [one(s) for s in specs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, specs))


# ---- the cache ---------------------------------------------------------------------------------------------------
def default_cache_root() -> Path:
    # Same root as the registry ($PATHOR1_HOME, default ./runs); corpora may not import stages.registry.home.
    return Path(os.environ.get("PATHOR1_HOME") or "runs").expanduser().absolute() / "cache" / "slides"


def slide_hash(path, cache_root) -> str:
    """SHA-256 of the slide file's bytes, remembered per (path, size, mtime) so that a second pass reads nothing:
    the cache is keyed by content (a copied or renamed slide hits; an edited one misses)."""
    path = Path(path).resolve()
    st = path.stat()
    memo_key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    memo = Path(cache_root) / "hashes" / memo_key
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(memo, digest.hexdigest())
    return digest.hexdigest()


@dataclass(frozen=True)
class TileSet:
    """A cached tiling: ``root/tiles.jsonl`` (one TileSpec + ``file`` per line), ``root/tiles/*.png``,
    ``root/thumbnail.png`` (the whole slide, longest side = the tile size: what a prompt shows first),
    ``root/summary.json`` (slide info, parameters, counts; written last: its presence marks the set complete)."""

    root: Path

    @property
    def summary(self) -> dict:
        return json.loads((self.root / SUMMARY).read_text())

    def records(self) -> list[dict]:
        with open(self.root / "tiles.jsonl", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def paths(self) -> list[Path]:
        return [self.root / r["file"] for r in self.records()]

    def export(self, out_dir) -> Path:
        """Copy the set (hard links where the file system allows) to ``out_dir``; returns it."""
        out = Path(out_dir)
        (out / "tiles").mkdir(parents=True, exist_ok=True)
        for rel in [r["file"] for r in self.records()] + ["thumbnail.png", "tiles.jsonl", SUMMARY]:
            target = out / rel
            if target.exists():
                target.unlink()
            try:
                os.link(self.root / rel, target)
            except OSError:
                shutil.copyfile(self.root / rel, target)
        return out


def tile_set_root(image) -> Path | None:
    """The tile set (a cache entry, or a folder ``python -m corpora.slides tile --out`` exported) that ``image`` is
    a tile or the thumbnail of, else None: how a split or the leakage check knows two images came from one slide."""
    image = Path(image)
    root = image.parent.parent if image.parent.name == "tiles" else image.parent
    return root if image.name != SUMMARY and (root / SUMMARY).is_file() and (root / "tiles.jsonl").is_file() else None


@functools.lru_cache(maxsize=4096)
def _tile_set_slide(root: Path) -> str | None:
    try:
        return json.loads((root / SUMMARY).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


def slide_of_image(image) -> str | None:
    """The SHA-256 of the slide whose tile (or thumbnail) ``image`` is, from its tile set's summary; None for an
    image that is not part of a tile set. The same slide under any name or tiling parameters gives one hash."""
    root = tile_set_root(image)
    return None if root is None else _tile_set_slide(root)


def tile_slide(path, params: TileParams | None = None, *, cache_root=None, workers: int = 1) -> TileSet:
    """The cached tiles of ``path`` at ``params``: built on the first call (one slide open), read from the cache
    on every later one (no slide opened, no file read: the content hash is remembered per path, size and mtime)."""
    params = params or TileParams()
    params.check(path)
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    if not Path(path).is_file():
        raise SlideError(f"{path}: expected a slide file, found nothing; check the path")
    content = slide_hash(path, cache_root)
    key = hashlib.sha256(json.dumps({"slide": content, **params.key()}, sort_keys=True).encode()).hexdigest()
    final = cache_root / "tiles" / key[:2] / key
    if (final / SUMMARY).is_file():
        return TileSet(final)
    build_folder_once(final, lambda staging: _build(path, params, content, staging, workers), SUMMARY)
    return TileSet(final)


def tile_slides(paths, params: TileParams | None = None, *, cache_root=None, processes: int = 1) -> list[str]:
    """Warm the cache for many slides, ``processes`` slides at a time (tiling one small slide is mostly Python,
    PNG and mask work, so threads would share one core); returns the one-line errors of the slides that could not be
    tiled, in the order of ``paths`` (validation then names them with file:line)."""
    paths = [str(p) for p in paths]
    if processes <= 1 or len(paths) < 2:
        return [e for e in (_tile_or_error(p, params, cache_root) for p in paths) if e]
    import multiprocessing

    # fork: the workers need nothing but this module, and spawning would re-import the caller's packages
    with ProcessPoolExecutor(min(processes, len(paths)), mp_context=multiprocessing.get_context("fork")) as pool:
        errors = pool.map(_tile_or_error, paths, [params] * len(paths), [cache_root] * len(paths),
                          chunksize=max(1, len(paths) // (8 * processes)))
        return [e for e in errors if e]


def _tile_or_error(path: str, params, cache_root) -> str | None:
    try:
        tile_slide(path, params, cache_root=cache_root)
    except SlideError as e:
        return str(e)
    return None


def _build(path, params: TileParams, content: str, staging: Path, workers: int) -> None:
    (staging / "tiles").mkdir(parents=True)
    with open_slide(path, mpp_fallback=params.mpp_fallback) as slide:
        tile0 = params.size * slide.level0_per_pixel(params.mpp)
        mask = slide.tissue_mask(params.thumb_size or mask_size(slide.info.width, slide.info.height, tile0))
        slide.thumbnail(params.size).save(staging / "thumbnail.png")
        specs = plan_tiles(slide, mpp=params.mpp, size=params.size, overlap=params.overlap,
                           min_tissue=params.min_tissue, mask=mask)
        lines = []
        for start in range(0, len(specs), 64):  # bounded memory: 64 tiles decoded at a time
            batch = specs[start:start + 64]
            for i, (spec, image) in enumerate(zip(batch, read_tiles(slide, batch, workers)), start):
                rel = f"tiles/{i:06d}_x{spec.x}_y{spec.y}.png"
                image.save(staging / rel, compress_level=1)  # fast: tiles are a cache, not an archive
                lines.append(json.dumps({**spec.to_json(), "file": rel}))
        (staging / "tiles.jsonl").write_text("".join(line + "\n" for line in lines))
        summary = {"slide": str(Path(path).resolve()), "sha256": content, "info": slide.info.to_json(),
                   "params": params.key(), "tiles": len(specs), "tissue_fraction": round(mask.fraction, 4)}
    (staging / SUMMARY).write_text(json.dumps(summary, indent=1))
