"""Difficulty filtering of RL data: each question's pass rate from K sampled answers, only a band kept.

    python -m recipes.filter --model sft:latest --data rl.jsonl --samples 8 --band 0.125,0.875 --out rl_band.jsonl
    python -m recipes.filter --model http://127.0.0.1:8000 --model-name Qwen2.5-VL-7B --data rl.jsonl ...

Why: MedVLThinker found difficulty-filtered questions beat more questions; a question the policy always or never
answers right gives GRPO a group with equal rewards -- no gradient, only cost. The model is sampled with the
distillation sampler (`recipes.distill`: a checkpoint sampled in this process, or an OpenAI-compatible endpoint),
each answer graded by the one scorer (`corpora.grading`). `--band LO,HI` keeps the questions whose pass rate p
satisfies LO <= p <= HI. The output holds the QA records (`corpora.records` schema, images relative to the
output's dataset root, so it must lie inside the data's folder) with `pass_rate` added: `recipes.rl data=OUT`
trains on it, and `curriculum_order=pass_rate` orders RL by it. Next to it: `<out stem>.pass_rate.png`, the
histogram of every question's pass rate (kept band shaded).

Resume: `<out>.progress.jsonl` lists the settings and every finished question; a rerun with the same settings
samples only the batches not finished (each batch has its own seed, so the result equals an uninterrupted run).
The last printed line is a JSON summary (counts, the pass-rate histogram, the kept share per subset).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

from corpora.files import write_text_atomic

log = logging.getLogger("recipes.filter")
PROG = "python -m recipes.filter"


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the usage block before an error; bad input here is one line and exit 2."""

    def error(self, message):
        raise SystemExit(_fail(message))


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def parse_band(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        lo = hi = -1.0
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"--band: expected LO,HI with 0 <= LO <= HI <= 1, found {text!r}; fix: e.g. --band 0.1,0.9")
    return lo, hi


