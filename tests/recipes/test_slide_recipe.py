"""recipes.slide_r1 builds the slide demo corpus and hands one ``slides`` setting to every stage (the stages and the
evaluation then see the same K tiles of each slide)."""

SIZE = 48


def test_slide_recipe_gives_every_stage_the_same_tiles(monkeypatch, tmp_path):
    from recipes import patho_r1, slide_r1
    from stages.config import load_config

    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    seen = {}
    monkeypatch.setattr(patho_r1, "run", lambda cfg: seen.setdefault("cfg", cfg))
    cfg = load_config(slide_r1.SlideR1Config, ["slides.k=3", "demo.n_train=4", "demo.n_eval=4", f"demo.image_size={SIZE}"])
    slide_r1.run(cfg)
    got = seen["cfg"]
    assert got.stages == ["pretrain", "sft", "rl"]
    assert got.pretrain.slides.k == got.sft.slides.k == got.rl.slides.k == 3
    assert (tmp_path / "demo_corpora" / f"slides-n4-e4-s{SIZE}-seed0" / "demo.json").is_file()
    assert got.data.endswith(f"slides-n4-e4-s{SIZE}-seed0")
