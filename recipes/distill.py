"""Chain-of-thought SFT data by rejection sampling: a teacher reasons about each question, and only the traces
whose answer the one scorer (`corpora.grading`) marks correct are kept.

    python -m recipes.distill --teacher sft:latest --data qa.jsonl --out sft_distilled.jsonl --samples 4
    python -m recipes.distill --teacher http://127.0.0.1:8000 --teacher-model Qwen2.5-VL-72B --data qa.jsonl ...

The teacher is a checkpoint (registry ref or folder, sampled in this process in batches) or an OpenAI-compatible
endpoint (`vllm serve`, a hosted API; images go as data URLs, replies are cached on disk). Per question: sample
`--samples` traces with `--template`, keep the correct ones, drop near-duplicates (normalised text similarity
>= `--dedup`), optionally keep only the `--keep-shortest` k. Each record is a chat SFT record (`messages` +
`images`) with `provenance`: teacher, template, sampling settings and the question's acceptance rate.

With `--tools slide_view [--view-budget N]` the questions name a whole slide (records with `slide`) and the
teacher (a checkpoint) navigates it through the same multi-turn loop as `evaluation.run --tools`
(evaluation/navigate.py: overview, `zoom` / `tissue_regions` calls, each view as an image in a tool turn); a kept
navigation is written as a trace in the schema of `corpora.slides.navdemo`'s traces.jsonl (assistant
`tool_calls` / `tool` messages, the overview and views saved under `<out stem>-views/`, `images` in order of
appearance, paths relative to the output's folder, the views' records), with the same provenance.

Resume: `<out>.progress.jsonl` lists the settings and every finished question; a rerun with the same settings
skips finished batches, drops records a crash left half-written, and produces the same file an uninterrupted run
would (every batch is sampled with its own seed). The last printed line is a JSON summary.
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import re
import sys
from pathlib import Path

from corpora.files import write_text_atomic

log = logging.getLogger("recipes.distill")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recipes.distill", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--teacher", required=True, help="registry ref (sft:latest), model folder, or endpoint URL")
    p.add_argument("--teacher-model", help="model name the endpoint serves (URL teachers only)")
    p.add_argument("--data", required=True, help="QA file (kind qa): questions with reference answers")
    p.add_argument("--out", required=True, help="output JSONL of chat SFT records (inside the images' dataset root)")
    p.add_argument("--keep-shortest", type=int, default=0, help="keep only the k shortest correct traces (0 = all)")
    p.add_argument("--dedup", type=float, default=0.9,
                   help="drop a trace this similar (0-1, difflib ratio of normalised text) to a kept one")
    p.add_argument("--tools", choices=["slide_view"],
                   help="the teacher navigates each question's slide with the viewer (records name a slide)")
    p.add_argument("--view-budget", type=int, default=4, help="--tools: views per question (default 4)")
    add_sampler_arguments(p, samples=4, temperature=0.7)
    args = p.parse_args(argv)
    for name in ("samples", "batch_size", "max_new_tokens", "concurrency"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.keep_shortest < 0 or not 0 < args.dedup <= 1 or args.temperature <= 0:
        p.error("need --keep-shortest >= 0, 0 < --dedup <= 1 and --temperature > 0")
    if args.teacher.startswith(("http://", "https://")) and not args.teacher_model:
        p.error("an endpoint teacher needs --teacher-model (the model name it serves)")
    if args.tools and args.teacher.startswith(("http://", "https://")):
        p.error("--tools slide_view runs the viewer between the teacher's turns in this process: give a checkpoint "
                "--teacher (registry ref or folder), not an endpoint")
    if args.tools and args.view_budget < 1:
        p.error(f"--view-budget: expected >= 1 with --tools (the views the teacher may take), got {args.view_budget}")
    return args


def add_sampler_arguments(p: argparse.ArgumentParser, *, samples: int, temperature: float) -> None:
    """The sampler's options (LocalTeacher / EndpointTeacher read them), shared with recipes.filter."""
    p.add_argument("--samples", type=int, default=samples, help=f"answers sampled per question (default {samples})")
    p.add_argument("--template", default="cot", help="prompt template (corpora/prompts) the model is asked with")
    p.add_argument("--temperature", type=float, default=temperature,
                   help=f"sampling temperature (default {temperature})")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="questions per generation batch (also the resume unit)")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cuda / cpu for a checkpoint model (default: cuda when available)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable with the endpoint's key")
    p.add_argument("--concurrency", type=int, default=8, help="endpoint requests in flight at most")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# -- selection: pure functions