def parse_args(argv=None) -> argparse.Namespace:
    from recipes.distill import add_sampler_arguments

    p = _OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", required=True, help="registry ref (sft:latest), model folder, or endpoint URL")
    p.add_argument("--model-name", help="model name the endpoint serves (URL models only)")
    p.add_argument("--data", required=True, help="QA file (kind qa) with reference answers")
    p.add_argument("--out", required=True, help="output QA JSONL (inside the data's dataset root)")
    p.add_argument("--band", default="0.1,0.9", help="LO,HI: keep questions with LO <= pass rate <= HI (default 0.1,0.9)")
    add_sampler_arguments(p, samples=8, temperature=1.0)  # 1.0: as the RL rollouts sample
    args = p.parse_args(argv)
    for name in ("samples", "batch_size", "max_new_tokens", "concurrency"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected an integer >= 1, found {getattr(args, name)}")
    if args.temperature <= 0:
        p.error(f"--temperature: expected > 0, found {args.temperature}")
    try:
        args.band = parse_band(args.band)
    except ValueError as e:
        p.error(str(e))
    if args.model.startswith(("http://", "https://")) and not args.model_name:
        p.error(f"--model {args.model}: an endpoint needs --model-name (the model name it serves)")
    # the distillation sampler's argument names
    args.teacher, args.teacher_model = args.model, args.model_name
    return args


# -- pure functions
def pass_rate(traces: list[str], question: dict, template: str) -> tuple[int, float]:
    """(correct answers, pass rate) of the sampled traces, graded by `corpora.grading.grade`."""
    from corpora.grading import grade

    correct = sum(grade(t, question["answer"], question["kind"], question["options"], template=template).correct
                  for t in traces)
    return correct, correct / len(traces) if traces else 0.0


def histogram(rates: list[float], samples: int) -> dict[str, int]:
    """Questions per pass rate c/K (the only values K samples can give), as {"c/K": count} for every c."""
    counts = Counter(round(r * samples) for r in rates)
    return {f"{c}/{samples}": counts.get(c, 0) for c in range(samples + 1)}


def plot_histogram(hist: dict[str, int], band: tuple[float, float], samples: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [c / samples for c in range(samples + 1)]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    colours = ["tab:blue" if band[0] <= r <= band[1] else "tab:gray" for r in rates]
    ax.bar(rates, list(hist.values()), width=0.8 / samples, color=colours)
    ax.axvspan(band[0] - 0.4 / samples, band[1] + 0.4 / samples, color="tab:blue", alpha=0.08)
    ax.set_xlabel(f"pass rate ({samples} samples per question)")
    ax.set_ylabel("questions")
    ax.set_title(f"kept (blue): {sum(h for h, c in zip(hist.values(), colours) if c == 'tab:blue')} "
                 f"of {sum(hist.values())}, band [{band[0]:g}, {band[1]:g}]")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- files
def check_inputs(args) -> tuple[list[dict], list[list[str]], Path]:
    """(questions, their images relative to the output's dataset root, output path). Everything that can be wrong
    with the input fails here, before any model loads: the data (its first problem as file:line), the output's
    place (its dataset root must hold the images), the model reference."""
    from corpora.readers import load_qa
    from corpora.validate import validate
    from recipes.distill import relative_images
    from stages.registry import Registry

    data = Path(args.data)
    if not data.exists():
        raise ValueError(f"--data {data}: expected a QA file, found nothing there; fix the path")
    report = validate(data, "qa", template=args.template)
    if not report.ok:
        first = report.problems[0]
        raise ValueError(f"{first}; fix the record (python -m corpora.validate {data} --kind qa lists all "
                         f"{len(report.problems)})")
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # stderr is for the one-line error; the questions bar is ours
    questions = list(load_qa(data))[: args.limit or None]
    if not questions:
        raise ValueError(f"{data}: expected QA records, found none")
    out = Path(args.out).resolve()
    images = [relative_images(q["images"], out) for q in questions]
    if not args.model.startswith(("http://", "https://")):
        Registry().resolve(args.model)  # an unknown ref fails here, not after a model load
    return questions, images, out


def finished(progress: Path, settings: dict, batch_sizes: list[int], out: Path) -> dict[int, dict]:
    """{question index: its progress line} of the batches already finished; the file is trimmed to them."""
    from recipes.distill import read_jsonl, write_jsonl

    lines = read_jsonl(progress)
    if lines and lines[0].get("settings") != settings:
        raise ValueError(f"{out}: started with other settings ({progress}: {lines[0].get('settings')}); expected "
                         f"the same; fix: use another --out or delete {progress.name}")
    rows = {r["question_index"]: r for r in lines[1:] if "question_index" in r}
    starts = [sum(batch_sizes[:b]) for b in range(len(batch_sizes))]
    done = {i: rows[i] for b, start in enumerate(starts)
            if all(i in rows for i in range(start, start + batch_sizes[b]))
            for i in range(start, start + batch_sizes[b])}
    write_jsonl(progress, [{"settings": settings}] + [done[i] for i in sorted(done)])
    return done


def filter_questions(args, *, after_batch=None) -> dict:
    from tqdm.auto import tqdm

    from recipes.distill import EndpointTeacher, LocalTeacher

    questions, images, out = check_inputs(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    progress = out.with_name(out.name + ".progress.jsonl")
    endpoint = args.model.startswith(("http://", "https://"))
    bs = args.batch_size
    batches = [questions[i:i + bs] for i in range(0, len(questions), bs)]
    sampling = {"samples": args.samples, "temperature": args.temperature, "top_p": args.top_p,
                "max_new_tokens": args.max_new_tokens, "seed": args.seed, "template": args.template}
    model_id = args.model if endpoint else str(Path(_resolve(args.model)).resolve())
    settings = {"data": str(Path(args.data).resolve()), "model": model_id, "model_name": args.model_name,
                "sampling": sampling, "limit": args.limit, "batch_sizes": [len(b) for b in batches]}
    done = finished(progress, settings, settings["batch_sizes"], out)
    todo = [b for b in range(len(batches)) if b * bs not in done]
    model = None
    if todo:  # a finished run reloads nothing
        model = EndpointTeacher(args.model, args) if endpoint else LocalTeacher(args.model, args)
    bar = tqdm(total=len(questions), initial=len(done), desc="filter", unit="question", disable=args.no_progress)
    for b in todo:
        batch = batches[b]
        traces = model.samples(batch, seed=args.seed * 1_000_003 + b)  # distill's per-batch seed
        lines = []
        for k, (q, sampled) in enumerate(zip(batch, traces)):
            correct, rate = pass_rate(sampled, q, args.template)
            lines.append({"question_index": b * bs + k, "id": q["id"], "sampled": len(sampled), "correct": correct,
                          "pass_rate": rate})
        with progress.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in lines)
        done.update({r["question_index"]: r for r in lines})
        bar.update(len(batch))
        if after_batch is not None:
            after_batch(b)
    bar.close()

    lo, hi = args.band
    rates = [done[i]["pass_rate"] for i in range(len(questions))]
    kept = [{**q, "images": rel, "pass_rate": r} for q, rel, r in zip(questions, images, rates) if lo <= r <= hi]
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    hist = histogram(rates, args.samples)
    png = out.with_name(out.stem + ".pass_rate.png")
    plot_histogram(hist, args.band, args.samples, png)
    subsets = Counter(q["subset"] for q in questions)
    kept_subsets = Counter(q["subset"] for q in kept)
    return {"out": str(out), "histogram_png": str(png), "questions": len(questions), "kept": len(kept),
            "band": [lo, hi], "samples": args.samples, "mean_pass_rate": sum(rates) / len(rates),
            "pass_rate_histogram": hist,
            "kept_per_subset": {s: f"{kept_subsets.get(s, 0)}/{n}" for s, n in sorted(subsets.items())},
            "model": model.describe if model is not None else {"ref": args.model}}


def _resolve(ref: str) -> Path:
    from stages.registry import Registry

    return Registry().resolve(ref)


def main(argv=None) -> int:
    import stages  # noqa: F401  (torchvision fix before the heavy imports)

    try:
        args = parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = filter_questions(args)
    except (ValueError, LookupError, FileNotFoundError) as e:  # LookupError: unknown registry ref
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
