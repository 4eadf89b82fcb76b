"""Evaluate one checkpoint on one suite: ``python -m evaluation.run --model REF --suite NAME``.

REF is a registry reference (``rl:latest``, ``sft:<run>/<step>``) or any HF model folder. Writes
``predictions.jsonl``, ``metrics.json`` (scores + the settings they were measured with), ``summary.md`` and
``manifest.json`` (ids + image hashes) to ``$PATHOR1_HOME/reports/<checkpoint>/<suite>/`` -- never into the
checkpoint folder, which may be published or read-only. ``<checkpoint>`` is ``<stage>/<run>/step-N`` for registry
checkpoints, the folder name otherwise.

``--samples K --temperature T`` adds pass@k and majority@K to greedy accuracy; ``--compare-templates cot,nothink``
evaluates both templates on the same questions and reports their paired difference (95% CI, McNemar p), as
``--compare-thumbnail`` does for slide questions answered from the thumbnail and with the slide viewer;
``--export vlmeval`` also writes VLMEvalKit's prediction TSV; ``--manifest FILE`` evaluates exactly the questions
of an earlier evaluation's ``manifest.json``. Under ``accelerate launch`` / ``torchrun`` the questions are split
across ranks and gathered; only rank 0 writes.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from evaluation import distributed, navigate
from evaluation.generate import Completion, Decoding
from evaluation.metrics import markdown_summary, paired_comparison, summarize
from evaluation.sampling import majority_index, sampling_summary
from evaluation.suites import load_suite_report, suite_data

log = logging.getLogger("evaluation")
DEFAULT_TEMPLATE = "cot"
DEFAULT_MAX_NEW_TOKENS = Decoding().max_new_tokens  # another budget is a variant (Evaluation.variant)
BACKENDS = ("hf", "vllm")
EXPORTS = ("vlmeval",)


def resolve_model(model_ref: str | Path) -> tuple[Path, dict]:
    """(folder, manifest) for a registry ref, folder or hub id (``Registry.resolve_model``: then the "folder" is
    the id, which the Auto classes load); the manifest is {} for models we did not write."""
    from stages import registry

    path = Path(registry.Registry().resolve_model(str(model_ref)))
    return path, registry.read_manifest(path) or {}  # paths inside the home come back absolute


def pick_template(manifest: dict, template: str | None, profile: str = "pathor1") -> str:
    """The prompt template: the profile's (a field harness's wording), else ``template``, else the checkpoint's."""
    from evaluation.profiles import get_profile

    fixed = get_profile(profile).template
    if fixed:
        if template and template != fixed:
            raise ValueError(f"--profile {profile} asks with its own prompt ({fixed}); found --template {template}; "
                             "fix: drop --template or use --profile pathor1")
        return fixed
    trained_with = (manifest.get("extra") or {}).get("template")
    if template and trained_with and template != trained_with:
        log.warning("template %r overrides %r, the template this checkpoint was trained with", template, trained_with)
    return template or trained_with or DEFAULT_TEMPLATE


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def checkpoint_key(model_path: Path, manifest: dict) -> str:
    """``<stage>/<run>/step-NNNNNNNN`` for registry checkpoints, the folder name for any other model."""
    if manifest.get("stage") and manifest.get("run") is not None and manifest.get("step") is not None:
        return f"{_slug(manifest['stage'])}/{_slug(str(manifest['run']))}/step-{int(manifest['step']):08d}"
    return _slug(model_path.name)


def suite_key(suite: str, data: Path | None) -> str:
    """The suite's folder name; a VLMEvalKit TSV adds its file name (every TSV is its own benchmark)."""
    return f"{suite}-{_slug(data.stem)}" if suite == "vlmeval" and data is not None else suite


def default_out_dir(model_path: Path, manifest: dict, suite: str) -> Path:
    from stages import registry

    return registry.reports_dir(checkpoint_key(model_path, manifest), suite)


def load_callable(dotted: str) -> Callable:
    """``pkg.mod:func`` or ``pkg.mod.func`` -> the function (custom judges are given by dotted path)."""
    module, _, attr = dotted.partition(":") if ":" in dotted else dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot load callable {dotted!r}: {e}") from None


