"""Render a run's history as PNG plots embedded in markdown.

``python -m evaluation.report rl:latest``  the checkpoint and its ancestors (registry lineage)
``python -m evaluation.report --home runs``  everything under a $PATHOR1_HOME

Reads what the other commands wrote: ``metrics.json`` files (``evaluation.run``) -> stage-over-stage accuracy
bars with 95% CI error bars; TensorBoard event files under ``$PATHOR1_HOME/logs/<stage>/<run>`` -> reward
curves (tags chosen by ``--reward-tags``, shell patterns); ``matrix.json`` files (``evaluation.matrix``) -> heat
maps. Writes ``report.md`` and the PNGs to ``--out`` (default ``$PATHOR1_HOME/reports/report-<name>/``).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from pathlib import Path

from evaluation.metrics import metrics_table

DEFAULT_REWARD_TAGS = ("train/reward", "train/rewards/*/mean")  # the std series would share the reward axis


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collect(root: Path, name: str, required: tuple[str, ...]) -> list[dict]:
    """Every ``name`` JSON file under ``root`` that has the ``required`` keys (others are not ours)."""
    found = []
    for p in sorted(root.rglob(name)):
        data = _read(p)
        if isinstance(data, dict) and all(k in data for k in required):
            found.append({**data, "_file": str(p)})
    return found


def evaluations(home: Path, checkpoints: list[dict] | None = None) -> list[dict]:
    """Every ``evaluation.run`` result (``metrics.json`` + ``_file``) under ``home``; with ``checkpoints`` (registry
    lineage entries) only those of these models. The one place that knows where evaluation results live: the
    report and ``evaluation.browse`` read them through here."""
    from stages import registry

    # Only the reports folder when there is one: the rest of a home (checkpoints, slide tile caches) can hold
    # hundreds of thousands of files and no evaluation.
    reports = registry.reports_dir(root=home)
    found = collect(reports if reports.is_dir() else home, "metrics.json", ("suite", "overall", "model_path"))
    if checkpoints is None:
        return found
    # by registry id (stage/run/step: holds in a copied or moved home), else by folder
    labels = {checkpoint_label(c) for c in checkpoints if c.get("stage") and c.get("run") is not None}
    paths = {str(Path(c["path"]).resolve()) for c in checkpoints if c.get("path")}
    return [m for m in found if (m.get("checkpoint") or {}).get("stage") and checkpoint_label(m) in labels
            or str(Path(m["model_path"]).resolve()) in paths]


def checkpoint_label(entry: dict) -> str:
    """``sft/run/step-4`` for registry checkpoints, the folder name otherwise."""
    ck = entry.get("checkpoint") or entry
    if ck.get("stage") and ck.get("run") is not None:
        return f"{ck['stage']}/{ck['run']}/step-{ck.get('step')}"
    return Path(entry.get("model_path") or entry.get("path") or entry.get("base") or "?").name


def result_column(metrics: dict) -> str:
    """The suite, plus what made the measurement other than the full default one (``demo-mcq @limit8``): results
    of different settings never share a column."""
    return f"{metrics['suite']} @{metrics['variant']}" if metrics.get("variant") else metrics["suite"]


def accuracy_table(metrics: list[dict], order: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """``table[checkpoint][suite]`` = overall metrics of the newest evaluation; rows in ``order`` (pipeline
    order) or by checkpoint creation time."""
    table: dict[str, dict[str, dict]] = {}
    created: dict[str, str] = {}
    for m in sorted(metrics, key=lambda m: m.get("evaluated") or ""):  # newest evaluation wins
        label = checkpoint_label(m)
        table.setdefault(label, {})[result_column(m)] = m["overall"]
        created[label] = (m.get("checkpoint") or {}).get("created") or m.get("evaluated") or ""
    labels = [lb for lb in order if lb in table] if order else sorted(table, key=lambda lb: created[lb])
    return {lb: table[lb] for lb in labels}


def scalar_series(log_dirs: list[Path], patterns: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """``{"<run dir> <tag>": [(step, value), ...]}`` for every scalar tag matching ``patterns``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series = {}
    event_dirs = sorted({f.parent for d in log_dirs if d.is_dir() for f in d.rglob("events.out.tfevents.*")})
    for d in event_dirs:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})  # 0 = keep every point
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if any(fnmatch.fnmatch(tag, p) for p in patterns):
                name = f"{_short(d, log_dirs)} {tag}".strip()
                series[name] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return series


