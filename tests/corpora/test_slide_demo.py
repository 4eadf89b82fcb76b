"""The slide demo corpus (corpora.slides.demo): every demo record names a slide, the diagnosis is only in the
tissue (glass and pen tiles carry nothing and are never chosen), the chosen tiles are the demo image's own pixels,
and the build is reproducible. The recipe: tests/recipes/test_slide_recipe.py."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from corpora.demo import build_demo
from corpora.slides import TileParams, open_slide, tile_slide
from corpora.slides.demo import TINT, build_slide_demo
from corpora.slides.sampling import SlideSampling, slide_images

SIZE = 48


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_slide_demo(tmp_path_factory.mktemp("slide_demo"), 0, n_train=4, n_eval=4, image_size=SIZE)


def test_every_record_names_a_slide(corpus):
    for name in ("pairs.jsonl", "sft.jsonl", "rl.jsonl", "eval/mcq.jsonl", "eval/yesno.jsonl"):
        rows = [json.loads(line) for line in (corpus.root / name).read_text().splitlines()]
        assert rows and all("images" not in r and (corpus.root / r["slide"]).is_file() for r in rows), name
    header = (corpus.root / "pairs.csv").read_text().splitlines()[0]
    assert header == "slide_path,caption,label"
    assert not (corpus.root / ".patches").exists()


def test_chosen_tiles_are_the_demo_image_and_glass_carries_nothing(corpus, tmp_path):
    patches = build_demo(tmp_path / "patches", 0, n_train=4, n_eval=4, image_size=SIZE)
    rec = json.loads(patches.rl.read_text().splitlines()[0])
    image = np.asarray(Image.open(patches.root / rec["images"][0]).convert("RGB")).astype(float)
    tinted = (image * TINT).round().astype(np.uint8)
    slide = corpus.root / json.loads(corpus.rl.read_text().splitlines()[0])["slide"]
    tiles = slide_images(slide, SlideSampling(k=2, mpp=0.5, size=SIZE, cache_dir=str(tmp_path / "c")))
    orientations = [tinted, tinted[:, ::-1], tinted[::-1], tinted[::-1, ::-1]]
    for tile in tiles:
        pixels = np.asarray(Image.open(tile))
        assert any(np.array_equal(pixels, o) for o in orientations)  # lossless: the image itself
    every = tile_slide(slide, TileParams(mpp=0.5, size=SIZE, min_tissue=0.0), cache_root=tmp_path / "c").records()
    tissue = sorted(r["tissue"] for r in every)
    assert len(every) == 16 and tissue[-4] > 0.8 and tissue[-5] < 0.1  # 4 tissue cells; glass and pen out
    with open_slide(slide) as s:
        assert (s.info.mpp, s.info.levels, s.info.width) == (0.5, 2, 4 * SIZE)


def test_same_seed_same_bytes(corpus, tmp_path):
    again = build_slide_demo(tmp_path / "again", 0, n_train=4, n_eval=4, image_size=SIZE)
    digest = lambda root: hashlib.sha256(b"".join(  # noqa: E731
        p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())).hexdigest()
    assert digest(again.root) == digest(corpus.root)
