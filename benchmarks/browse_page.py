"""Page weight and load time of the run browser (``python -m evaluation.browse``) in a real headless Chromium.

For each size (default 400 and 10 000 questions, 4 stages: base, pretrain, SFT, RL, a fake evaluated run from
tests/evaluation/fake_run.py with 400 distinct images, half 8 px (inlined) and half 112 px like the demo corpus
(copied + thumbnailed)) it writes the folder and measures its weight, then loads it from ``file://`` ``--repeats``
times: the page as shipped (50 questions per page) against the naive page with every question in the DOM
(``#per=all``), and the time one filter and one text search take. Load time = ``performance.now()`` when the page's
script has rendered (``data-ready-ms``: from navigation start, parsing ``data.js`` included), median of the
repeats; filter / search time = the script's own time to filter, count and render (``data-render-ms``).

    OMP_NUM_THREADS=1 python benchmarks/browse_page.py [--sizes 400,10000] [--repeats 3]
    python benchmarks/browse_page.py --ref rl:latest --home runs      # a real run (e.g. after make demo)

Last line: one JSON object; ``speedup`` = naive load time / paginated load time at the largest size.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "evaluation")]


def folder_weight(out: Path) -> dict:
    files = [p for p in out.rglob("*") if p.is_file()]
    size = lambda ps: sum(p.stat().st_size for p in ps)  # noqa: E731
    return {"files": len(files), "total_bytes": size(files), "data_js_bytes": (out / "data.js").stat().st_size,
            "code_bytes": size([out / n for n in ("index.html", "browse.js", "browse.css")]),
            "images_bytes": size([p for p in files if p.parent.name == "images"]),
            "thumbs_bytes": size([p for p in files if p.parent.name == "thumbs"])}


def timed_change(page, hash_: str) -> float:
    """ms the page's script took to filter, count and render the list for a new hash (its own ``data-render-ms``)."""
    page.evaluate(f"document.body.dataset.rendered = ''; location.hash = {json.dumps(hash_)}")
    page.wait_for("document.body.dataset.rendered === location.hash", 120)
    return float(page.evaluate("document.body.dataset.renderMs"))


def load(page, url: str) -> dict:
    page.call("Page.navigate", session=True, url="about:blank")
    page.wait_for("document.readyState === 'complete'")
    page.open(url, timeout=900)  # the naive page at 10 000 questions keeps the main thread busy for minutes
    return {"ready_ms": float(page.evaluate("document.body.dataset.readyMs")),
            "dom_nodes": page.evaluate("document.getElementsByTagName('*').length")}


def measure_page(index: Path, repeats: int, binary: str) -> dict:
    """Weight of the folder of ``index`` and its load / filter / search times (see the module doc)."""
    from chromium import Page

    result = folder_weight(index.parent)
    with Page(binary) as page:
        for name, suffix in (("paginated", ""), ("naive_all", "#per=all")):
            runs = [load(page, index.as_uri() + suffix) for _ in range(repeats)]
            result[name] = {"load_ms": round(statistics.median(r["ready_ms"] for r in runs), 1),
                            "dom_nodes": runs[-1]["dom_nodes"]}
        load(page, index.as_uri())
        result["questions"] = int(page.evaluate("document.getElementById('total-count').textContent"))
        result["filter_ms"] = round(statistics.median(
            timed_change(page, h) for h in ("c.rl=wrong", "d.rl=fixed", "kind=mcq&c.sft=correct")), 1)
        result["first_search_ms"] = timed_change(page, "q=stroma")  # builds the search index once
        result["search_ms"] = round(statistics.median(
            timed_change(page, h) for h in ("q=dense%20nuclei", "q=patch%2042", "q=pale")), 1)
        result["visible_after_filter"] = page.evaluate("document.body.dataset.visible")
    return result


def measure(n: int, repeats: int, binary: str) -> dict:
    """A fake evaluated run of ``n`` questions, written by ``evaluation.browse`` and measured."""
    from fake_run import make_run

    from evaluation.browse import browse

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PATHOR1_HOME"] = str(Path(tmp) / "home")
        make_run(Path(tmp) / "src", n, n_images=min(n, 400), large_px=112)
        t0 = time.perf_counter()
        index = browse("rl:latest", out=Path(tmp) / "browser")
        return {"questions": n, "write_s": round(time.perf_counter() - t0, 2), **measure_page(index, repeats, binary)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="400,10000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref", help="measure this run instead (e.g. rl:latest after make demo; with --home)")
    p.add_argument("--home", help="the $PATHOR1_HOME of --ref")
    args = p.parse_args(argv)
    from chromium import ensure_chromium

    binary = ensure_chromium()
    if args.ref:  # a real run: no baseline of our own to build, so no speedup line
        from evaluation.browse import browse

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            index = browse(args.ref, home=args.home, out=Path(tmp) / "browser")
            print(json.dumps({"ref": args.ref, "write_s": round(time.perf_counter() - t0, 2),
                              **measure_page(index, args.repeats, binary)}))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for n in sizes:
        results[str(n)] = measure(n, args.repeats, binary)
        print(json.dumps(results[str(n)]), flush=True)
    largest = results[str(max(sizes))]
    print(json.dumps({"sizes": results, "speedup": round(largest["naive_all"]["load_ms"] /
                                                         largest["paginated"]["load_ms"], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