def _normalised(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def select_traces(traces: list[str], answer: str, kind: str, options, template: str, *, dedup: float,
                  keep_shortest: int) -> tuple[list[str], int]:
    """(kept traces, number correct): correct by `corpora.grading.grade`, shortest first, near-duplicates dropped."""
    kept, n_correct = select_indices(traces, answer, kind, options, template, dedup=dedup,
                                     keep_shortest=keep_shortest)
    return [traces[i] for i in kept], n_correct


def select_indices(answers: list[str], answer: str, kind: str, options, template: str, *, dedup: float,
                   keep_shortest: int, keys: list[str] | None = None) -> tuple[list[int], int]:
    """select_traces by index: ``answers`` are graded, ``keys`` (default: the answers; a navigation's calls and
    answer) are what length and near-duplicates are judged on."""
    from corpora.grading import grade

    keys = answers if keys is None else keys
    correct = [i for i, t in enumerate(answers) if grade(t, answer, kind, options, template=template).correct]
    kept: list[int] = []
    for i in sorted(correct, key=lambda i: len(keys[i])):  # stable: equal lengths keep sampling order
        if all(difflib.SequenceMatcher(None, _normalised(keys[i]), _normalised(keys[k])).ratio() < dedup
               for k in kept):
            kept.append(i)
    return (kept[:keep_shortest] if keep_shortest else kept), len(correct)


# -- teachers: samples(questions, seed) -> one list of traces per question
class LocalTeacher:
    """A checkpoint sampled in this process: prompts as evaluation renders them, each repeated `samples` times."""

    def __init__(self, ref: str, args):
        import torch

        from evaluation.generate import load_model
        from stages.registry import Registry, read_manifest
        from stages.model import vision_token_ids

        self.path = Registry().resolve(ref)
        info = read_manifest(self.path) or {}
        self.describe = {"ref": ref, "path": str(self.path), **{k: info.get(k) for k in ("stage", "run", "step")}}
        self.model, self.processor = load_model(self.path, device=args.device)
        self.args, self.torch = args, torch
        self.suppress = vision_token_ids(self.processor)  # a sampled <|image_pad|> would break the mrope positions

    def samples(self, questions: list[dict], seed: int) -> list[list[str]]:
        from PIL import Image

        from evaluation.generate import chat_prompt

        n, tok = self.args.samples, self.processor.tokenizer
        prompts = [chat_prompt(self.processor, q, self.args.template) for q in questions for _ in range(n)]
        images = []
        for q in questions:
            loaded = [Image.open(p).convert("RGB") for p in q["images"]]
            images += loaded * n
        inputs = self.processor(text=prompts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        gen_eos = self.model.generation_config.eos_token_id
        eos = set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]) | {tok.eos_token_id}
        eos.discard(None)
        self.torch.manual_seed(seed)
        with self.torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=True, temperature=self.args.temperature,
                                      top_p=self.args.top_p, top_k=0, max_new_tokens=self.args.max_new_tokens,
                                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else min(eos),
                                      suppress_tokens=self.suppress or None)
        texts = []
        for row in out[:, inputs["input_ids"].shape[1]:].tolist():
            stop = next((j for j, t in enumerate(row) if t in eos), len(row))
            texts.append(tok.decode(row[:stop], skip_special_tokens=True).strip())
        return [texts[i * n:(i + 1) * n] for i in range(len(questions))]

    def navigations(self, questions: list[dict], seed: int, limits) -> list[list]:
        """`samples` sampled navigations (evaluation.navigate.NavCompletion) per slide question."""
        from evaluation.navigate import navigate_many

        n, a = self.args.samples, self.args
        rows = [q for q in questions for _ in range(n)]
        self.torch.manual_seed(seed)
        done = navigate_many(self.model, self.processor, rows, limits, template=a.template,
                             max_new_tokens=a.max_new_tokens, batch_size=len(rows), progress=False,
                             sampling={"do_sample": True, "temperature": a.temperature, "top_p": a.top_p, "top_k": 0,
                                       "suppress_tokens": self.suppress or None})
        flat = [c[0] for c in done]
        return [flat[i * n:(i + 1) * n] for i in range(len(questions))]


