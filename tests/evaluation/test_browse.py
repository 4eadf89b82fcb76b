"""``python -m evaluation.browse``: the data it gathers from a run, and the page in a real headless Chromium
(Debian's ``chromium``, installed by scripts/install_chromium.sh where missing) loaded from ``file://``.

The run is a fake one (tests/evaluation/fake_run.py): registry entries and the exact files ``evaluation.run`` writes,
no training. The screenshot is kept under ``test-artifacts/browse/`` (or ``$PATHOR1_TEST_ARTIFACTS``).
"""
import json
import os
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from chromium import Page, dump_dom, ensure_chromium  # noqa: E402
from fake_run import STAGES, add_rl_run, evaluate_again, make_run, rows_for  # noqa: E402

from evaluation.browse import browse  # noqa: E402
from evaluation.browse.__main__ import main as browse_main  # noqa: E402
from evaluation.browse.data import _slide, confusion  # noqa: E402
from evaluation.browse.render import write_browser  # noqa: E402
from evaluation.metrics import paired_comparison  # noqa: E402
from stages.registry import home  # noqa: E402

ARTIFACTS = Path(os.environ.get("PATHOR1_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")
N = 12


def predictions(stage_dir_glob: str) -> dict[str, dict]:
    """stage -> {id: row} from the predictions.jsonl files the fake run wrote."""
    out = {}
    for stage in STAGES:
        files = [p for p in home().glob("reports/**/predictions.jsonl") if f"/{stage}/" in str(p) or
                 (stage == "base" and "tiny-base" in str(p))]
        assert len(files) == 1, (stage, files)
        out[stage] = {r["id"]: r for r in map(json.loads, files[0].read_text().splitlines())}
    return out


def load_data(out: Path) -> dict:
    text = (out / "data.js").read_text()
    return json.loads(text.removeprefix("window.PATHOR1_BROWSE = ").rstrip().rstrip(";"))


@pytest.fixture
def run(tmp_path):
    make_run(tmp_path / "src", N, slides=2)
    return tmp_path


@pytest.fixture(scope="module")
def chromium():
    return ensure_chromium()


def test_gathered_data_matches_the_predictions(run):
    out = run / "browser"
    browse("rl:latest", out=out)
    data = load_data(out)
    rows = predictions("**")
    assert [s["key"] for s in data["stages"]] == list(STAGES)
    assert len(data["questions"]) == N
    for q in data["questions"]:
        assert set(q["answers"]) == set(STAGES)
        for stage in STAGES:
            assert q["answers"][stage]["c"] == int(rows[stage][q["id"]]["correct"])
            assert q["answers"][stage]["p"] == rows[stage][q["id"]]["prediction"]
    # the paired comparisons are evaluation.metrics' on the same questions, consecutive stages
    pairs = [(c["before"], c["after"]) for c in data["comparisons"]]
    assert pairs == list(zip(STAGES, STAGES[1:]))
    for c in data["comparisons"]:
        want = paired_comparison({i: r["correct"] for i, r in rows[c["before"]].items()},
                                 {i: r["correct"] for i, r in rows[c["after"]].items()})
        assert {k: c[k] for k in want} == want
    # confusion: every MCQ row counted once, the diagonal is the correct answers
    for stage in data["stages"]:
        [table] = stage["confusion"]["demo-mcq"]  # one option set: one table whose classes are the options
        assert table["title"] == "options: tumor / stroma / normal / lymphocytes"
        assert sum(map(sum, table["counts"])) == N
        diagonal = sum(table["counts"][i][table["predicted"].index(c)] for i, c in enumerate(table["classes"]))
        assert diagonal == sum(r["correct"] for r in rows[stage["key"]].values())
    # reward curves: reward names (not TensorBoard folders) with the RL config's weights, smoothed from the raw values
    series = {s["name"]: s for s in data["rewards"]["series"]}
    assert set(series) == {"total (weighted sum)", "accuracy_reward", "format_reward"}
    assert series["accuracy_reward"]["weight"] == 0.9 and series["format_reward"]["weight"] == 0.1
    acc = series["accuracy_reward"]
    assert len(acc["steps"]) == 40 and acc["smoothed"][0] == pytest.approx(acc["values"][0])
    assert abs(acc["smoothed"][-1] - acc["values"][-1]) < max(abs(a - b) for a, b in zip(acc["values"], acc["values"][1:]))
    # lineage settings from the registry manifests
    assert data["stages"][-1]["settings"]["reward_weights"] == [0.1, 0.9, 0.5]


def test_confusion_is_per_question_family_or_by_letter():
    def row(question, options, gold, said):
        return {"kind": "mcq", "question": question, "options": options, "answer": gold, "extracted": said}

    tissue, density = ["tumor", "stroma"], ["sparse", "dense", "very dense"]
    rows = [row("Which tissue?", tissue, "A", "A"), row("Which tissue?", tissue, "B", "A"),
            row("How dense?", density, "C", "C"), row("How dense?", density, "A", None),
            {"kind": "yesno", "question": "Tumour?", "answer": "yes", "extracted": "no"}]
    tables = {t["title"]: t for t in confusion(rows)}
    assert tables["Which tissue?"] == {"title": "Which tissue?", "n": 2, "classes": ["stroma", "tumor"],
                                       "predicted": ["stroma", "tumor"], "counts": [[0, 1], [0, 1]]}
    assert tables["How dense?"]["predicted"] == ["sparse", "very dense", "(no answer)"]
    assert tables["How dense?"]["counts"] == [[0, 0, 1], [0, 1, 0]]
    # every question with options of its own (a public benchmark): one table by option letter
    own = [row(f"q{i}?", [f"a{i}", f"b{i}"], "AB"[i % 2], "A") for i in range(20)]
    [by_letter] = confusion(own)
    assert by_letter["title"] == "by option letter" and by_letter["classes"] == ["A", "B"]
    assert by_letter["counts"] == [[10, 0], [10, 0]]  # every answer was A


def test_compare_adds_another_run_and_the_newest_evaluation_wins(run):
    other = add_rl_run(run / "src", "other", N, seed=5)
    # an older evaluation of the same checkpoint, kept where a recipe writes it: the newer one must be shown
    evaluate_again(run / "src", other, N, seed=9, evaluated="2025-01-01T00:00:00",
                   out=home() / "reports" / "patho_r1" / "x" / "eval" / "rl")
    data = load_data(browse("rl:demo", ["rl:other"], out=run / "browser").parent)
    keys = [s["key"] for s in data["stages"]]
    assert keys == ["base", "pretrain", "sft", "rl/demo/step-3", "rl/other/step-7"]  # two rl stages: told apart
    assert data["lineage_stages"] == keys[:4]
    newest = {r["id"]: r["correct"] for r in rows_for("rl", [""], N, seed=5)}
    assert {q["id"]: bool(q["answers"]["rl/other/step-7"]["c"]) for q in data["questions"]} == newest
    last = data["comparisons"][-1]
    assert (last["before"], last["after"]) == ("rl/demo/step-3", "rl/other/step-7")
    assert data["stages"][-1]["path"] == str(other)


def test_images_are_copied_or_inlined_and_the_folder_moves(run):
    out = run / "browser"
    browse("rl:latest", out=out)
    moved = run / "moved"
    shutil.move(out, moved)  # zipped and shared: nothing may point back at the source images
    data = load_data(moved)
    refs = [im for q in data["questions"] for im in q["images"]]
    inlined = [im for im in refs if im["t"].startswith("data:image/png;base64,")]
    copied = [im for im in refs if not im["t"].startswith("data:")]
    assert len(inlined) == N // 2 and len(copied) == N // 2  # 8x8 PNGs inlined, 256x256 ones copied
    for im in copied:
        assert (moved / im["t"]).is_file() and (moved / im["f"]).is_file()
        assert not Path(im["f"]).is_absolute()
    assert data["image_counts"] == {"copied": N // 2, "inlined": N // 2 + 1, "missing": 0}  # + the slide thumbnail


def test_slide_rows_show_the_slide_and_the_tiles_the_model_viewed(tmp_path):
    """A slide record reaches the model as tiles of corpora.slides' cache, in the layout corpora/slides/tiling.py
    writes (``<root>/tiles/NNNNNN_xX_yY.png``, ``tiles.jsonl`` with level-0 x, y, µm/px, size; ``summary.json``
    with the slide's info): a real SVS (corpora.slides.synthetic) tiled by ``tile_slide``. The browser draws the
    slide's thumbnail (read from the slide when the cache keeps none) with those tiles' level-0 boxes."""
    from corpora.slides import TileParams, tile_slide
    from corpora.slides.synthetic import tissue_image, write_svs

    svs = write_svs(tmp_path / "case.svs", tissue_image(512, 768, [(380, 260, 300, 200)]), mpp=0.25, power=40)
    tiles = tile_slide(svs, TileParams(mpp=0.5, size=64), cache_root=tmp_path / "cache")
    shown = tiles.records()[:3]
    row = {"id": "slide-1", "kind": "mcq", "question": "Tumour present?", "options": ["yes", "no"], "answer": "A",
           "images": [str(tiles.root / t["file"]) for t in shown], "prediction": "<answer>A</answer>",
           "extracted": "A", "correct": True, "score": 1.0, "format_ok": True, "n_tokens": 3}
    slide = _slide(row)
    assert (slide["width"], slide["height"]) == (768, 512)
    assert slide["regions"] == [[t["x"], t["y"], 128.0, 128.0] for t in shown]  # 64 px at 0.5 um/px = 128 at 0.25
    assert slide["thumbnail"] == str(tiles.root / "thumbnail.png")  # the cache's own thumbnail
    (tiles.root / "thumbnail.png").unlink()  # a cache without one: the browser reads it from the slide
    slide = _slide(row)
    assert slide["thumbnail"] is None and slide["source"] == str(svs.resolve())
    out = tmp_path / "browser"
    write_browser({"questions": [{**row, "suite": "qa", "subset": "", "answers": {}, "slide": slide}]}, out)
    drawn = load_data(out)["questions"][0]["slide"]["image"]
    assert "missing" not in drawn and (out / drawn["f"]).is_file()
    assert _slide({**row, "images": [str(tmp_path / "case.svs")]}) is None  # not a tile of the cache
    # a question answered by navigating the slide: the viewer's record of its views (centres, field of view in um)
    from corpora.slides.viewer import SlideViewer

    viewer = SlideViewer(svs, budget=2, size=64)
    viewer.zoom(400, 260, 0.5)
    viewer.zoom(200, 200, 1.0)
    navigated = _slide({**row, "images": [], "meta": {"navigation": viewer.record}})
    assert (navigated["width"], navigated["height"]) == (768, 512)
    # 64 px at 0.5 um/px = 32 um = 128 level-0 px at 0.25 um/px, centred on (400, 260); then 256 px around (200, 200)
    assert navigated["regions"] == [[336.0, 196.0, 128.0, 128.0], [72.0, 72.0, 256.0, 256.0]]


def test_cli_refuses_an_unknown_ref_in_one_line(run, capsys):
    assert browse_main(["rl:nope", "--out", str(run / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m evaluation.browse: error:")


class _Questions(HTMLParser):
    """question id -> the data-stage values inside that question's element; plus viewed-region rectangles."""

    def __init__(self):
        super().__init__()
        self.questions, self.current, self.depth, self.regions = {}, None, 0, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.current is not None:
            self.depth += 1
        if "data-question-id" in a:
            self.current, self.depth = a["data-question-id"], 1
            self.questions[self.current] = []
        elif self.current is not None and "data-stage" in a:
            self.questions[self.current].append(a["data-stage"])
        if tag == "rect" and "region" in (a.get("class") or ""):
            self.regions += 1

    def handle_endtag(self, tag):
        if self.current is not None:
            self.depth -= 1
            if self.depth == 0:
                self.current = None


def parse(dom: str) -> _Questions:
    p = _Questions()
    p.feed(dom)
    return p


def test_page_holds_every_question_and_stage(run, chromium):
    index = browse("rl:latest", out=run / "browser")
    rows = predictions("**")
    page = parse(dump_dom(chromium, index.as_uri() + "#per=all"))
    assert sorted(page.questions) == sorted(rows["rl"])
    assert all(stages == list(STAGES) for stages in page.questions.values())
    assert page.regions == 2 * 2  # two slide questions, two viewed regions each


def show(page, hash: str) -> list[str]:
    """Set the URL hash and return the question ids on screen once the page re-rendered for it."""
    page.evaluate(f"document.body.dataset.rendered = ''; location.hash = {json.dumps(hash)}")
    page.wait_for("document.body.dataset.rendered === location.hash", 10)
    return page.evaluate("[...document.querySelectorAll('[data-question-id]')].map(e => e.dataset.questionId)")


def test_click_filters_offline_and_screenshot(run, chromium):
    out = run / "browser"
    index = browse("rl:latest", out=out)
    rows = predictions("**")
    fixed_by_rl = sorted(i for i in rows["rl"] if rows["rl"][i]["correct"] and not rows["sft"][i]["correct"])
    assert fixed_by_rl
    with Page(chromium) as page:
        page.open(index.as_uri())
        assert page.evaluate("document.getElementById('visible-count').dataset.count") == str(N)
        # filters in the URL hash (bookmarkable): the questions RL got wrong, a text search, a page of 5
        wrong = sorted(i for i, r in rows["rl"].items() if not r["correct"])
        assert 0 < len(wrong) < N
        assert show(page, "#per=all&c.rl=wrong") == wrong
        assert page.evaluate("document.getElementById('filter-c.rl').value") == "wrong"
        assert show(page, "#q=patch%207%20show") == ["q00007"]
        assert show(page, "#per=5&page=3") == ["q00010", "q00011"]
        page.evaluate("location.hash = ''")
        page.wait_for(f"document.getElementById('visible-count').dataset.count === '{N}'", 10)
        page.click('a.filter-link[data-filter="d.rl=fixed"]')  # the "fixed" count of rl - sft in the summary
        page.wait_for(f"document.getElementById('visible-count').dataset.count === '{len(fixed_by_rl)}'", 10)
        shown = page.evaluate("[...document.querySelectorAll('[data-question-id]')].map(e => e.dataset.questionId)")
        assert sorted(shown) == fixed_by_rl
        assert page.evaluate("[...document.querySelectorAll('[data-stage=rl].fixed')].length") == len(fixed_by_rl)
        page.click("#filter-reset")
        page.wait_for(f"document.getElementById('visible-count').dataset.count === '{N}'", 10)
        page.click("article.q img.thumb")  # click to enlarge
        page.wait_for("!document.getElementById('lightbox').hidden", 10)
        assert page.evaluate("document.querySelector('#lightbox-body img').naturalWidth") > 0
        page.click("#lightbox-close")
        page.evaluate("window.scrollTo(0, 0)")
        page.click('[data-jump="browser"]')  # the header's jump to the questions, below the summary
        page.wait_for("window.scrollY > 0 && location.hash === ''", 10)
        page.evaluate("window.scrollTo(0, 0)")
        ARTIFACTS.joinpath("browse").mkdir(parents=True, exist_ok=True)
        shot = page.screenshot(ARTIFACTS / "browse" / "browse-summary.png", full_page=True)
        urls = page.requested_urls()
        errors = page.errors()
    assert shot.stat().st_size > 50_000
    # offline: the page asked for its own files and inlined images only (the CSP would refuse anything else)
    assert urls and all(u.startswith(("data:", out.as_uri())) for u in urls), urls
    assert {u.rsplit("/", 1)[-1] for u in urls if u.startswith("file:")} >= {"index.html", "browse.js", "browse.css",
                                                                              "data.js"}
    assert errors == []