def grade_rows(samples: list[dict], completions, template: str, judge: Callable | None = None,
               profile: str = "pathor1") -> list[dict]:
    """One prediction row per sample, graded by the shared corpora scorer (the RL reward uses it too), or as the
    ``profile``'s harness extracts answers (``evaluation.profiles``).
    A judge replaces token F1 for open questions: a ``corpora.judge.Judge`` (the RL judge reward's, asked in one
    concurrent batch) or any ``judge(question, prediction, reference) -> float``. Where the judge fails (None) the
    row keeps its token F1 and is marked ``judge_failed``."""
    from evaluation.profiles import get_profile, grade_with

    how = get_profile(profile)
    grades = [grade_with(how, c.text, s["answer"], s["kind"], s.get("options") or (), template=template)
              for s, c in zip(samples, completions)]
    open_rows = [i for i, s in enumerate(samples) if judge is not None and s["kind"] == "open"]
    answers = [grades[i].extracted if grades[i].extracted is not None else completions[i].text for i in open_rows]
    if hasattr(judge, "score_many"):
        from corpora.judge import JudgeItem

        judged = judge.score_many([JudgeItem(samples[i]["question"], a, samples[i]["answer"],
                                             list(samples[i].get("options") or []), list(samples[i]["images"]))
                                   for i, a in zip(open_rows, answers)])
    else:
        judged = [judge(samples[i]["question"], a, samples[i]["answer"]) for i, a in zip(open_rows, answers)]
    judged_by_row = dict(zip(open_rows, judged))
    rows = []
    for i, (s, c, g) in enumerate(zip(samples, completions, grades)):
        score, correct = float(g.score), bool(g.correct)
        if i in judged_by_row and judged_by_row[i] is not None:
            score = float(judged_by_row[i])
            correct = score >= 0.5
        row = {
            "id": s["id"], "subset": s.get("subset", ""), "kind": s["kind"], "question": s["question"],
            "options": list(s.get("options") or []), "answer": s["answer"], "images": list(s["images"]),
            "prediction": c.text, "extracted": g.extracted, "correct": correct, "score": score,
            "format_ok": g.format_ok, "n_tokens": c.n_tokens,
        }
        if i in judged_by_row:
            row["judge_failed"] = judged_by_row[i] is None
        if s.get("meta"):
            row["meta"] = s["meta"]
        rows.append(row)
    return rows


def add_sample_columns(rows: list[dict], samples: list[dict], sampled: list[list[Completion]], template: str,
                       judge: Callable | None = None, profile: str = "pathor1") -> None:
    """``samples`` (each sampled answer graded) and ``majority_correct`` on every row."""
    for row, sample, completions in zip(rows, samples, sampled):
        graded = grade_rows([sample] * len(completions), completions, template, judge, profile)
        row["samples"] = [{k: g[k] for k in ("prediction", "extracted", "correct", "score", "n_tokens")}
                          for g in graded]
        top = majority_index([g["extracted"] for g in graded], sample["kind"], sample.get("options") or ())
        row["majority_correct"] = top is not None and graded[top]["correct"]


def make_judge(judge: str | Callable | None, judge_model: str | None = None):
    """``--judge``: an endpoint URL (the RL judge reward's ``corpora.judge.Judge``), or a dotted path to a callable."""
    if judge is None or callable(judge):
        return judge
    if judge.startswith(("http://", "https://")):
        from corpora.judge import Judge, JudgeConfig

        if not judge_model:
            raise ValueError("--judge URL needs --judge-model (the model name the endpoint serves)")
        return Judge(JudgeConfig(url=judge, model=judge_model))
    return load_callable(judge)