class EndpointTeacher:
    """An OpenAI-compatible endpoint asked for `n` choices per question (cached: a rerun costs nothing)."""

    def __init__(self, url: str, args):
        from corpora.endpoint import ChatEndpoint

        self.endpoint = ChatEndpoint(url, args.teacher_model, api_key_env=args.api_key_env,
                                     concurrency=args.concurrency)
        self.describe, self.args = self.endpoint.describe(), args

    def samples(self, questions: list[dict], seed: int) -> list[list[str]]:
        from corpora.endpoint import user_message
        from corpora.prompts import render_prompt

        a = self.args
        conversations = [[user_message(render_prompt(a.template, q["question"], q["options"]), q["images"])]
                         for q in questions]
        replies = self.endpoint.chat_many(conversations, n=a.samples, temperature=a.temperature, top_p=a.top_p,
                                          max_tokens=a.max_new_tokens, seed=seed)
        return [r or [] for r in replies]  # a failed request: no traces for that question, counted as 0 accepted


# -- files
def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (a crash mid-write) is left out."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def relative_images(images: list[str], out: Path) -> list[str]:
    from corpora.sources import dataset_root

    root = dataset_root(out)
    rel = []
    for image in images:
        if not Path(image).resolve().is_relative_to(root):
            raise ValueError(f"--out {out}: image {image} lies outside the output's dataset root {root}; write the "
                             f"output inside the data's folder (or mark a common ancestor with .dataset-root)")
        rel.append(str(Path(image).resolve().relative_to(root)))
    return rel


def navigation_key(completion) -> str:
    """What a navigation is judged on for length and near-duplicates: its tool calls in order, then its answer."""
    calls = [c.get("function", c) for m in completion.messages for c in m.get("tool_calls") or []]
    return json.dumps(calls, sort_keys=True) + completion.text


def trace_parts(completion) -> tuple[list[dict], list]:
    """A navigation's conversation with every image block emptied, and its images in order of appearance (the
    overview, then the views)."""
    images, messages = [], []
    for message in completion.messages:
        content = message["content"]
        if isinstance(content, list):
            content = [dict(b) for b in content]
            for block in content:
                if block.get("type") == "image":
                    images.append(block.pop("image"))
        messages.append({**message, "content": content})
    return messages, images


def valid_trace(completion) -> bool:
    """A navigation corpora.traces accepts as a trace (every call names a viewer tool with JSON arguments, every
    call has its result, a final answer): only those can be kept."""
    from corpora.slides.navdemo import tool_schemas
    from corpora.traces import TraceError, parse_trace

    messages, images = trace_parts(completion)
    try:
        parse_trace({"tools": tool_schemas(), "messages": messages, "images": ["-"] * len(images)})
    except TraceError:
        return False
    return True


def navigation_record(q: dict, completion, out: Path, name: str, provenance: dict) -> dict:
    """A kept navigation as a trace (corpora.traces, the schema of corpora.slides.navdemo's traces): the
    conversation with its images saved as ``<out stem>-views/<name>-<k>.png`` next to ``out`` (k in order of
    appearance), ``images`` relative to the output's dataset root, the viewer's ``tools``, the slide and the
    views' records."""
    from corpora.slides.navdemo import tool_schemas
    from corpora.sources import dataset_root

    messages, images = trace_parts(completion)
    folder = out.parent / f"{out.stem}-views"
    folder.mkdir(exist_ok=True)
    files = [folder / f"{name}-{k}.png" for k in range(len(images))]
    for image, file in zip(images, files):
        image.save(file)
    root, slide = dataset_root(out), Path(q["slide"]).resolve()
    slide = str(slide.relative_to(root)) if slide.is_relative_to(root) else str(slide)
    return {"id": name, "slide": slide, "images": relative_images([str(f) for f in files], out), "tools": tool_schemas(),
            "messages": messages, "views": [{**v, "slide": slide} for v in completion.navigation.get("views", [])],
            "provenance": provenance}


