"""Gather what the browser shows: a run's lineage, each checkpoint's evaluations, every question with each stage's
answer, the paired comparisons, confusion tables and reward curves, as one JSON-able dict.

Reads only what the other commands wrote (registry manifests, ``metrics.json`` + ``predictions.jsonl`` found through
``evaluation.report.evaluations``, TensorBoard scalars through ``evaluation.report.scalar_series``); statistics come
from ``evaluation.metrics`` (Wilson intervals, the paired comparison).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from evaluation.metrics import paired_comparison
from evaluation.report import DEFAULT_REWARD_TAGS, checkpoint_label, evaluations, history, scalar_series

SMOOTHING = 0.6  # TensorBoard's default EMA weight: the curves read as they do there
MAX_OPTION_SETS = 12  # more question families than this (options differ per question): confusion by option letter
MAX_CLASSES = 15
# The settings a reader compares between stages; the full config is one click away in the page.
KEY_SETTINGS = ("algorithm", "loss_type", "lr", "learning_rate", "max_steps", "steps", "epochs", "batch_size",
                "batch", "num_generations", "temperature", "beta", "epsilon", "epsilon_high", "max_completion_length",
                "rewards", "reward_weights", "template", "lora", "train", "center_image_features")


def stage_keys(chain: list[dict]) -> list[str]:
    """``data-stage`` names: the manifest's stage (``base`` for a folder outside the registry); a stage that occurs
    twice (an RL run continued, a compared run) is told apart by its ``stage/run/step-N`` label."""
    names = [c.get("stage") or "base" for c in chain]
    return [n if names.count(n) == 1 else checkpoint_label(c) for n, c in zip(names, chain)]


def _settings(entry: dict) -> dict:
    cfg = entry.get("config") or {}
    return {k: cfg[k] for k in KEY_SETTINGS if cfg.get(k) not in (None, "", [])}


def _read_rows(predictions: Path) -> list[dict]:
    if not predictions.is_file():
        return []
    with open(predictions, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _newest_by_suite(found: list[dict], path: str) -> dict[str, dict]:
    """suite -> the newest evaluation of the checkpoint at ``path`` (a re-evaluation replaces the older one)."""
    mine = [m for m in found if Path(m["model_path"]).resolve() == Path(path).resolve()]
    return {m["suite"]: m for m in sorted(mine, key=lambda m: m.get("evaluated") or "")}


def _slide(row: dict) -> dict | None:
    """A slide record's thumbnail and the regions the model viewed: from the row's ``navigation`` (a slide-viewer
    record), or given by the row (``slide: {thumbnail, width, height}`` + ``regions``; regions are level-0 pixels
    ``[x, y, w, h]`` or dicts), each at the top level or under ``meta``; else found from the tiles it was shown."""
    meta = row.get("meta") or {}
    navigation = row.get("navigation") or meta.get("navigation")
    if isinstance(navigation, dict) and navigation.get("slide"):
        return _navigated_slide(navigation)
    slide = row.get("slide") or meta.get("slide")
    if not isinstance(slide, dict) or not slide.get("thumbnail"):
        return _tile_cache_slide(row.get("images") or [])
    regions = []
    for r in row.get("regions") or meta.get("regions") or []:
        box = [r.get(k) for k in ("x", "y", "w", "h")] if isinstance(r, dict) else list(r)[:4]
        if len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
            regions.append(box)
    return {"thumbnail": slide["thumbnail"], "width": slide.get("width"), "height": slide.get("height"),
            "regions": regions}


@lru_cache(maxsize=256)
def _slide_info(path: str) -> dict | None:
    """The slide's size and µm/px (``corpora.slides``, OpenSlide), read once per slide; None when unreadable."""
    from corpora.slides import SlideError, open_slide

    try:
        with open_slide(path) as slide:
            return {"width": slide.info.width, "height": slide.info.height, "mpp": slide.info.mpp}
    except (SlideError, OSError):
        return None


def _navigated_slide(navigation: dict) -> dict:
    """A question answered by navigating the slide (``corpora.slides.viewer.SlideViewer.record``: ``slide`` and
    ``views`` with centre x, y in level-0 pixels and the field of view in µm): each view's level-0 box."""
    info = _slide_info(str(navigation["slide"])) or {}
    regions = []
    for v in navigation.get("views") or []:
        extent = v["field_um"] / info["mpp"] if info.get("mpp") else v.get("size", 0)  # µm -> level-0 px
        regions.append([round(v["x"] - extent / 2, 1), round(v["y"] - extent / 2, 1), round(extent, 1),
                        round(extent, 1)])
    return {"thumbnail": None, "source": str(navigation["slide"]), "width": info.get("width"),
            "height": info.get("height"), "regions": regions}


