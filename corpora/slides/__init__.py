"""Whole-slide images on OpenSlide: read a slide, find its tissue, tile it at a chosen µm/px, cache the tiles.

Public API (what corpora records, the stages, evaluation and the slide-navigation environment call)::

    from corpora.slides import open_slide, plan_tiles, tile_slide, TileParams, SlideError

    with open_slide("case.svs", mpp_fallback="objective") as slide:   # or "refuse"
        slide.info                      # SlideInfo: width, height, levels, downsamples, level_dimensions,
                                        #   mpp (µm per level-0 px), mpp_source, objective_power, vendor, associated
        slide.read_region(x, y, level, (w, h))          # RGB, top-left in level-0 pixels, white outside
        slide.read_region_mpp(x, y, mpp=0.5, size=224)  # RGB at 0.5 µm/px: best level, then resize
        slide.best_level(0.5)           # the level read_region_mpp reads for that µm/px
        slide.thumbnail(1024)           # whole slide, longest side 1024
        slide.associated("label")       # thumbnail / label / macro, as the format provides
        mask = slide.tissue_mask()      # TissueMask: .mask (bool, thumbnail grid), .fraction, .fractions(...), .overlay(img)
        plan_tiles(slide, mpp=0.5, size=224, overlap=0, min_tissue=0.5)  # [TileSpec(x, y, level, mpp, size, tissue)]

    tiles = tile_slide("case.svs", TileParams(mpp=0.5, size=224), cache_root=None)  # TileSet (cached)
    tiles.records(); tiles.paths(); tiles.summary; tiles.export(out_dir)
    tile_slides(paths, TileParams(...), processes=2)  # warm the cache for many slides; returns their errors

Every problem with a slide (missing, unsupported format, unreadable or truncated, no µm/px under ``refuse``, smaller
than a tile, a µm/px finer than the scan) raises ``SlideError`` whose message is one line naming the file; the CLI
prints it and exits 2. CLI: ``python -m corpora.slides info|tile|thumbnail`` (see corpora/slides/__main__.py).
The cache lives under ``$PATHOR1_HOME/cache/slides`` unless ``cache_root`` is given. This package imports no torch.
"""
from corpora.slides.reader import MPP_FALLBACKS, SLIDE_SUFFIXES, Slide, SlideError, SlideInfo, open_slide
from corpora.slides.tiling import (TileParams, TileSet, TileSpec, default_cache_root, plan_tiles, read_tiles, tile_slide,
                                   tile_slides)
from corpora.slides.tissue import TissueMask, tissue_array

__all__ = ["MPP_FALLBACKS", "SLIDE_SUFFIXES", "Slide", "SlideError", "SlideInfo", "TileParams", "TileSet",
           "TileSpec", "TissueMask", "default_cache_root", "open_slide", "plan_tiles", "read_tiles", "tile_slide",
           "tile_slides", "tissue_array"]