def _short(d: Path, roots: list[Path]) -> str:
    for r in roots:
        if d.is_relative_to(r):
            rel = d.relative_to(r.parent if r.name else r)
            return str(rel).replace("/runs/", "/")
    return d.name


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def history(run: str | None, home: Path) -> tuple[list[dict], list[Path]]:
    """(lineage oldest first, TensorBoard log dirs) of ``run``; everything under ``home`` when run is None."""
    from stages import registry

    if run is None:
        return [], [registry.logs_dir(root=home) if registry.logs_dir(root=home).is_dir() else home]
    chain = list(reversed(registry.Registry(home).lineage(run)))
    logs = [registry.logs_dir(c["stage"], c["run"], home) for c in chain if c.get("stage") and c.get("run")]
    return chain, logs


def render_report(run: str | None = None, *, home: str | Path | None = None, out: str | Path | None = None,
                  reward_tags: tuple[str, ...] = DEFAULT_REWARD_TAGS, logs: list[str | Path] = ()) -> Path:
    """Write ``report.md`` + PNGs for ``run`` (a registry ref) or, without one, for everything in ``home``."""
    from evaluation.plots import accuracy_bars, curves, heatmap  # matplotlib: only when drawing (fast --help)
    from stages import registry

    home = Path(home) if home else registry.home()
    chain, log_dirs = history(run, home)
    log_dirs += [Path(p) for p in logs]
    out = Path(out) if out else registry.reports_dir(f"report-{slug(run or 'all')}", root=home)
    out.mkdir(parents=True, exist_ok=True)

    metrics = evaluations(home, chain or None)
    order = [checkpoint_label(c) for c in chain if c.get("path")] if chain else None
    table = accuracy_table(metrics, order)
    series = scalar_series(log_dirs, tuple(reward_tags))
    matrices = collect(home, "matrix.json", ("suite", "rows", "subsets", "accuracy"))

    title = f"# pathor1 report — {run or home}"
    md = [title, ""]
    if chain:
        md += ["lineage (oldest first): " + " → ".join(checkpoint_label(c) for c in chain), ""]
    md += ["## accuracy by stage", ""]
    if table:
        accuracy_bars(table, out / "accuracy.png", title="accuracy by checkpoint (95% Wilson CI)")
        md += ["![accuracy by checkpoint](accuracy.png)", ""]
        if any(" @" in col for row in table.values() for col in row):
            md += ["Columns named `suite @…` come from other settings than the suite's full default evaluation "
                   "(`limit`, `manifest`, `template`, decoding / judge `settings`): compare only within a column; "
                   "every bar is labelled with its n.", ""]
        for label, row in table.items():
            md += [f"**{label}**", ""] + metrics_table(row) + [""]
    else:
        md += [f"no metrics.json found under {home} (run `python -m evaluation.run`)", ""]
    md += ["## RL reward curves", ""]
    if series:
        curves(series, out / "rewards.png", "rewards during training", "reward (mean over the batch)")
        md += ["![reward curves](rewards.png)", "", f"tags: {', '.join(reward_tags)}", ""]
    else:
        md += [f"no TensorBoard scalars matching {', '.join(reward_tags)} under "
               f"{', '.join(map(str, log_dirs)) or home}", ""]
    md += ["## generalisation matrix", ""]
    for i, mx in enumerate(matrices):
        png = f"matrix-{i}-{slug(mx['suite'])}.png"
        heatmap(mx, out / png)
        md += [f"![generalisation matrix {mx['suite']}]({png})", "", f"from {mx['_file']}", ""]
    if not matrices:
        md += ["no matrix.json found (run `python -m evaluation.matrix`)", ""]
    (out / "report.md").write_text("\n".join(md))
    return out / "report.md"


def add_history_options(p: argparse.ArgumentParser) -> None:
    """Where a run's history is read from: shared by this report and ``evaluation.browse``."""
    p.add_argument("--home", help="a $PATHOR1_HOME to read (default: $PATHOR1_HOME or ./runs)")
    p.add_argument("--reward-tags", default=DEFAULT_REWARD_TAGS,
                   type=lambda text: tuple(t.strip() for t in text.split(",") if t.strip()),
                   help=f"comma-separated TensorBoard scalar tags or shell patterns drawn as reward curves "
                        f"(default {','.join(DEFAULT_REWARD_TAGS)})")
    p.add_argument("--logs", action="append", default=[], help="extra folder with TensorBoard event files")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="registry ref of the run's last checkpoint (e.g. rl:latest)")
    p.add_argument("--out", help="output folder (default <home>/reports/report-<run>)")
    add_history_options(p)
    args = p.parse_args(argv)
    try:
        path = render_report(args.run, home=args.home, out=args.out, logs=args.logs, reward_tags=args.reward_tags)
    except LookupError as e:  # an unknown registry ref
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