@lru_cache(maxsize=256)
def _tile_set(root: str) -> tuple[dict, dict[str, dict]] | None:
    """(summary, tile file -> record) of a ``corpora.slides`` tile cache folder, None when ``root`` is not one."""
    try:
        summary = json.loads((Path(root) / "summary.json").read_text())
        with open(Path(root) / "tiles.jsonl", encoding="utf-8") as f:
            tiles = {t["file"]: t for t in map(json.loads, f) if t}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (summary, tiles) if isinstance(summary.get("info"), dict) else None


def _tile_cache_slide(images: list[str]) -> dict | None:
    """A slide record reaches the model as tiles of the ``corpora.slides`` cache (``<root>/tiles/NNNNNN_xX_yY.png``
    listed in ``<root>/tiles.jsonl`` with level-0 x, y, µm/px and size; ``<root>/summary.json`` with the slide's
    info; ``<root>/thumbnail.png`` where the cache keeps one): the viewed regions are those tiles' level-0 boxes."""
    slide, regions = None, []
    for image in images:
        path = Path(image)
        found = _tile_set(str(path.parent.parent)) if path.parent.name == "tiles" else None
        tile = found and found[1].get(f"tiles/{path.name}")
        if not tile:
            continue
        summary, _ = found
        info = summary["info"]
        if slide is None:
            thumb = path.parent.parent / "thumbnail.png"
            slide = {"thumbnail": str(thumb) if thumb.is_file() else None, "source": summary.get("slide"),
                     "width": info.get("width"), "height": info.get("height"), "regions": regions}
        extent = tile["size"] * (tile["mpp"] / info["mpp"] if info.get("mpp") else 1.0)  # output px -> level-0 px
        regions.append([tile["x"], tile["y"], round(extent, 1), round(extent, 1)])
    return slide


def _gold_and_predicted(row: dict) -> tuple[str, str] | None:
    """(gold class, predicted class) of an MCQ row: the option texts (letters when options are missing)."""
    from corpora.grading import extract_answer, match_option

    options = row.get("options") or []
    answer = str(row.get("answer") or "")
    gold = match_option(extract_answer(answer) or answer if "<answer>" in answer.lower() else answer, options)
    if gold is None:
        return None
    said = match_option(row["extracted"], options) if row.get("extracted") else None
    name = lambda letter: options["ABCDEFGHIJ".index(letter)] if options else letter  # noqa: E731
    return name(gold), name(said) if said else "(no answer)"


def confusion(rows: list[dict]) -> list[dict]:
    """Per-class confusion of the MCQ rows, one table per option set (a question family such as "which tissue?"
    with its classes as options): ``[{"title", "classes": gold, "predicted": columns, "counts": [[...]]}]``. When
    nearly every question has options of its own (most public benchmarks) the classes mean nothing: one table by
    option letter."""
    mcq = [r for r in rows if r.get("kind") == "mcq"]
    groups: dict[tuple, list[dict]] = {}
    for r in mcq:
        groups.setdefault(tuple(r.get("options") or ()), []).append(r)
    if len(groups) > MAX_OPTION_SETS or any(len(o) > MAX_CLASSES for o in groups):
        groups = {(): [{**r, "options": []} for r in mcq]}
    tables = []
    for options, members in groups.items():
        pairs = [p for p in map(_gold_and_predicted, members) if p]
        if not pairs:
            continue
        questions = {r.get("question") for r in members}
        title = (questions.pop() if len(questions) == 1 else
                 "options: " + " / ".join(options) if options else "by option letter")
        classes = sorted({g for g, _ in pairs})
        predicted = classes + sorted({p for _, p in pairs} - set(classes), key=lambda p: (p == "(no answer)", p))
        counts = [[sum(1 for g, p in pairs if g == c and p == q) for q in predicted] for c in classes]
        tables.append({"title": title, "n": len(pairs), "classes": classes, "predicted": predicted, "counts": counts})
    return tables


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """TensorBoard's debiased exponential moving average (the first points are not pulled towards zero)."""
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = last * weight + (1 - weight) * v
        norm = norm * weight + (1 - weight)
        out.append(last / norm)
    return out


def _reward_name(tag: str) -> str:
    m = re.search(r"rewards/([^/]+)", tag)
    return m.group(1) if m else tag.rsplit("/", 1)[-1]


def reward_curves(chain: list[dict], log_dirs: list[Path], tags: tuple[str, ...]) -> dict:
    """Each reward tag of the RL runs in the lineage, raw and smoothed, with the weight the run gave it."""
    weights = {}
    for c in chain:
        cfg = c.get("config") or {}
        names, given = cfg.get("rewards") or [], cfg.get("reward_weights") or []
        for i, name in enumerate(names):
            weights[str(name)] = given[i] if i < len(given) else None  # None: the RL stage's default weight
    series = []
    for name, points in scalar_series(log_dirs, tags).items():
        run_dir, _, tag = name.rpartition(" ")
        reward = _reward_name(tag)
        weight = next((w for r, w in weights.items() if reward == r or reward.startswith(f"{r}_")), None)
        steps, values = [p[0] for p in points], [p[1] for p in points]
        series.append({"name": reward if reward != "reward" else "total (weighted sum)", "tag": tag,
                       "run": run_dir, "weight": weight, "steps": steps, "values": values,
                       "smoothed": smooth(values)})
    return {"smoothing": SMOOTHING, "tags": list(tags), "series": series,
            "weights": weights}


