"""A slide-navigation demo corpus: pyramidal TIFF slides whose answer is visible only at high magnification in
one region, with navigation traces for SFT (issue 26 item 3).

Each slide holds a few pieces of tissue; one of them carries a small darker focus (visible on the overview, so a
model can learn where to look). Inside the focus the cells line up in bands 2 level-0 pixels wide: horizontal for
answer A, vertical for B. The pyramid's levels are box-filtered by 4 and the bands are aligned to that grid, so
every level above 0 -- and the overview read from them -- shows the focus as one flat colour, the same for A and
B: the answer is decidable only from a view at the scan's resolution (``zoom(x, y, 0.25)``). Overviews of at most
``OVERVIEW`` (384) px are read from level 1 and are identical for A and B; use ``tools.overview_size`` <= 384.

``build_nav_demo(out)`` writes::

    slides/*.tiff        the slides (0.25 µm/px, 3 levels)
    rl.jsonl eval.jsonl  slide QA records (id, slide, question, options, answer, focus: {x, y} level-0 centre)
    traces.jsonl         one navigation per training question: the overview, a zoom on the focus at 0.25 µm/px
                         run through SlideViewer (its view saved under views/), and the answer with its reasoning,
                         as a tool-calling conversation (assistant ``tool_calls`` / ``tool`` messages, images in
                         order of appearance, the tools' schemas in ``tools``): an SFT record kind
                         (corpora.traces), so ``recipes.sft data=traces.jsonl`` trains on it
    sft.jsonl            each trace followed by the same question without tools (overview + prompt -> answer,
                         ``thumbnail_record``), so the model also answers when no viewer is offered, and one copy
                         of its two looking exercises
    look.jsonl           ``looks`` copies per training slide of the trace's two decisions as short plain records
                         (``looking_records``: overview -> the zoom call; overview + view -> the answer), each
                         slide's thumbnail record too: the first SFT of recipes.slide_nav, before sft.jsonl
    navdemo.json         seed and sizes
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from corpora.slides.synthetic import tissue_image, write_pyramidal_tiff

MPP = 0.25
HEIGHT, WIDTH = 1024, 1536
# The largest overview OpenSlide reads from level 1 (box-filtered): identical for A and B. A larger one is resized
# from level 0, where the bands alias into a faint moiré (up to 22 grey levels apart at 448 px, measured).
OVERVIEW = WIDTH // 4
# Side of the deciding focus, level-0 pixels (a multiple of 4: the box filter's grid). 192 px is a 24 px spot on a
# 192 px overview, which the tiny model learns to find in ~250 steps of 8 (a 64 px focus, an 8 px spot: not in 400),
# and a 64 px view anywhere within 64 px of its centre shows nothing but bands.
FOCUS = 192
BAND = 2  # band width in level-0 pixels: a period of 4 averages away exactly at every level above 0
# The two band colours; both answers use both, half each. Their mean is far darker than the tissue around it, so
# the focus stands out on a small overview (a tiny model learns where to zoom from it).
FOCUS_COLOURS = ((70, 20, 110), (170, 110, 180))
QUESTION = ("The darker focus on this slide holds atypical cells. How are they arranged? "
            "Look closely: the arrangement shows only at high magnification.")
OPTIONS = ["in horizontal bands", "in vertical bands"]
TRACE_MPP = MPP
THUMBNAIL_REASONING = "The overview shows the darker focus but not how its cells are arranged."
# Short: the tiny tokenizer spends ~1.5 characters a token, and call + tool result + reasoning share one
# completion budget in RL and evaluation.
REASONING = {"A": "At {mpp:g} µm/px the cells lie in horizontal bands.",
             "B": "At {mpp:g} µm/px the cells lie in vertical bands."}
VERSION = 3  # of the slides and texts: part of the recipe's corpus folder name, so an old build is not reused


def _blobs(rng) -> list[tuple[int, int, int, int]]:
    """Three non-overlapping tissue ellipses (cx, cy, rx, ry) in level-0 pixels."""
    cells = [(256, 256), (768, 640), (1280, 320), (1280, 800), (256, 780)]
    chosen = rng.choice(len(cells), size=3, replace=False)
    return [(cells[i][0], cells[i][1], int(rng.integers(150, 220)), int(rng.integers(120, 180))) for i in chosen]


def slide_array(answer: str, rng) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) uint8 slide and the focus centre (x, y); ``answer`` A = horizontal bands, B = vertical."""
    blobs = _blobs(rng)
    img = tissue_image(HEIGHT, WIDTH, blobs, seed=int(rng.integers(1 << 30)))
    cx, cy = blobs[int(rng.integers(len(blobs)))][:2]
    left = (cx - FOCUS // 2) // 4 * 4  # aligned to the 4x box filter of the pyramid
    top = (cy - FOCUS // 2) // 4 * 4
    yy, xx = np.mgrid[0:FOCUS, 0:FOCUS]
    stripe = (yy // BAND) % 2 if answer == "A" else (xx // BAND) % 2
    dark, light = (np.asarray(c, np.uint8) for c in FOCUS_COLOURS)
    img[top:top + FOCUS, left:left + FOCUS] = np.where(stripe[..., None] == 0, dark, light)
    return img, (left + FOCUS // 2, top + FOCUS // 2)


def build_nav_demo(out_dir, *, n_train: int = 16, n_eval: int = 16, seed: int = 0, view_size: int = 224,
                   budget: int = 4, overview_size: int = OVERVIEW, looks: int = 4) -> Path:
    """Write the corpus (see the module docstring) into ``out_dir``; the same seed gives the same files. The
    traces show what RL and evaluation will show with the same ``view_size``, ``budget`` and ``overview_size``
    (at most OVERVIEW: a larger overview tells A from B). ``looks`` copies of the two looking exercises per
    training slide go into look.jsonl (``looking_records``)."""
    if not 8 <= overview_size <= OVERVIEW:
        raise ValueError(f"expected 8 <= overview_size <= {OVERVIEW} (larger overviews show the answer), "
                         f"found {overview_size}")
    from corpora.slides.viewer import SlideViewer

    out = Path(out_dir)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "views").mkdir(exist_ok=True)
    (out / ".dataset-root").touch()
    rng = np.random.default_rng(seed)
    splits = {"rl": [], "eval": []}
    for split, n in (("rl", n_train), ("eval", n_eval)):
        for i in range(n):
            answer = "AB"[int(rng.integers(2))]
            img, (fx, fy) = slide_array(answer, rng)
            name = f"slides/{split}-{i:03d}.tiff"
            write_pyramidal_tiff(out / name, img, mpp=MPP, n_levels=3, compression="zlib", level=1)
            splits[split].append({"id": f"{split}-{i:03d}", "slide": name, "question": QUESTION, "options": OPTIONS,
                                  "answer": answer, "focus": {"x": fx, "y": fy}})
    for split, records in splits.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    viewer = SlideViewer(budget=budget, size=view_size, overview_size=overview_size)
    traces = [navigation_trace(out, record, viewer) for record in splits["rl"]]
    viewer._close()
    (out / "traces.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces))
    thumbnails = [thumbnail_record(record, t["images"][0]) for t, record in zip(traces, splits["rl"])]
    # one copy of each looking exercise beside its trace: measured, without them the reading learnt on look.jsonl
    # carried into the tools context on one corpus seed of two (bands 0.52 held-out), with them on both (1.00)
    sft = [r for t, thumb, record in zip(traces, thumbnails, splits["rl"])
           for r in (t, thumb, *looking_records(record, t, 1))]
    look = [r for t, thumb, record in zip(traces, thumbnails, splits["rl"])
            for r in (thumb, *looking_records(record, t, looks))]
    for name, rows in (("sft.jsonl", sft), ("look.jsonl", look)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "navdemo.json").write_text(json.dumps({"seed": seed, "n_train": n_train, "n_eval": n_eval, "mpp": MPP,
                                                  "view_size": view_size, "budget": budget,
                                                  "overview_size": overview_size, "looks": looks}, indent=2))
    return out


def navigation_trace(root: Path, record: dict, viewer) -> dict:
    """The conversation a good navigator has on ``record``: the overview and question, a zoom on the focus at the
    scan's resolution (run through ``viewer``, the view written to ``views/<id>.png``), then the answer."""
    from corpora.prompts import render_prompt, render_response

    observation = viewer.reset(slide=str(root / record["slide"]), id=record["id"])
    overview = f"views/{record['id']}-overview.png"
    viewer.overview.save(root / overview)
    x, y = record["focus"]["x"], record["focus"]["y"]
    view = viewer.zoom(x, y, TRACE_MPP)
    view_file = f"views/{record['id']}.png"
    view.image.save(root / view_file)
    call = {"type": "function", "function": {"name": "zoom", "arguments": {"x": x, "y": y, "mpp": TRACE_MPP}}}
    reasoning = REASONING[record["answer"]].format(mpp=TRACE_MPP)
    return {
        "id": record["id"], "slide": record["slide"], "images": [overview, view_file], "tools": tool_schemas(),
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": render_prompt(
                "cot", record["question"], record["options"]) + observation}]},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "zoom", "content": [{"type": "image"}, {"type": "text", "text": view.text}]},
            {"role": "assistant", "content": render_response("cot", reasoning, record["answer"])},
        ],
        "views": [{**v.to_json(), "slide": record["slide"]} for v in viewer.views],  # relative: a moved corpus
    }


