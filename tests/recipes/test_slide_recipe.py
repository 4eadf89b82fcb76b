"""recipes.slide_r1 builds the slide demo corpus, tiles every slide it names before any stage starts, and hands one
``slides`` setting to every stage (the stages and the evaluation then see the same K tiles of each slide)."""
import json
import shutil

SIZE = 48


def test_slide_recipe_gives_every_stage_the_same_tiles(monkeypatch, tmp_path):
    from recipes import patho_r1, slide_r1
    from stages.config import load_config

    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    seen = {}
    monkeypatch.setattr(patho_r1, "run", lambda cfg: seen.update(cfg=cfg))
    cfg = load_config(slide_r1.SlideR1Config, ["slides.k=3", f"slides.size={SIZE}", "demo.n_train=4", "demo.n_eval=4",
                                               f"demo.image_size={SIZE}"])
    slide_r1.run(cfg)
    got = seen["cfg"]
    assert got.stages == ["pretrain", "sft", "rl"]
    assert got.pretrain.slides.k == got.sft.slides.k == got.rl.slides.k == 3
    assert (tmp_path / "demo_corpora" / f"slides-n4-e4-s{SIZE}-seed0" / "demo.json").is_file()
    assert got.data.endswith(f"slides-n4-e4-s{SIZE}-seed0")
    # the cache is warm before the stages: one tile set per slide (4 train + 4 held-out), each with its 4 tissue tiles
    sets = sorted((tmp_path / "cache" / "slides" / "tiles").glob("*/*/summary.json"))
    assert len(sets) == 8 and {json.loads(s.read_text())["tiles"] for s in sets} == {4}


def test_warm_tile_cache_tiles_each_named_slide_once_and_leaves_bad_ones_to_validation(tmp_path):
    from corpora.slides.demo import build_slide_demo
    from corpora.slides.sampling import SlideSampling
    from corpora.slides.tiling import tile_slides
    from recipes.slide_r1 import corpus_slides, warm_tile_cache

    corpus = build_slide_demo(tmp_path / "c", 0, n_train=4, n_eval=4, image_size=SIZE).root
    assert len(corpus_slides(corpus)) == 8  # 2 sft + 1 rl + 1 pairs record per slide: named 4 times, tiled once
    cache = tmp_path / "cache"
    sampling = SlideSampling(k=2, size=SIZE, cache_dir=str(cache))
    assert warm_tile_cache(corpus, sampling) == 8
    assert len(list((cache / "tiles").glob("*/*/summary.json"))) == 8
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(b"II*\x00not a tiff")
    good = corpus_slides(corpus)[0]
    shutil.copy(good, tmp_path / "copy.tiff")  # same bytes: a cache hit, no new set
    errors = tile_slides([broken, tmp_path / "copy.tiff"], sampling.params(), cache_root=cache, processes=2)
    assert len(errors) == 1 and str(broken) in errors[0] and "\n" not in errors[0]
    assert len(list((cache / "tiles").glob("*/*/summary.json"))) == 8
    assert not list((cache / "tiles").glob("*/.staging-*"))  # nothing half-written

