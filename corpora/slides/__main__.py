"""Command line of corpora.slides (the last printed line is one JSON object):

    python -m corpora.slides info SLIDE [--mpp-fallback objective|refuse]
    python -m corpora.slides tile SLIDE --out DIR [--mpp 0.5] [--size 224] [--overlap 0] [--min-tissue 0.5]
                                   [--workers 1] [--cache DIR]
    python -m corpora.slides thumbnail SLIDE --out F.png [--size 1024] [--mask]

A bad slide or parameter prints one line naming the file and exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from corpora.slides.reader import MPP_FALLBACKS, SlideError, open_slide
from corpora.slides.tiling import TileParams, tile_slide


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m corpora.slides", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("slide", help="a slide file OpenSlide reads (SVS, NDPI, MRXS, SCN, pyramidal TIFF...)")
    common.add_argument("--mpp-fallback", choices=MPP_FALLBACKS, default="objective",
                        help="a slide without µm/px: use 10 / objective power (objective) or refuse (exit 2)")
    sub.add_parser("info", parents=[common], help="levels, downsamples, µm/px, objective power, vendor")
    tile = sub.add_parser("tile", parents=[common], help="tissue tiles at a µm/px into DIR (+ DIR/tiles.jsonl)")
    tile.add_argument("--out", required=True, help="output folder: tiles/*.png, tiles.jsonl, summary.json")
    tile.add_argument("--mpp", type=float, default=0.5, help="µm per output pixel (default 0.5, about 20x)")
    tile.add_argument("--size", type=int, default=224, help="tile side in output pixels")
    tile.add_argument("--overlap", type=int, default=0, help="overlap of neighbouring tiles in output pixels")
    tile.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction of a kept tile")
    tile.add_argument("--workers", type=int, default=1, help="reader threads")
    tile.add_argument("--cache", default=None, help="tile cache root (default $PATHOR1_HOME/cache/slides)")
    thumb = sub.add_parser("thumbnail", parents=[common], help="a PNG of the whole slide (--mask: tissue tinted)")
    thumb.add_argument("--out", required=True, help="output PNG")
    thumb.add_argument("--size", type=int, default=1024, help="longest side in pixels")
    thumb.add_argument("--mask", action="store_true", help="overlay the tissue mask")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = _run(args)
    except SlideError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def _run(args) -> dict:
    if args.command == "tile":
        params = TileParams(mpp=args.mpp, size=args.size, overlap=args.overlap, min_tissue=args.min_tissue,
                            mpp_fallback=args.mpp_fallback)
        tiles = tile_slide(args.slide, params, cache_root=args.cache, workers=args.workers)
        out = tiles.export(args.out)
        summary = tiles.summary
        return {"slide": summary["slide"], "tiles": summary["tiles"], "out": str(out.resolve()),
                "mpp": args.mpp, "size": args.size, "overlap": args.overlap, "min_tissue": args.min_tissue,
                "tissue_fraction": summary["tissue_fraction"], "cache": str(tiles.root)}
    with open_slide(args.slide, mpp_fallback=args.mpp_fallback) as slide:
        info = slide.info
        if args.command == "info":
            for key in ("width", "height", "levels", "downsamples", "mpp", "objective_power", "vendor"):
                print(f"{key}: {getattr(info, key)}")
            return info.to_json()
        thumb = slide.thumbnail(args.size)
        mask = slide.tissue_mask() if args.mask else None
        image = mask.overlay(thumb) if mask is not None else thumb
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        image.save(args.out)
        return {"slide": info.path, "out": str(Path(args.out).resolve()), "width": image.width,
                "height": image.height, **({"tissue_fraction": round(mask.fraction, 4)} if mask is not None else {})}


if __name__ == "__main__":
    sys.exit(main())