def write_results(out_dir: Path, rows: list[dict], metrics: dict, manifest: dict | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "predictions.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "summary.md").write_text(markdown_summary(metrics))
    if manifest is not None:
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


class _HFGenerator:
    def __init__(self, model_path: Path, device: str | None, dtype: str, batch_size: int, progress: bool):
        from evaluation.generate import load_model

        self.model, self.processor = load_model(model_path, device=device, dtype=dtype)
        self.dtype = str(self.model.dtype).removeprefix("torch.")
        self.batch_size, self.progress = batch_size, progress

    def __call__(self, samples: list[dict], decoding: Decoding, template: str) -> list[list[Completion]]:
        from evaluation.generate import generate_many

        return generate_many(self.model, self.processor, samples, decoding, template=template,
                             batch_size=self.batch_size, progress=self.progress)


class _VLLMGenerator:
    def __init__(self, model_path: Path, dtype: str, batch_size: int):
        self.model_path, self.batch_size = model_path, batch_size
        self.dtype = "bfloat16" if dtype == "auto" else dtype

    def __call__(self, samples: list[dict], decoding: Decoding, template: str) -> list[list[Completion]]:
        from evaluation.vllm_backend import generate_vllm

        return generate_vllm(self.model_path, samples, decoding, template=template, dtype=self.dtype,
                             batch_size=self.batch_size)


class Evaluation:
    """One checkpoint on one suite's questions: loaded once, run with one or several templates."""

    def __init__(self, model_ref, suite: str, data=None, limit=None, batch_size: int = 8, *,
                 max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
                 judge=None, judge_model=None, device=None, dtype="auto", progress=True, samples=1,
                 temperature=1.0, top_p=1.0, top_k=0, seed=0, backend="hf", manifest=None, data_root=None,
                 tools=None, view_budget=4, view_size=224, overview_size=448, profile="pathor1", **suite_options):
        from evaluation.provenance import apply_manifest

        from evaluation.profiles import get_profile

        self.profile = get_profile(profile)  # first: an unknown profile is refused before anything is read
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
        self.suite, self.model_ref = suite, str(model_ref)
        self.model_path, self.checkpoint = resolve_model(model_ref)  # first: a demo suite reads its corpus from it
        self.data = suite_data(suite, data, data_root, self.checkpoint)
        # --tools slide_view: the slide viewer's loop
        self.tools = navigate.tool_limits(tools, view_budget, view_size=view_size, overview_size=overview_size)
        if self.tools is not None:
            records, self.skipped = navigate.tool_records(suite, self.data, self.tools), {}
        else:
            records, skips = load_suite_report(suite, self.data, checkpoint=self.checkpoint, **suite_options)  # qa: its slide settings
            self.skipped = skips.as_dict()
        self.split = suite_options.get("split")
        if manifest:  # the manifest picks the questions; --limit then cuts its list
            records = apply_manifest(records, manifest)
        self.records = records[:limit] if limit else records
        self.greedy = Decoding(max_new_tokens=max_new_tokens)
        self.sampling = Decoding(max_new_tokens=max_new_tokens, samples=samples, temperature=temperature,
                                 top_p=top_p, top_k=top_k, seed=seed) if samples > 1 else None
        self.judge = make_judge(judge, judge_model)
        self.judge_spec = judge if isinstance(judge, str) else getattr(judge, "__name__", None)
        self.batch_size, self.backend, self.manifest_file = batch_size, backend, manifest
        self.limit, self.suite_options = limit, {k: v for k, v in suite_options.items() if v is not None}
        self.rank, self.world = distributed.world()
        if backend == "vllm" and self.tools is not None:
            raise ValueError("--tools runs its multi-turn loop on the transformers backend; drop --backend vllm")
        if backend == "vllm":
            if self.world > 1:
                raise ValueError("--backend vllm runs in one process (vLLM spreads a model over GPUs itself); "
                                 "do not start it under torchrun / accelerate launch")
            self.generator = _VLLMGenerator(self.model_path, dtype, batch_size)
        elif self.tools is not None:
            device = distributed.device_for_rank(device, self.world)
            self.generator = navigate.ToolGenerator(self.model_path, device, dtype, batch_size,
                                                    progress and self.rank == 0, self.tools)
        else:
            device = distributed.device_for_rank(device, self.world)
            self.generator = _HFGenerator(self.model_path, device, dtype, batch_size, progress and self.rank == 0)

    def _generate(self, decoding: Decoding, template: str) -> list[list[Completion]]:
        local = distributed.shard(self.records, self.rank, self.world)
        return distributed.gather(self.generator(local, decoding, template), self.rank, self.world)

    def variant(self, template: str) -> str:
        """What makes this measurement other than the suite's full, default one ("" when nothing does), e.g.
        ``limit8``, ``manifest-<sha>``, ``template-nothink``, ``tokens64``, ``samples4-<sha>``, ``judge-<sha>``,
        ``split-all``. Results go to ``<suite>@<variant>``, so a limited or otherwise different run never replaces
        the full one (and the report never plots them as one)."""
        def short(value) -> str:
            return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]

        parts = [f"limit{self.limit}"] if self.limit else []
        if self.manifest_file:
            parts.append("manifest-" + hashlib.sha256(Path(self.manifest_file).read_bytes()).hexdigest()[:8])
        if template != pick_template(self.checkpoint, None):
            parts.append(f"template-{_slug(template)}")
        if self.greedy.max_new_tokens != DEFAULT_MAX_NEW_TOKENS:
            parts.append(f"tokens{self.greedy.max_new_tokens}")
        if self.sampling:
            parts.append(f"samples{self.sampling.samples}-{short(self.sampling.record())}")
        if self.judge_spec:
            parts.append(f"judge-{short(self.judge_spec)}")
        if self.profile.name != "pathor1":  # a field harness's prompt and parsing
            parts.append(f"profile-{_slug(self.profile.name)}")
        if self.suite_options.get("split"):  # (subset_by only regroups the same questions' results)
            parts.append(f"split-{_slug(str(self.suite_options['split']))}")
        return "+".join(parts)

    def judge_record(self):
        """The judge as recorded with a score: an endpoint judge's URL, model and failure rate (never its key)."""
        return self.judge.describe() if hasattr(self.judge, "describe") else self.judge_spec

    def settings(self, template: str) -> dict:
        from evaluation.provenance import data_fingerprint, ids_hash, library_versions

        return {
            "suite": self.suite, "data": str(self.data), "data_sha256": data_fingerprint(self.data),
            "n": len(self.records), "ids_sha256": ids_hash([r["id"] for r in self.records]),
            "split": self.split or "default", "skipped": self.skipped,
            "manifest": str(self.manifest_file) if self.manifest_file else None, "template": template,
            "profile": {"name": self.profile.name, "extraction": self.profile.extraction,
                        "source": self.profile.source},
            "decoding": {"greedy": self.greedy.record(), "sampling": self.sampling and self.sampling.record()},
            "dtype": self.generator.dtype, "batch_size": self.batch_size, "backend": self.backend,
            "world_size": self.world, "judge": self.judge_record(), "libraries": library_versions(self.backend),
            **({"tools": self.generator.record()} if self.tools is not None else {}),
        }

    def run(self, template: str, out: Path | None = None, export: str | None = None) -> dict:
        """Generate, grade, summarise; rank 0 writes ``out`` (default: the reports folder) and returns metrics."""
        from evaluation.provenance import manifest

        t0 = time.perf_counter()
        greedy = [c[0] for c in self._generate(self.greedy, template)]
        rows = grade_rows(self.records, greedy, template, self.judge, self.profile.name)
        if self.tools is not None:
            navigate.add_navigation(rows, greedy)
        if self.sampling:
            add_sample_columns(rows, self.records, self._generate(self.sampling, template), template, self.judge,
                               self.profile.name)
        seconds = time.perf_counter() - t0
        variant = self.variant(template)
        key = suite_key(self.suite, self.data) + (f"@{variant}" if variant else "")
        out_dir = Path(out) if out else default_out_dir(self.model_path, self.checkpoint, key)
        metrics = {
            "suite": self.suite, "variant": variant, "model": self.model_ref, "model_path": str(self.model_path),
            "template": template,
            "data": str(self.data), "max_new_tokens": self.greedy.max_new_tokens, "batch_size": self.batch_size,
            "judge": self.judge_record(), "settings": self.settings(template),
            "checkpoint": {k: self.checkpoint.get(k) for k in ("stage", "run", "step", "parent", "created")},
            **summarize(rows), "sampling": sampling_summary(rows),
            **(navigate.views_summary(rows) if self.tools is not None else {}),
            "seconds": seconds, "samples_per_s": len(rows) / seconds if seconds else None,
            "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "out_dir": str(out_dir),
        }
        if self.rank == 0:
            write_results(out_dir, rows, metrics, manifest(self.suite, self.records))
            if export:
                metrics["export"] = str(self.export(rows, out_dir, export))
                (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics

    def export(self, rows: list[dict], out_dir: Path, fmt: str) -> Path:
        if fmt not in EXPORTS:
            raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(EXPORTS)}")
        from evaluation.vlmeval import export_vlmeval

        model = _slug(checkpoint_key(self.model_path, self.checkpoint).replace("/", "-"))
        dataset = self.data.stem if self.suite == "vlmeval" else self.suite
        return export_vlmeval(rows, out_dir / "vlmeval" / f"{model}_{_slug(dataset)}.tsv")


