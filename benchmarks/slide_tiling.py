"""Tissue tiles per second: corpora.slides.tile_slide against a loop over OpenSlide's DeepZoomGenerator, on the
same slides, the same grid (224 px at 0.5 µm/px from 0.25 µm/px scans, no overlap) and the same tissue filter
(the thumbnail mask of corpora.slides.tissue, minimum fraction 0.5), both writing the kept tiles as PNG.

The DeepZoom loop is the common recipe (openslide-python's examples/deepzoom/deepzoom_tile.py, CLAM-style
patching): every tile of the level is read with ``get_tile`` and then kept or dropped by the filter. tile_slide
looks at the mask first and reads only the kept tiles. A second baseline figure, the DeepZoom loop that also
checks the mask before reading, is reported as ``speedup_vs_prefiltered`` (there the only differences are
DeepZoom's per-tile compositing and the reader threads).

The cache pass: ``tile_slide`` again (content-addressed hit: no slide opened) plus decoding every tile PNG, as a
second epoch does; ``cache_speedup`` = the DeepZoom loop's time (what re-tiling every epoch costs) / that time.
Last line: one JSON object; "speedup" = DeepZoom loop time / tile_slide time (first pass).

    python benchmarks/slide_tiling.py [--slides 3] [--side 4096] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpora.slides import TileParams, open_slide, tile_slide  # noqa: E402
from corpora.slides.synthetic import tissue_image, write_svs  # noqa: E402
from corpora.slides.tissue import mask_size  # noqa: E402

MPP, SIZE, MIN_TISSUE = 0.5, 224, 0.5


def make_slides(folder: Path, n: int, side: int) -> list[Path]:
    """``n`` Aperio SVS of side x side px at 0.25 µm/px, about a third tissue: drawn at 1/8 scale, then
    enlarged (bilinear, so the tissue keeps a texture JPEG has to code)."""
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        small = side // 8
        blobs = [(rng.uniform(0.2, 0.8) * small, rng.uniform(0.2, 0.8) * small, rng.uniform(0.12, 0.22) * small,
                  rng.uniform(0.12, 0.22) * small) for _ in range(3)]
        img = np.asarray(Image.fromarray(tissue_image(small, small, blobs, seed=i)).resize((side, side),
                                                                                            Image.BILINEAR))
        paths.append(write_svs(folder / f"slide{i}.svs", img, mpp=0.25, power=40, n_levels=3, label=False))
    return paths


def deepzoom_loop(paths, out: Path, *, prefilter: bool) -> int:
    """The DeepZoom recipe: get_tile at the level of 0.5 µm/px, keep full tiles whose mask fraction passes."""
    from openslide.deepzoom import DeepZoomGenerator

    kept = 0
    for path in paths:
        with open_slide(path) as slide:
            factor = MPP / slide.info.mpp  # level-0 px per output px
            mask = slide.tissue_mask(mask_size(slide.info.width, slide.info.height, SIZE * factor))  # tile_slide's
            dz = DeepZoomGenerator(slide._osr, tile_size=SIZE, overlap=0, limit_bounds=False)
            level = dz.level_count - 1 - int(round(np.log2(factor)))
            cols, rows = dz.level_tiles[level]
            tile0 = SIZE * factor
            for row in range(rows):
                for col in range(cols):
                    x, y = col * tile0, row * tile0
                    if x + tile0 > slide.info.width or y + tile0 > slide.info.height:
                        continue  # partial edge tile: tile_slide's grid has full tiles only
                    fraction = mask.fractions(np.array([x]), np.array([y]), tile0, tile0)[0]
                    if prefilter and fraction < MIN_TISSUE:
                        continue
                    tile = dz.get_tile(level, (col, row))
                    if fraction >= MIN_TISSUE:
                        tile.save(out / f"{path.stem}_{col}_{row}.png", compress_level=1)
                        kept += 1
    return kept


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="benchmarks/slide_tiling.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", type=int, default=3)
    p.add_argument("--side", type=int, default=4096, help="level-0 side of each slide in pixels")
    p.add_argument("--workers", type=int, default=2, help="tile_slide reader threads")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, made = timed(lambda: make_slides(tmp, a.slides, a.side))
        paths = sorted(tmp.glob("slide*.svs"))
        print(f"wrote {a.slides} slides of {a.side}x{a.side} px in {made:.1f} s")
        params = TileParams(mpp=MPP, size=SIZE, min_tissue=MIN_TISSUE)
        (tmp / "dz").mkdir()
        (tmp / "dzp").mkdir()
        baseline_tiles, baseline = timed(lambda: deepzoom_loop(paths, tmp / "dz", prefilter=False))
        _, prefiltered = timed(lambda: deepzoom_loop(paths, tmp / "dzp", prefilter=True))
        sets, ours = timed(lambda: [tile_slide(s, params, cache_root=tmp / "cache", workers=a.workers) for s in paths])

        def cache_pass():
            n = 0
            for s in paths:
                for tile in tile_slide(s, params, cache_root=tmp / "cache").paths():
                    with Image.open(tile) as im:
                        im.load()
                    n += 1
            return n

        cached_tiles, cached = timed(cache_pass)
        our_tiles = sum(t.summary["tiles"] for t in sets)
    assert our_tiles == baseline_tiles == cached_tiles, (our_tiles, baseline_tiles, cached_tiles)
    result = {"benchmark": "slide_tiling", "slides": a.slides, "side": a.side, "mpp": MPP, "size": SIZE,
              "min_tissue": MIN_TISSUE, "workers": a.workers, "tiles": our_tiles,
              "deepzoom_s": round(baseline, 3), "deepzoom_prefiltered_s": round(prefiltered, 3),
              "tile_slide_s": round(ours, 3), "cache_pass_s": round(cached, 3),
              "deepzoom_tiles_per_s": round(our_tiles / baseline, 1),
              "tile_slide_tiles_per_s": round(our_tiles / ours, 1), "cache_tiles_per_s": round(our_tiles / cached, 1),
              "speedup_vs_prefiltered": round(prefiltered / ours, 2),
              "cache_vs_first_pass": round(ours / cached, 2), "cache_speedup": round(baseline / cached, 2),
              "speedup": round(baseline / ours, 2)}
    print(f"DeepZoom loop: {baseline:.2f} s, prefiltered: {prefiltered:.2f} s, tile_slide: {ours:.2f} s, "
          f"cache pass: {cached:.2f} s ({our_tiles} tiles)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