def resume_state(out: Path, progress: Path, settings: dict, batch_size: int) -> set[int]:
    """Indices of batches already finished; out and progress are trimmed to exactly those batches."""
    lines = read_jsonl(progress)
    if lines and lines[0].get("settings") != settings:
        raise ValueError(f"{out} was started with other settings ({progress}: {lines[0].get('settings')}); "
                         f"use another --out or delete both files")
    done_rows = [r for r in lines[1:] if "question_index" in r]
    per_batch: dict[int, int] = {}
    for r in done_rows:
        per_batch[r["question_index"] // batch_size] = per_batch.get(r["question_index"] // batch_size, 0) + 1
    sizes = settings["batch_sizes"]
    done = {b for b, count in per_batch.items() if count == sizes[b]}
    records = [r for r in read_jsonl(out) if r.get("provenance", {}).get("question_index", -1) // batch_size in done]
    write_jsonl(out, records)
    write_jsonl(progress, [{"settings": settings}] + [r for r in done_rows if r["question_index"] // batch_size in done])
    return done


def distill(args, *, after_batch=None) -> dict:
    from tqdm.auto import tqdm

    from corpora.prompts import render_prompt
    from corpora.readers import load_qa

    limits = None
    if getattr(args, "tools", None):
        from evaluation.navigate import tool_limits, tool_records

        limits = tool_limits(args.tools, args.view_budget)
        questions = tool_records("qa", args.data, limits)[: args.limit or None]
    else:
        questions = list(load_qa(args.data))[: args.limit or None]
    if not questions:
        raise ValueError(f"{args.data}: no questions")
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    progress_file = out.with_name(out.name + ".progress.jsonl")
    teacher = EndpointTeacher(args.teacher, args) if args.teacher.startswith(("http://", "https://")) \
        else LocalTeacher(args.teacher, args)
    sampling = {"samples": args.samples, "temperature": args.temperature, "top_p": args.top_p,
                "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    bs = args.batch_size
    batches = [questions[i:i + bs] for i in range(0, len(questions), bs)]
    settings = {"data": str(Path(args.data).resolve()), "teacher": teacher.describe, "template": args.template,
                "sampling": sampling, "dedup": args.dedup, "keep_shortest": args.keep_shortest,
                "batch_sizes": [len(b) for b in batches]}
    if limits is not None:
        from dataclasses import asdict

        sampling["tools"] = {"env": args.tools, **asdict(limits)}  # in the settings and every provenance
    done = resume_state(out, progress_file, settings, bs)
    bar = tqdm(total=len(questions), initial=sum(len(batches[b]) for b in done), desc="distill", unit="question",
               disable=args.no_progress)
    for b, batch in enumerate(batches):
        if b in done:
            continue
        seed = args.seed * 1_000_003 + b
        navigations = teacher.navigations(batch, seed, limits) if limits is not None else None
        # a navigation that would not make a valid trace (a call of no viewer tool, ...) is never kept
        traces = [[c.text if valid_trace(c) else "" for c in n] for n in navigations] if navigations \
            else teacher.samples(batch, seed=seed)
        records, stats = [], []
        for k, (q, sampled) in enumerate(zip(batch, traces)):
            keys = [navigation_key(c) for c in navigations[k]] if navigations else None
            kept, n_correct = select_indices(sampled, q["answer"], q["kind"], q["options"], args.template,
                                             dedup=args.dedup, keep_shortest=args.keep_shortest, keys=keys)
            rate = n_correct / len(sampled) if sampled else 0.0
            row = {"question_index": b * bs + k, "question_id": q["id"], "sampled": len(sampled),
                   "correct": n_correct, "kept": len(kept), "acceptance_rate": rate}
            if navigations:
                row["views"] = sum(len(c.navigation.get("views", [])) for c in navigations[k])
            stats.append(row)
            prompt = render_prompt(args.template, q["question"], q["options"])
            for j, i in enumerate(kept):
                provenance = {**row, "answer": q["answer"], "teacher": teacher.describe, "template": args.template,
                              "sampling": sampling}
                if navigations:
                    records.append(navigation_record(q, navigations[k][i], out, f"{q['id']}-distill{j}", provenance))
                    continue
                records.append({"id": f"{q['id']}-distill{j}", "images": relative_images(q["images"], out),
                                "messages": [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": sampled[i]}],
                                "provenance": provenance})
        # records first, then the batch's progress lines: a crash in between leaves records resume_state drops
        with out.open("a") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with progress_file.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in stats)
        bar.update(len(batch))
        if after_batch is not None:
            after_batch(b)
    bar.close()
    rows = read_jsonl(progress_file)[1:]
    sampled, correct = sum(r["sampled"] for r in rows), sum(r["correct"] for r in rows)
    summary = {"out": str(out), "questions": len(rows), "sampled": sampled, "correct": correct,
               "kept": sum(r["kept"] for r in rows), "acceptance_rate": correct / sampled if sampled else 0.0,
               "questions_with_a_kept_trace": sum(r["kept"] > 0 for r in rows), "teacher": teacher.describe}
    if limits is not None:
        summary["views_per_sample"] = sum(r["views"] for r in rows) / sampled if sampled else 0.0
    return summary


def main(argv=None) -> int:
    import stages  # noqa: F401  (torchvision fix before the heavy imports)

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = distill(args)
    except (ValueError, LookupError, FileNotFoundError) as e:  # LookupError: unknown registry ref
        print(f"python -m recipes.distill: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