def evaluate(model_ref: str | Path, suite: str, data: str | Path | None = None, limit: int | None = None,
             batch_size: int = 8, *, template: str | None = None, out: str | Path | None = None,
             export: str | None = None, **options) -> dict:
    """Evaluate ``model_ref`` on ``suite`` and return the metrics dict (also written to disk, see module doc).

    ``options``: decoding (``max_new_tokens``, ``samples``, ``temperature``, ``top_p``, ``top_k``, ``seed``),
    ``judge``, ``device``, ``dtype``, ``backend``, ``manifest``, ``data_root``, ``progress`` and the suite options
    ``image_root``, ``split`` (pathmmu, vqarad), ``subset_by`` (omnimed).
    """
    pick_template({}, template, options.get("profile", "pathor1"))  # a conflicting --template: refused before the model
    ev = Evaluation(model_ref, suite, data, limit, batch_size, **options)
    return ev.run(pick_template(ev.checkpoint, template, ev.profile.name), out, export)


def compare_templates(model_ref: str | Path, suite: str, data: str | Path | None = None, limit: int | None = None,
                      batch_size: int = 8, *, templates: list[str], out: str | Path | None = None,
                      export: str | None = None, **options) -> dict:
    """One checkpoint, the same questions, two templates (e.g. ``cot,nothink``): each template's metrics and the
    paired difference second - first with its 95% CI and McNemar p (``evaluation.metrics.paired_comparison``)."""
    if len(templates) != 2 or templates[0] == templates[1]:
        raise ValueError(f"--compare-templates needs two different templates, got {','.join(templates)}")
    if options.get("profile", "pathor1") != "pathor1":
        raise ValueError(f"--compare-templates compares our templates; found --profile {options['profile']}, which "
                         "fixes the prompt; fix: drop --profile")
    options.pop("template", None)
    ev = Evaluation(model_ref, suite, data, limit, batch_size, **options)
    base = Path(out) if out else default_out_dir(ev.model_path, ev.checkpoint, suite_key(suite, ev.data))
    out_dir = base / f"compare-{templates[0]}-vs-{templates[1]}"
    results = {t: ev.run(t, out_dir / t, export) for t in templates}
    return _paired_report(ev, results, out_dir)


