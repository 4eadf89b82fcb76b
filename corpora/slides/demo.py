"""The slide demo corpus: the patch demo (corpora.demo) turned into small pyramidal TIFF slides whose diagnosis
shows only in their tissue.

Each demo image becomes one slide of 4 x 4 cells (cell = the image size, at 0.5 µm/px): glass everywhere, a blue
pen stroke across a glass row, and one 2 x 2 block of tissue, aligned on the grid, holding the image in four
orientations, tinted pink so that its pale background still reads as stained tissue (a multiplicative tint, the
same for every class: it hides nothing the classes differ by). So every glass tile (and the pen) is the same for
all classes, the tissue tiles carry the class, and a tile chosen by tissue (``slides.select=tissue``) sees it.
Every record of the patch demo is kept, with ``"slide"`` in place of ``images`` (pairs.csv: ``slide_path``); the
layout is the demo's (docs/ARCHITECTURE.md), slides in ``slides/{train,eval}/``.

    python -m corpora.slides.demo OUT [--seed 0 --n-train 400 --n-eval 400 --image-size 112]
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from corpora.demo import DEMO_IMAGE_SIZE, DEMO_N_EVAL, DEMO_N_TRAIN, DemoCorpus, build_demo
from corpora.files import build_folder_once
from corpora.slides.synthetic import GLASS, write_pyramidal_tiff

GRID = 4  # cells per side
TINT = np.array([1.0, 0.84, 0.92])  # white -> light eosin pink; multiplicative, so texture is kept
PEN = (40, 70, 190)
RECORD_FILES = ("pairs.jsonl", "sft.jsonl", "rl.jsonl", "eval/mcq.jsonl", "eval/yesno.jsonl", "eval/retrieval.jsonl")


def slide_image(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The slide of one demo image (see the module docstring)."""
    size = image.shape[0]
    side = GRID * size
    canvas = np.empty((side, side, 3), np.int16)
    canvas[:] = GLASS
    canvas += rng.integers(-3, 4, canvas.shape, dtype=np.int16)  # glass is not perfectly flat
    tissue = (image[..., :3].astype(float) * TINT).round().astype(np.int16)
    block = np.concatenate([np.concatenate([tissue, tissue[:, ::-1]], 1),
                            np.concatenate([tissue[::-1], tissue[::-1, ::-1]], 1)], 0)
    r, c = (int(v) * 2 for v in rng.integers(0, 2, 2))  # a block aligned on 2-cell boundaries
    canvas[r * size:(r + 2) * size, c * size:(c + 2) * size] = block
    pen_row = (2 - r) * size + size // 2  # a glass row outside the block
    canvas[pen_row:pen_row + max(2, size // 16), size // 4: side - size // 4] = PEN
    return np.clip(canvas, 0, 255).astype(np.uint8)


def build_slide_demo(out_dir, seed: int = 0, *, n_train: int = DEMO_N_TRAIN, n_eval: int = DEMO_N_EVAL,
                     image_size: int = DEMO_IMAGE_SIZE) -> DemoCorpus:
    """Write the slide demo corpus into ``out_dir`` (same seed and sizes -> the same questions and pixels)."""
    out = Path(out_dir)
    patches = out / ".patches"
    build_demo(patches, seed, n_train=n_train, n_eval=n_eval, image_size=image_size)
    rng = np.random.default_rng(seed + 1000)
    slides: dict[str, str] = {}
    for image in sorted((patches / "images").rglob("*.png")):
        rel = image.relative_to(patches)
        target = Path("slides", *rel.parts[1:]).with_suffix(".tiff")
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        pixels = slide_image(np.asarray(Image.open(image).convert("RGB")), rng)
        # lossless, 2 levels: the tiles must show the demo image's pixels, not JPEG's
        write_pyramidal_tiff(out / target, pixels, mpp=0.5, n_levels=2, tile=64, compression="zlib")
        slides[str(rel)] = str(target)
    for name in RECORD_FILES:
        if (patches / name).is_file():
            _rewrite_jsonl(patches / name, out / name, slides)
    with open(patches / "pairs.csv", newline="") as src, open(out / "pairs.csv", "w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, ["slide_path", "caption", "label"])
        writer.writeheader()
        for row in reader:
            writer.writerow({"slide_path": slides[row["image_path"]], "caption": row["caption"], "label": row["label"]})
    meta = json.loads((patches / "demo.json").read_text())
    meta["slides"] = {"grid": GRID, "cell": image_size, "mpp": 0.5, "from": "corpora.slides.demo"}
    (out / "demo.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(patches)
    return DemoCorpus.at(out)


def _rewrite_jsonl(src: Path, dst: Path, slides: dict[str, str]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8") as fh, open(dst, "w", encoding="utf-8") as out:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                images = record.pop("images")
                record["slide"] = slides[images[0]]
                out.write(json.dumps(record) + "\n")


def slide_demo_corpus(home, seed: int = 0, *, n_train: int = DEMO_N_TRAIN, n_eval: int = DEMO_N_EVAL,
                      image_size: int = DEMO_IMAGE_SIZE) -> DemoCorpus:
    """THE slide demo corpus under ``home/demo_corpora/slides-n{n_train}-e{n_eval}-s{image_size}-seed{seed}``,
    built once, atomically."""
    final = Path(home) / "demo_corpora" / f"slides-n{n_train}-e{n_eval}-s{image_size}-seed{seed}"
    build_folder_once(final, lambda staging: build_slide_demo(staging, seed, n_train=n_train, n_eval=n_eval,
                                                              image_size=image_size), "demo.json")
    return DemoCorpus.at(final)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m corpora.slides.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=DEMO_N_TRAIN)
    p.add_argument("--n-eval", type=int, default=DEMO_N_EVAL)
    p.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE)
    a = p.parse_args(argv)
    corpus = build_slide_demo(a.out, a.seed, n_train=a.n_train, n_eval=a.n_eval, image_size=a.image_size)
    print(json.dumps({"root": str(corpus.root), "slides": len(list((corpus.root / "slides").rglob("*.tiff")))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