@functools.cache
def _schemas() -> str:
    from transformers.utils import get_json_schema

    from corpora.slides.viewer import SlideViewer

    viewer = SlideViewer()
    return json.dumps([get_json_schema(viewer.zoom), get_json_schema(viewer.tissue_regions)])


def thumbnail_record(record: dict, overview: str) -> dict:
    """The same question without tools: the overview and the prompt alone, answered with the record's answer (which
    the overview cannot show). Trained beside the traces, so the model answers in format when no viewer is offered
    -- the thumbnail-only baseline (``--view-budget 0``) is then a guess, not a broken reply."""
    from corpora.prompts import render_prompt, render_response

    return {"id": f"{record['id']}-thumbnail", "images": [overview], "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": render_prompt(
            "cot", record["question"], record["options"])}]},
        {"role": "assistant", "content": render_response("cot", THUMBNAIL_REASONING, record["answer"])}]}


def looking_records(record: dict, trace: dict, copies: int) -> list[dict]:
    """The two decisions of ``trace`` as short plain records, ``copies`` times each, in the trace's own words and
    images but without its tools section (~700 of a trace's ~1,100 tokens, with the tiny tokenizer):

    * *where*: the overview, the prompt and the viewer's observation -> the trace's zoom call, written as the chat
      template writes it (``<tool_call>`` JSON ``</tool_call>``);
    * *second look*: the overview, the prompt, then the view with its caption -> the trace's reasoning and answer.

    Why (measured with the tiny Qwen3-VL, 160 training slides, held-out slides): alone, each decision is learnt in
    100-150 steps of 8; inside full traces neither is, even in 12 epochs (the ~700-token tools section dilutes the
    attention from the answer to the 28 image tokens). Learnt first on these records (without the tools section,
    where 1.00, bands 1.00), they carry over into the tools context after a few epochs of traces (where 0.63, bands
    1.00). A plain record's images come first in its user turn (corpora.chat), so the second look's view follows
    the overview there rather than the prompt; the reading still carries over."""
    messages = trace["messages"]
    prompt = messages[0]["content"]
    call = messages[1]["tool_calls"][0]["function"]
    view_caption = messages[2]["content"][1]["text"]
    call_text = "<tool_call>\n" + json.dumps({"name": call["name"], "arguments": call["arguments"]}) + "\n</tool_call>"
    out = []
    for k in range(copies):
        out.append({"id": f"{record['id']}-where{k}", "images": [trace["images"][0]], "messages": [
            {"role": "user", "content": prompt}, {"role": "assistant", "content": call_text}]})
        out.append({"id": f"{record['id']}-look{k}", "images": trace["images"], "messages": [
            {"role": "user", "content": [*prompt, {"type": "image"}, {"type": "text", "text": view_caption}]},
            {"role": "assistant", "content": messages[3]["content"]}]})
    return out


