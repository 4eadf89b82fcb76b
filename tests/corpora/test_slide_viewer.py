"""corpora.slides.viewer: the slide-viewing environment on real pyramidal TIFFs that OpenSlide reads, written with
tifffile in OpenSlide's generic-tiff layout (https://openslide.org/formats/generic-tiff/: tiled pages of decreasing
size, XResolution/YResolution in pixels per centimetre -> openslide.mpp-x), as tests/corpora/test_slides.py does.
The environment contract checked here is TRL 1.16's (trl/trainer/grpo_trainer.py): ``reset(**row)`` per rollout,
every public method a tool (inspect.getmembers(type(env), inspect.isfunction), names not starting with "_", minus
reset / get_reward), its schema from transformers.utils.get_json_schema, a list result passed on as content blocks.
"""
import inspect
import io
import json

import numpy as np
import pytest
from PIL import Image

from corpora.slides import open_slide
from corpora.slides.synthetic import GLASS, write_pyramidal_tiff
from corpora.slides.viewer import SlideViewer, View, ViewError, tissue_regions_of

TISSUE, MARK = (222, 140, 180), (20, 160, 60)
# Two tissue rectangles (left, top, width, height) in level-0 pixels; the big one holds a 16x16 green mark.
BIG, SMALL, MARK_AT = (128, 256, 512, 384), (1024, 128, 256, 256), (400, 440)


def slide_image(height=768, width=1536):
    img = np.empty((height, width, 3), np.uint8)
    img[:] = GLASS
    for left, top, w, h in (BIG, SMALL):
        img[top:top + h, left:left + w] = TISSUE
    x, y = MARK_AT
    img[y - 8:y + 8, x - 8:x + 8] = MARK
    return img


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("viewer")
    return write_pyramidal_tiff(d / "case.tiff", slide_image(), mpp=0.5, compression="zlib")


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    d = tmp_path_factory.mktemp("viewer2")
    return write_pyramidal_tiff(d / "other.tiff", slide_image(512, 1024), mpp=0.25, compression="zlib")


def centre_pixel(image):
    return np.asarray(image)[image.height // 2, image.width // 2]


def test_zoom_is_centred_on_the_level0_point_at_the_requested_mpp(slide):
    viewer = SlideViewer(slide, budget=4, size=64)
    sharp = viewer.zoom(*MARK_AT, 0.5)  # scan resolution: 64 px = 32 µm, the 16 px mark fills the middle quarter
    assert sharp.image.size == (64, 64)
    arr = np.asarray(sharp.image).astype(int)
    assert np.abs(arr[32, 32] - MARK).max() <= 3 and np.abs(arr[4, 4] - TISSUE).max() <= 3
    assert sharp.record.level == 0 and sharp.record.field_um == 32.0
    wide = viewer.zoom(*MARK_AT, 2.0)  # 4x coarser: read from level 1 (downsample 4), 128 µm wide
    assert wide.record.level == 1 and wide.record.field_um == 128.0
    green = (np.abs(np.asarray(wide.image).astype(int) - MARK).max(axis=2) <= 40).sum()
    assert 9 <= green <= 25  # the 16 px mark shrinks to about 4x4 pixels
    assert np.asarray(wide.image).shape == (64, 64, 3)


def test_views_are_logged_and_the_budget_refuses_more(slide, tmp_path):
    log = tmp_path / "views.jsonl"
    viewer = SlideViewer(budget=2, size=32, log_path=log)
    observation = viewer.reset(slide=str(slide), id="q7", prompt=[{"role": "user", "content": "?"}], answer="A")
    assert "1536 x 768 px at 0.5 µm/px" in observation and "up to 2 regions" in observation
    viewer.zoom(100, 200, 1.0)
    viewer.zoom("700", "300", "0.5")  # TRL may hand arguments over as strings
    with pytest.raises(ViewError, match="budget of 2 views is spent"):
        viewer.zoom(10, 10, 1.0)
    assert [(v.index, v.x, v.y, v.mpp) for v in viewer.views] == [(1, 100, 200, 1.0), (2, 700, 300, 0.5)]
    assert {v.question for v in viewer.views} == {"q7"}
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["event"], e.get("x"), e.get("mpp")) for e in lines] == [
        ("view", 100, 1.0), ("view", 700, 0.5), ("refused", None, None)]
    assert viewer.record["views"][1]["x"] == 700 and len(viewer.record["refused"]) == 1
    viewer.reset(slide=str(slide), id="q8")  # the next question starts with a fresh budget
    assert viewer.views == [] and viewer.zoom(100, 200, 1.0).record.index == 1


@pytest.mark.parametrize("args, message", [
    ((5000, 10, 1.0), r"centre inside the slide \(0 <= x < 1536, 0 <= y < 768\), found \(5000, 10\)"),
    ((10, -1, 1.0), "centre inside the slide"),
    ((10, 10, 0.1), "mpp between 0.5 and 16, found 0.1"),  # finer than the scan: no upsampling
    ((10, 10, 64), "mpp between 0.5 and 16, found 64"),
    (("left", 10, 1.0), "expected numbers for x, y and mpp, found x='left'"),
])
def test_bad_views_are_refused_with_a_line_the_model_can_act_on_and_cost_nothing(slide, args, message):
    viewer = SlideViewer(slide, budget=1, size=32)
    with pytest.raises(ViewError, match=message):
        viewer.zoom(*args)
    assert viewer.views == [] and len(viewer.refused) == 1
    viewer.zoom(10, 10, 1.0)  # the budget is still whole


