"""The ``slides.*`` fields of the stage configs (corpora.slides.sampling.SlideSampling) parse from the command
line, refuse a bad value with the field's name, and decide the images a stage trains on from slide records."""
import json

import pytest

from corpora.slides.synthetic import tissue_image, write_svs
from stages.config import ConfigError, load_config
from stages.rl.config import RLConfig
from stages.sft import SFTConfig, training_rows


def test_stage_configs_carry_the_slide_fields():
    cfg = load_config(RLConfig, ["slides.k=4", "slides.select=random", "slides.thumbnail=true"])
    assert (cfg.slides.k, cfg.slides.select, cfg.slides.thumbnail) == (4, "random", True)
    assert load_config(SFTConfig, ["slides.mpp=1.0"]).slides.mpp == 1.0
    with pytest.raises(ConfigError, match="slides.select must be one of tissue, random, clip"):
        load_config(SFTConfig, ["slides.select=best"])
    with pytest.raises(ConfigError, match="slides.select=clip needs slides.clip_model"):
        load_config(RLConfig, ["slides.select=clip"])
    from stages.opd import OPDConfig

    assert load_config(OPDConfig, ["teacher=tiny:qwen2_5_vl", "slides.k=2"]).slides.k == 2


def test_sft_rows_from_slide_records_are_k_tiles_plus_thumbnail(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path / "home"))
    write_svs(tmp_path / "case.svs", tissue_image(512, 768, [(200, 250, 150, 120), (560, 260, 150, 200)]),
              mpp=0.5, n_levels=2, tile=128)
    record = {"slide": "case.svs", "question": "Is there tissue?", "answer": "yes", "reasoning": "Pink stroma."}
    (tmp_path / "sft.jsonl").write_text(json.dumps(record) + "\n")
    cfg = load_config(SFTConfig, [f"data={tmp_path / 'sft.jsonl'}", "slides.k=3", "slides.size=64",
                                  "slides.thumbnail=true"])
    rows, _ = training_rows(cfg)
    images = rows[0]["images"]
    assert len(images) == 4 and images[0].endswith("thumbnail.png")
    assert all(str(tmp_path / "home" / "cache" / "slides") in p for p in images)  # the tile cache, not the data