def tool_schemas() -> list[dict]:
    """The JSON schemas of the viewer's tools, as TRL renders them into the chat template's tool section (and as
    each trace's ``tools`` carries them, so corpora.traces / recipes.sft render the same section)."""
    return json.loads(_schemas())


def sft_dataset(traces, *, overview_size: int | None = None):
    """``traces.jsonl`` as a dataset TRL's SFTTrainer trains on (``messages``, ``images``, ``tools``).

    Why a transform: TRL 1.16's ``prepare_multimodal_messages`` fills the ``images`` column into placeholders
    outside ``tool`` turns only and keeps image blocks that already carry their image; a view belongs to a tool
    turn, so it is put into its block when a row is read (Arrow cannot store an image among text blocks). Use
    with ``SFTConfig(remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})``."""
    from datasets import Dataset
    from PIL import Image

    traces = Path(traces)
    rows = [json.loads(line) for line in traces.read_text().splitlines() if line.strip()]
    schemas = json.dumps(tool_schemas())
    table = Dataset.from_list([{"id": r["id"], "messages": json.dumps(r["messages"]),
                                "image_files": [str(traces.parent / f) for f in r["images"]]} for r in rows])

    def load(path, first):
        image = Image.open(path).convert("RGB")
        if first and overview_size:
            image.thumbnail((overview_size, overview_size))
        return image

    def to_rows(batch):
        out = {"id": batch["id"], "messages": [], "images": [], "tools": []}
        for text, files in zip(batch["messages"], batch["image_files"]):
            messages, pending = json.loads(text), iter(files[1:])
            for message in messages:
                if message["role"] == "tool" and isinstance(message["content"], list):
                    message["content"] = [{**b, "image": load(next(pending), False)} if b.get("type") == "image"
                                          else b for b in message["content"]]
                elif isinstance(message["content"], str):
                    message["content"] = [{"type": "text", "text": message["content"]}]
            out["messages"].append(messages)
            out["images"].append([load(files[0], True)])
            out["tools"].append(json.loads(schemas))
        return out

    return table.with_transform(to_rows)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m corpora.slides.navdemo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder to write the corpus into")
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-eval", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--view-size", type=int, default=224)
    p.add_argument("--overview-size", type=int, default=OVERVIEW, help=f"at most {OVERVIEW}")
    p.add_argument("--budget", type=int, default=4, help="views per question the traces' prompt offers")
    p.add_argument("--looks", type=int, default=4, help="copies per training slide of the looking exercises "
                                                        "in look.jsonl")
    args = p.parse_args(argv)
    if min(args.n_train, args.n_eval, args.budget) < 1 or args.view_size < 8 or not 8 <= args.overview_size <= OVERVIEW \
            or args.looks < 0:
        p.error(f"expected --n-train, --n-eval, --budget >= 1, --view-size >= 8, 8 <= --overview-size <= {OVERVIEW} "
                f"and --looks >= 0, found {args.n_train}, {args.n_eval}, {args.budget}, {args.view_size}, "
                f"{args.overview_size}, {args.looks}")
    out = build_nav_demo(args.out, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed,
                         view_size=args.view_size, budget=args.budget, overview_size=args.overview_size,
                         looks=args.looks)
    print(json.dumps({"out": str(out), "train": args.n_train, "eval": args.n_eval, "traces": args.n_train}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