def _answer(row: dict) -> dict:
    """One stage's answer in short keys (10 000 questions x several stages must stay a few MB)."""
    out = {"p": row.get("prediction") or "", "x": row.get("extracted"), "c": 1 if row.get("correct") else 0,
           "s": round(float(row.get("score") or 0.0), 4), "f": 1 if row.get("format_ok") else 0}
    if row.get("judge_failed"):
        out["j"] = 1
    return out


def comparisons(stages: list[str], correct: dict[str, dict[str, dict[str, bool]]], suites: list[str],
                extra_pairs: list[tuple[str, str]] = ()) -> list[dict]:
    """Paired comparison (``evaluation.metrics.paired_comparison``) of each stage against the one before it, per
    suite, on the questions both answered."""
    out = []
    pairs = list(zip(stages, stages[1:])) + list(extra_pairs)
    for suite in suites:
        for before, after in pairs:
            a, b = correct.get(before, {}).get(suite), correct.get(after, {}).get(suite)
            if not a or not b:
                continue
            shared = set(a) & set(b)
            if not shared:
                continue
            c = paired_comparison({i: a[i] for i in shared}, {i: b[i] for i in shared})
            out.append({"suite": suite, "before": before, "after": after, **c})
    return out


def gather(ref: str, compare: list[str] = (), *, home: Path, reward_tags: tuple[str, ...] = DEFAULT_REWARD_TAGS,
           logs: list[Path] = ()) -> dict:
    """Everything the page shows for ``ref``'s lineage (oldest first) plus the heads of ``compare`` refs."""
    from stages import registry

    chain, log_dirs = history(ref, home)
    heads = [c for c in chain if c.get("path")]
    for other in compare:
        other_chain, other_logs = history(other, home)
        head = other_chain[-1]
        if all(Path(head["path"]).resolve() != Path(c["path"]).resolve() for c in heads):
            heads.append(head)
            log_dirs += [d for d in other_logs if d not in log_dirs]
    log_dirs += [Path(p) for p in logs]
    keys = stage_keys(heads)
    found = evaluations(home, heads)
    stages, questions, correct, suites = [], {}, {}, []
    for key, entry in zip(keys, heads):
        evals = _newest_by_suite(found, entry["path"])
        stages.append({"key": key, "label": checkpoint_label(entry) if entry.get("ref") else
                       Path(entry.get("base") or entry["path"]).name,
                       "ref": entry.get("ref"), "path": entry["path"], "kind": entry.get("kind"),
                       "created": entry.get("created"), "parent": entry.get("parent"),
                       "settings": _settings(entry), "config": entry.get("config") or {},
                       "evaluations": {}, "confusion": {}})
        for suite, m in evals.items():
            suites += [suite] if suite not in suites else []
            rows = _read_rows(Path(m["_file"]).parent / "predictions.jsonl")
            settings = m.get("settings") or {}
            stages[-1]["evaluations"][suite] = {
                "overall": m["overall"], "by_subset": m.get("by_subset", {}), "template": m.get("template"),
                "evaluated": m.get("evaluated"), "n": settings.get("n", m["overall"]["n"]),
                "decoding": settings.get("decoding"), "data_sha256": settings.get("data_sha256"),
                "ids_sha256": settings.get("ids_sha256"), "file": m["_file"], "rows": len(rows)}
            table = confusion(rows)
            if table:
                stages[-1]["confusion"][suite] = table
            correct.setdefault(key, {})[suite] = {str(r["id"]): bool(r["correct"]) for r in rows}
            for r in rows:
                q = questions.setdefault((suite, str(r["id"])), {
                    "id": str(r["id"]), "suite": suite, "subset": r.get("subset") or "", "kind": r.get("kind") or "",
                    "question": r.get("question") or "", "options": r.get("options") or [],
                    "answer": r.get("answer") or "", "images": list(r.get("images") or []), "slide": _slide(r),
                    "answers": {}})
                q["answers"][key] = _answer(r)
    lineage_n = len([c for c in chain if c.get("path")])
    extra = [(keys[lineage_n - 1], k) for k in keys[lineage_n:]] if lineage_n else []
    return {
        "ref": ref, "compare": list(compare), "home": str(home), "lineage": registry.lineage_text(list(reversed(chain))),
        "stages": stages, "lineage_stages": keys[:lineage_n], "suites": suites,
        "questions": list(questions.values()),
        "comparisons": comparisons(keys[:lineage_n], correct, suites, extra),
        "rewards": reward_curves(heads, log_dirs, tuple(reward_tags)),
    }
