"""corpora.slides on real slide files that OpenSlide reads, written with tifffile in the two layouts OpenSlide
documents: Aperio SVS (https://openslide.org/formats/aperio/: first ImageDescription starts with "Aperio", "|"
separated "key = value" fields with AppMag and MPP, tiled levels, the thumbnail as the second page, label and
macro named on the description's second line) and generic tiled pyramidal TIFF
(https://openslide.org/formats/generic-tiff/: XResolution/YResolution in pixels per centimetre become
openslide.mpp-x/-y). openslide-python's own tests ship the same kind of files (tests/fixtures/small.svs and
unreadable.svs in its sdist: an SVS with a corrupt JPEG tile that opens and fails on first read); the corrupt and
truncated slides here are made the same way from our own SVS.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from corpora.slides import SlideError, TileParams, open_slide, plan_tiles, tile_slide
from corpora.slides import tiling
from corpora.slides.__main__ import main
from corpora.slides.synthetic import GLASS, write_pyramidal_tiff, write_svs

TISSUE = (222, 140, 180)
PEN = (40, 70, 190)


def grid_slide(height=1024, width=1536, tissue_tiles=((1, 2), (1, 3), (2, 2), (2, 3), (2, 4)), tile=128, pen=True):
    """Glass with tissue exactly on the grid cells ``tissue_tiles`` ((row, col) of ``tile`` px cells) and a blue
    pen stroke filling row 0, cols 1-5 (not tissue): the tile count at min_tissue 0.5 is known exactly."""
    rng = np.random.default_rng(0)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = GLASS
    for r, c in tissue_tiles:
        cell = img[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
        cell[:] = TISSUE
        cell[rng.random(cell.shape[:2]) < 0.1] = (110, 60, 150)
    if pen:
        img[16:112, tile:6 * tile] = PEN
    return img


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    img = grid_slide()
    return {
        "img": img,
        "svs": write_svs(d / "case.svs", img, mpp=0.5, power=20),
        "tiff": write_pyramidal_tiff(d / "case.tiff", img, mpp=0.25, compression="zlib"),
        "nompp_svs": write_svs(d / "nompp.svs", img, mpp=None, power=20),
        "nompp_tiff": write_pyramidal_tiff(d / "nompp.tiff", img, mpp=None),
        "dir": d,
    }


def corrupt_copy(src, dst, page=0):
    """``src`` with the first bytes of one JPEG tile of ``page`` zeroed: opens, fails when that tile is read."""
    dst.write_bytes(src.read_bytes())
    with tifffile.TiffFile(dst) as t:
        offsets = t.pages[page].dataoffsets
    with open(dst, "r+b") as fh:
        fh.seek(offsets[len(offsets) // 2])
        fh.write(b"\0" * 16)
    return dst


def test_info_of_an_aperio_svs(slides):
    with open_slide(slides["svs"]) as s:
        info = s.info
    assert (info.width, info.height, info.levels) == (1536, 1024, 3)
    assert info.downsamples == [1.0, 4.0, 16.0]
    assert (info.mpp, info.mpp_source, info.objective_power, info.vendor) == (0.5, "vendor", 20.0, "aperio")
    assert info.associated == ["label", "macro", "thumbnail"]


def test_info_of_a_generic_tiff_reads_the_resolution_tags(slides):
    with open_slide(slides["tiff"]) as s:
        assert (s.info.vendor, s.info.mpp, s.info.mpp_source, s.info.objective_power) == (
            "generic-tiff", 0.25, "tiff-resolution", None)
        assert s.info.associated == []


def test_no_mpp_falls_back_to_the_objective_power_or_is_refused(slides):
    with open_slide(slides["nompp_svs"]) as s:
        assert (s.info.mpp, s.info.mpp_source) == (0.5, "objective-power")  # 10 / 20x
    with pytest.raises(SlideError, match=r"nompp\.svs: expected a µm/px"):
        open_slide(slides["nompp_svs"], mpp_fallback="refuse")
    with open_slide(slides["nompp_tiff"]) as s:  # no objective either: info works, tiling cannot
        assert s.info.mpp is None
        with pytest.raises(SlideError, match=r"nompp\.tiff: expected a resolution"):
            plan_tiles(s, mpp=0.5, size=224)


def test_tissue_mask_keeps_tissue_and_drops_glass_and_pen(slides):
    with open_slide(slides["svs"]) as s:
        mask = s.tissue_mask(thumb_size=384)  # 384x256: 32 mask px per 128 px cell
    cells = mask.mask.reshape(8, 32, 12, 32).mean(axis=(1, 3))
    expected = np.zeros((8, 12))
    for r, c in ((1, 2), (1, 3), (2, 2), (2, 3), (2, 4)):
        expected[r, c] = 1
    assert np.abs(cells - expected).max() < 0.1  # pen row 0 and glass out, tissue cells in
    assert mask.fraction == pytest.approx(5 / 96, abs=0.01)


def test_tile_counts_match_the_tissue_and_coordinates_are_level0(slides):
    with open_slide(slides["svs"]) as s:
        tiles = plan_tiles(s, mpp=0.5, size=128, min_tissue=0.5)
        assert sorted((t.y // 128, t.x // 128) for t in tiles) == [(1, 2), (1, 3), (2, 2), (2, 3), (2, 4)]
        assert all(t.tissue > 0.9 and t.level == 0 and t.mpp == 0.5 for t in tiles)
        # at 1 µm/px a 128 px tile covers 2x2 cells (256 level-0 px): rows 0-1 and 2-3 of cols 2-3 are half
        # tissue, rows 2-3 of cols 4-5 a quarter
        coarse = plan_tiles(s, mpp=1.0, size=128, min_tissue=0.4)
        assert [(t.x, t.y) for t in coarse] == [(256, 0), (256, 256)]
        assert [t.tissue for t in coarse] == pytest.approx([0.5, 0.5], abs=0.05)
        everything = plan_tiles(s, mpp=0.5, size=128, min_tissue=0.0)
        assert len(everything) == 96
        overlapping = plan_tiles(s, mpp=0.5, size=128, overlap=64, min_tissue=0.0)  # stride 64: 23 x 15 full tiles
        assert len(overlapping) == 23 * 15


def test_read_region_mpp_picks_the_best_level_then_resizes(slides):
    img = slides["img"]
    with open_slide(slides["tiff"]) as s:  # 0.25 µm/px, levels 1, 4, 16, lossless
        # 0.999 is within the 1 % tolerance of level 1 (4 x 0.25): read there, no 0.1 % resize
        assert [s.best_level(m) for m in (0.25, 0.5, 0.9, 0.999, 1.0, 4.0, 100.0)] == [0, 0, 0, 1, 1, 2, 2]
        exact = np.asarray(s.read_region_mpp(300, 200, 0.25, 64))
        assert np.array_equal(exact, img[200:264, 300:364])  # level 0, no resize: exact pixels
        half = np.asarray(s.read_region_mpp(256, 256, 0.5, 64))  # 128 level-0 px shrunk to 64
        assert np.abs(half.astype(int) - np.asarray(TISSUE)).mean() < 30
        with pytest.raises(SlideError, match=r"case\.tiff: expected a µm/px of at least the scan's 0.25"):
            s.read_region_mpp(0, 0, 0.1, 64)


def test_cache_second_pass_opens_no_slide_and_is_content_addressed(slides, tmp_path, monkeypatch):
    params = TileParams(mpp=0.5, size=128, min_tissue=0.5)
    first = tile_slide(slides["svs"], params, cache_root=tmp_path / "cache")
    assert first.summary["tiles"] == 5 and len(first.paths()) == 5
    tile0 = Image.open(first.paths()[0])
    assert tile0.size == (128, 128) and tile0.mode == "RGB"

    def no_open(*a, **k):
        raise AssertionError("a cached tiling opened the slide")

    monkeypatch.setattr(tiling, "open_slide", no_open)
    again = tile_slide(slides["svs"], params, cache_root=tmp_path / "cache")
    assert again.root == first.root and again.records() == first.records()
    copy = tmp_path / "renamed.svs"  # same bytes, other name: same cache entry
    copy.write_bytes(slides["svs"].read_bytes())
    assert tile_slide(copy, params, cache_root=tmp_path / "cache").root == first.root
    with pytest.raises(AssertionError, match="opened the slide"):  # other parameters: a new entry
        tile_slide(slides["svs"], TileParams(mpp=0.5, size=64), cache_root=tmp_path / "cache")


def test_a_corrupt_tile_mid_tiling_leaves_nothing_in_the_cache(slides, tmp_path):
    bad = corrupt_copy(slides["svs"], tmp_path / "bad.svs", page=0)
    with pytest.raises(SlideError, match=r"bad\.svs: expected readable pixels at level 0"):
        # the mask reads level 1 (thumb_size 384), the tiles level 0: the failure comes after tiles were written
        tile_slide(bad, TileParams(mpp=0.5, size=128, min_tissue=0.0, thumb_size=384), cache_root=tmp_path / "cache")
    written = list((tmp_path / "cache" / "tiles").rglob("*"))
    assert [p for p in written if p.is_file() or p.name.startswith(".staging")] == []


@pytest.mark.parametrize("case,expected", [
    ("unsupported", r"notes\.png: expected a slide format OpenSlide reads"),
    ("missing", r"missing\.svs: expected a slide file, found nothing"),
    ("truncated", r"truncated\.svs: expected a (readable|slide)"),
    ("corrupt", r"corrupt\.svs: expected readable pixels, found corrupt tile data"),
    ("small", r"case\.svs: expected a slide of at least one tile"),
    ("refuse", r"nompp\.svs: expected a µm/px"),
    ("no-mpp", r"nompp\.tiff: expected a resolution"),
])
def test_bad_slides_one_line_naming_the_file_exit_2(slides, tmp_path, capsys, case, expected):
    d = slides["dir"]
    args = {
        "unsupported": ["info", str(tmp_path / "notes.png")],
        "missing": ["info", str(tmp_path / "missing.svs")],
        "truncated": ["info", str(tmp_path / "truncated.svs")],
        "corrupt": ["info", str(tmp_path / "corrupt.svs")],
        "small": ["tile", str(slides["svs"]), "--out", str(tmp_path / "o"), "--size", "2048",
                  "--cache", str(tmp_path / "c")],
        "refuse": ["info", str(d / "nompp.svs"), "--mpp-fallback", "refuse"],
        "no-mpp": ["tile", str(d / "nompp.tiff"), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")],
    }[case]
    Image.new("RGB", (8, 8)).save(tmp_path / "notes.png")
    data = slides["svs"].read_bytes()
    (tmp_path / "truncated.svs").write_bytes(data[: len(data) // 2])
    corrupt_copy(slides["svs"], tmp_path / "corrupt.svs", page=3)  # the coarsest level (pages: 0, thumbnail, 1, 2): caught at open
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(expected, err[0]), err
    assert not (tmp_path / "o").exists()


def test_cli_tile_and_thumbnail(slides, tmp_path, capsys):
    out = tmp_path / "tiles"
    assert main(["tile", str(slides["svs"]), "--out", str(out), "--mpp", "0.5", "--size", "128",
                 "--min-tissue", "0.5", "--cache", str(tmp_path / "c")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tiles"] == 5
    lines = [json.loads(line) for line in (out / "tiles.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and {"x", "y", "level", "mpp", "size", "tissue"} <= set(lines[0])
    assert all((out / line["file"]).is_file() for line in lines)
    assert main(["thumbnail", str(slides["svs"]), "--out", str(tmp_path / "t.png"), "--size", "384", "--mask"]) == 0
    overlay = np.asarray(Image.open(tmp_path / "t.png"))
    plain = np.asarray(open_slide(slides["svs"]).thumbnail(384))
    tinted = np.abs(overlay.astype(int) - plain.astype(int)).sum(-1) > 20
    assert overlay.shape == (256, 384, 3) and tinted.mean() == pytest.approx(5 / 96, abs=0.01)


def test_module_cli_last_line_json_and_no_torch(slides):
    code = ("import runpy, sys; sys.argv = ['corpora.slides', 'info', %r]; "
            "rc = 0\ntry: runpy.run_module('corpora.slides', run_name='__main__')\n"
            "except SystemExit as e: rc = e.code\nassert 'torch' not in sys.modules, 'corpora.slides imported torch'\n"
            "sys.exit(rc)") % str(slides["svs"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert {k: info[k] for k in ("width", "height", "levels", "downsamples", "mpp", "objective_power", "vendor")} == {
        "width": 1536, "height": 1024, "levels": 3, "downsamples": [1.0, 4.0, 16.0], "mpp": 0.5,
        "objective_power": 20.0, "vendor": "aperio"}


def test_tissue_mask_keeps_violet_stain_and_pale_stroma_and_drops_every_ink_pixel():
    """Cases the first mask got wrong on the slide demo: a violet (cytology-blue, hue ~0.69) tissue read as blue
    pen; pale stroma (saturation ~0.18) lost because its saturated nuclei pulled Otsu above it; the pale fringe of
    a pen stroke counted as tissue."""
    from corpora.slides.tissue import tissue_array

    rng = np.random.default_rng(0)
    img = np.empty((256, 384, 3), np.uint8)
    img[:] = GLASS
    img[32:128, 16:112] = (118, 96, 205)  # violet cytology stain
    stroma = img[:, 128:]  # most of the thumbnail: Otsu then splits nuclei from stroma, not tissue from glass
    stroma[:] = (255, 220, 236)  # pale pink stroma (saturation 0.14) ...
    stroma[rng.random(stroma.shape[:2]) < 0.25] = (90, 30, 120)  # ... with strongly stained nuclei
    img[176:184, 8:120] = PEN  # a blue stroke, and its fringe a quarter blended into glass
    img[172:176, 8:120] = ((np.asarray(PEN) + 3 * np.asarray(GLASS)) / 4).astype(np.uint8)
    mask = tissue_array(img)
    assert mask[40:120, 24:104].mean() > 0.95  # violet tissue kept
    assert mask[8:248, 136:376].mean() > 0.95  # pale stroma kept, nuclei and all
    assert mask[164:192, :124].mean() == 0 and mask[:24, :124].mean() == 0  # no ink, no glass