def compare_thumbnail(model_ref, suite: str, data=None, limit=None, batch_size: int = 8, *, view_budget: int = 4,
                      template: str | None = None, out=None, **options) -> dict:
    """The same model on the same slide questions twice -- thumbnail only (budget 0), then navigating with
    ``view_budget`` views (``evaluation.navigate``) -- and the paired difference tools - thumbnail (95% CI, McNemar
    p), with ``views_per_question``. The model loads once; each run writes its own folder under ``out``."""
    from dataclasses import replace

    if view_budget < 1:
        raise ValueError(f"--compare-thumbnail: expected --view-budget >= 1 (the tool run), found {view_budget}")
    options.pop("tools", None)
    options.pop("export", None)
    ev = Evaluation(model_ref, suite, data, limit, batch_size, tools="slide_view", view_budget=view_budget, **options)
    template = pick_template(ev.checkpoint, template)
    base = Path(out) if out else default_out_dir(ev.model_path, ev.checkpoint, suite_key(suite, ev.data))
    out_dir = base / f"compare-thumbnail-vs-views{view_budget}"
    runs = {}
    for name, limits in (("thumbnail", replace(ev.tools, budget=0)), ("tools", ev.tools)):
        ev.tools = ev.generator.limits = limits
        runs[name] = ev.run(template, out_dir / name)
    return _paired_report(ev, runs, out_dir,
                          views_per_question={name: m["views_per_question"] for name, m in runs.items()})