def test_tissue_regions_lists_the_pieces_largest_first_with_centres_inside_them(slide):
    viewer = SlideViewer(slide)
    text = viewer.tissue_regions()
    regions = viewer.regions
    assert len(regions) == 2 and text.count("region ") == 2 and text.startswith("region 1: x=")
    for region, (left, top, w, h) in zip(regions, (BIG, SMALL)):
        assert left <= region.x <= left + w and top <= region.y <= top + h
        assert abs(region.x - (left + w / 2)) <= 16 and abs(region.y - (top + h / 2)) <= 16
    big_mm2 = BIG[2] * BIG[3] * 0.5 ** 2 / 1e6
    assert regions[0].area_mm2 == pytest.approx(big_mm2, rel=0.1)
    assert viewer.region_calls == 1 and viewer.views == []  # listing regions is not a view


def test_regions_of_a_blank_slide(tmp_path):
    blank = write_pyramidal_tiff(tmp_path / "blank.tiff", np.full((256, 256, 3), GLASS, np.uint8), mpp=0.5,
                                 compression="zlib")
    with open_slide(blank) as s:
        assert tissue_regions_of(s) == []
    assert SlideViewer(blank).tissue_regions() == "no tissue found on the slide"


def test_reset_switches_slides_and_the_overview_is_the_whole_slide(slide, other):
    viewer = SlideViewer(overview_size=128)
    with pytest.raises(ViewError, match="no slide is open"):
        viewer.zoom(1, 1, 1.0)
    assert "0.25 µm/px" in viewer.reset(slide=str(other))
    assert viewer.overview.size == (128, 64)
    viewer.reset(slide=str(slide))
    assert viewer.overview.size == (128, 64) and viewer.zoom(10, 10, 0.5).record.slide.endswith("case.tiff")
    assert viewer.reset() is None and viewer.record["slide"] is None  # a row without a slide: nothing to view


def test_trl_sees_exactly_the_two_tools_with_their_schemas(slide):
    from transformers.utils import get_json_schema

    viewer = SlideViewer(slide, size=32)
    # what TRL 1.16 turns into tools (GRPOTrainer.__init__ and _generate_and_score_completions)
    tools = [name for name, _ in inspect.getmembers(type(viewer), predicate=inspect.isfunction)
             if not name.startswith("_") and name not in ("reset", "get_reward")]
    assert tools == ["tissue_regions", "zoom"]
    schema = get_json_schema(viewer.zoom)["function"]
    assert schema["parameters"]["required"] == ["x", "y", "mpp"]
    assert schema["parameters"]["properties"]["mpp"]["type"] == "number"
    assert "level-0 pixels" in schema["parameters"]["properties"]["x"]["description"]
    view = viewer.zoom(*MARK_AT, 0.5)
    # TRL's tool loop: a list result goes through as content blocks; the image block is what the VLM sees
    assert isinstance(view, list) and [b["type"] for b in view] == ["image", "text"]
    assert view[0]["image"] is view.image and "view 1/4: centre (400, 440) at 0.5 µm/px, 16 µm wide" == view[1]["text"]
    png = Image.open(io.BytesIO(view._repr_png_()))  # shows in a notebook
    assert png.size == (32, 32)
    assert isinstance(view, View)


def test_slide_questions_give_the_overview_as_the_image_and_name_the_line_of_a_bad_record(slide, tmp_path):
    from corpora.records import DataError
    from corpora.slides.viewer import slide_questions

    (tmp_path / ".dataset-root").touch()
    (tmp_path / "case.tiff").write_bytes(slide.read_bytes())
    (tmp_path / "broken.tiff").write_bytes(b"II*\x00" + b"\x00" * 64)
    good = {"id": "q1", "slide": "case.tiff", "question": "Tumour?", "answer": "yes"}
    (tmp_path / "qa.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "q2"}) + "\n")
    rows = slide_questions(tmp_path / "qa.jsonl", overview_size=96)
    assert [(r["id"], r["kind"], r["answer"], r["slide"]) for r in rows] == [
        ("q1", "yesno", "yes", str((tmp_path / "case.tiff").resolve())), ("q2", "yesno", "yes", rows[0]["slide"])]
    assert rows[0]["images"][0].size == (96, 48) and rows[1]["images"][0] is rows[0]["images"][0]  # read once
    for bad, message in [({"id": "q3", "question": "Tumour?", "answer": "yes"},
                          r"qa2.jsonl:2: missing-field: expected a 'slide'"),
                         ({**good, "slide": "broken.tiff"}, r"qa2.jsonl:2: unreadable-slide: .*broken.tiff"),
                         ({**good, "slide": "../outside.tiff"}, r"qa2.jsonl:2: path-escapes-root")]:
        (tmp_path / "qa2.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=message):
            slide_questions(tmp_path / "qa2.jsonl")
