"""Bad slides through the stage CLIs (issue 25, item 9): an unreadable or truncated slide, an unsupported format,
a slide without µm/px under ``slides.mpp_fallback=refuse`` (and one that falls back to its objective power), a
slide smaller than one tile, fewer tissue tiles than ``slides.k``: one line naming the data's file:line and the
slide, exit 2, no traceback, before any model is built, and nothing half-written in the tile cache."""
import json

import numpy as np
import pytest
from PIL import Image

from corpora.slides.synthetic import GLASS, write_svs
from corpora.validate import validate
from recipes import pretrain as pretrain_recipe
from recipes import rl as rl_recipe
from recipes import sft as sft_recipe

RECIPES = {"sft": sft_recipe, "pretrain": pretrain_recipe, "rl": rl_recipe}


def _image(h=512, w=512):
    img = np.empty((h, w, 3), np.uint8)
    img[:] = GLASS
    img[64:448, 64:448] = (222, 140, 180)
    return img


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / ".dataset-root").touch()
    ok = write_svs(d / "ok.svs", _image(), mpp=0.5, n_levels=2, tile=128, label=False)
    (d / "truncated.svs").write_bytes(ok.read_bytes()[: ok.stat().st_size // 2])
    Image.fromarray(_image()).save(d / "photo.png")
    write_svs(d / "small.svs", _image(96, 96), mpp=0.5, n_levels=1, tile=32, label=False)
    write_svs(d / "nompp.svs", _image(), mpp=None, power=20, n_levels=2, tile=128, label=False)
    write_svs(d / "blank.svs", _image(), mpp=None, power=None, n_levels=2, tile=128, label=False)
    for name in ["ok.svs", "truncated.svs", "photo.png", "small.svs", "nompp.svs", "blank.svs"]:
        record = {"slide": name, "question": "Is there tumour?", "answer": "yes", "reasoning": "Pink.",
                  "caption": "pink tissue"}
        (d / f"{name}.jsonl").write_text(json.dumps(record) + "\n")
    return d


CASES = [  # (recipe, slide, extra fields, what the one line says after "<data>:1: <code>: ")
    ("sft", "truncated.svs", [], "unreadable-slide: {d}/truncated.svs: expected a slide format OpenSlide reads"),
    ("pretrain", "photo.png", [], "unreadable-slide: {d}/photo.png: expected a slide format OpenSlide reads"),
    ("sft", "small.svs", [], "unreadable-slide: {d}/small.svs: expected a slide of at least one tile"),
    ("sft", "nompp.svs", ["slides.mpp_fallback=refuse"], "unreadable-slide: {d}/nompp.svs: expected a µm/px"),
    ("pretrain", "ok.svs", ["slides.k=99", "slides.size=128"], "too-few-tiles: slide ok.svs yields 12 tiles"),
    # the slide viewer's questions (RL with tools): a slide it cannot state a µm/px for failed mid-run before
    pytest.param("rl", "blank.svs", ["tools.env=slide_view"], "unreadable-slide: {d}/blank.svs: expected a resolution",
                 marks=pytest.mark.slow),  # imports TRL: ~35 s alone; the fast check is the next test
]


def test_slide_questions_refuse_a_slide_without_any_resolution(slides):
    from corpora.records import DataError
    from corpora.slides.viewer import slide_questions

    with pytest.raises(DataError, match=rf"^{slides}/blank\.svs\.jsonl:1: unreadable-slide: .*blank\.svs: expected a "
                                        "resolution"):
        slide_questions(slides / "blank.svs.jsonl")
    with pytest.raises(DataError, match=r"nompp\.svs: expected a µm/px"):
        slide_questions(slides / "nompp.svs.jsonl", mpp_fallback="refuse")
    assert slide_questions(slides / "nompp.svs.jsonl")[0]["slide"].endswith("nompp.svs")  # objective power 20


@pytest.mark.parametrize("stage,slide,extra,expected", CASES, ids=["sft-truncated", "pretrain-unsupported", "sft-small",
                                                                  "sft-no-mpp-refused", "pretrain-few-tiles",
                                                                  "rl-tools-no-resolution"])
def test_a_bad_slide_is_one_line_exit_2_before_any_model(slides, tmp_path, monkeypatch, capsys, stage, slide,
                                                         extra, expected):
    home = tmp_path / "home"
    monkeypatch.setenv("PATHOR1_HOME", str(home))
    data = slides / f"{slide}.jsonl"
    init = "tiny:qwen3_vl" if "tools.env=slide_view" in extra else "tiny:qwen2_vl"
    with pytest.raises(SystemExit) as exit_:
        RECIPES[stage].main([f"data={data}", f"init={init}", "run=bad", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    head = f"python -m recipes.{stage}: error: {data}:1: "
    assert err[0].startswith(head + expected.format(d=slides)), err[0]
    assert not (home / "base").exists()  # refused before the tiny model was built
    cache = home / "cache" / "slides" / "tiles"
    assert not [p for p in cache.rglob("*") if p.name.startswith(".staging")]  # nothing half-written
    assert all((p / "summary.json").is_file() for p in cache.glob("*/*"))


def test_a_slide_without_mpp_falls_back_to_its_objective_power_by_default(slides, tmp_path, monkeypatch):
    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    from corpora.slides.sampling import SlideSampling

    report = validate(slides / "nompp.svs.jsonl", "qa", slides=SlideSampling(k=2, size=128))  # AppMag 20 -> 0.5 µm/px
    assert report.ok, [str(p) for p in report.problems]
    refused = validate(slides / "nompp.svs.jsonl", "qa", slides=SlideSampling(k=2, size=128, mpp_fallback="refuse"))
    assert [p.code for p in refused.problems] == ["unreadable-slide"]