def _paired_report(ev: Evaluation, runs: dict[str, dict], out_dir: Path, **extra) -> dict:
    """Two runs of ``ev`` on the same questions (``runs``: name -> metrics, predictions in ``out_dir/name``): each
    run's accuracy and the paired difference second - first; rank 0 writes comparison.json and comparison.md."""
    comparison = {}
    if ev.rank == 0:  # the other ranks generated their share; rank 0 holds every prediction
        before, after = ({r["id"]: r["correct"] for r in _read_rows(out_dir / name)} for name in runs)
        comparison = paired_comparison(before, after)
    report = {"suite": ev.suite, "model": ev.model_ref, "templates": list(runs), "comparison": comparison,
              "accuracy": {name: m["overall"]["accuracy"] for name, m in runs.items()}, **extra,
              "settings": {name: m["settings"] for name, m in runs.items()}, "out_dir": str(out_dir)}
    if ev.rank == 0:
        (out_dir / "comparison.json").write_text(json.dumps(report, indent=2))
        (out_dir / "comparison.md").write_text(comparison_markdown(report))
    return report


def _read_rows(out_dir: Path) -> list[dict]:
    with open(out_dir / "predictions.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def comparison_markdown(report: dict) -> str:
    a, b = report["templates"]
    c = report["comparison"]
    lo, hi = c["ci95"]
    return "\n".join([
        f"# {report['suite']} — {report['model']}: `{b}` vs `{a}`", "",
        "| template | accuracy % |", "|---|---:|",
        *[f"| {t} | {100 * acc:.1f} |" for t, acc in report["accuracy"].items()], "",
        f"paired difference ({b} - {a}) on the same {c['n']} questions: {100 * c['difference']:+.1f} points, "
        f"95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}], McNemar p = {c['mcnemar_p']:.3g} "
        f"({c['fixed']} right only with {b}, {c['broken']} right only with {a})", ""])


def run_cli(call: Callable[[], dict], render: Callable[[dict], str]) -> int:
    """Run a command; bad input (data, suite, registry ref) is one clear line on stderr and exit code 2.
    Under several ranks only rank 0 prints."""
    from evaluation.suites import SuiteError

    try:
        result = call()
    except (SuiteError, LookupError, ValueError, RuntimeError, OSError) as e:  # LookupError: unknown registry ref
        # OSError: a file named on the command line that cannot be read (a --manifest, a model folder's weights)
        print(f"error: {e}", file=sys.stderr)
        return 2
    if distributed.world()[0] == 0:
        print(render(result))
        print(f"written to {result['out_dir']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from evaluation.config import parse_command

    p = argparse.ArgumentParser(prog="python -m evaluation.run", description=__doc__, add_help=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare-templates", metavar="A,B",
                   help="evaluate with both templates on the same questions; report B - A (paired CI, McNemar p)")
    p.add_argument("--compare-thumbnail", action="store_true",
                   help="slide questions (--suite qa): thumbnail only, then with the slide viewer (--view-budget "
                        "views); report tools - thumbnail (paired CI, McNemar p) and views_per_question")
    parsed = parse_command(p, argv, suites=True)
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not cfg.model:
        print("error: expected a model (--model REF or model=REF), found none; fix: --model rl:latest or a folder",
              file=sys.stderr)
        return 2
    kwargs = cfg.evaluate_kwargs()
    out, export, data = cfg.out or None, cfg.export or None, cfg.data or None
    from stages.registry import HomeError, check_writable

    try:  # before any answer is generated: a read-only home must not cost the whole evaluation
        check_writable(Path(out) if out else None)
    except HomeError as e:
        print(f"python -m evaluation.run: error: {e}", file=sys.stderr)
        return 2
    if args.compare_templates:
        templates = [t.strip() for t in args.compare_templates.split(",") if t.strip()]
        kwargs.pop("template")
        return run_cli(lambda: compare_templates(cfg.model, cfg.suite, data, out=out, export=export,
                                                 templates=templates, **kwargs), comparison_markdown)
    if args.compare_thumbnail:
        return run_cli(lambda: compare_thumbnail(cfg.model, cfg.suite, data, out=out, **kwargs),
                       comparison_markdown)
    return run_cli(lambda: evaluate(cfg.model, cfg.suite, data, out=out, export=export, **kwargs), markdown_summary)


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
