"""The benchmark table papers report, in one command: several checkpoints x several suites.

``python -m evaluation.table --model rl:latest --model sft:latest --suites pathmmu,pathvqa --data-root DIR``

Every (model, suite) cell is an ordinary ``evaluation.run`` evaluation (kept under
``$PATHOR1_HOME/reports/<checkpoint>/<suite>/`` with its settings and predictions). The table gives accuracy with
its Wilson 95% CI per cell, the mean over suites, and for each pair of consecutive models (in ``--model`` order)
the paired difference per suite on the same questions (95% CI, McNemar p). Written as ``table.json`` and
``table.md`` to ``--out`` (default ``$PATHOR1_HOME/reports/table-<suites>/``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evaluation import distributed
from evaluation.matrix import parse_model_args
from evaluation.metrics import paired_comparison
from evaluation.run import evaluate, run_cli


def _correct_by_id(out_dir: str) -> dict[str, bool]:
    with open(Path(out_dir) / "predictions.jsonl", encoding="utf-8") as f:
        return {row["id"]: bool(row["correct"]) for row in map(json.loads, f) if row}


def _cell(m: dict) -> dict:
    o = m["overall"]
    return {"accuracy": o["accuracy"], "ci95": o["ci95"], "n": o["n"], "mean_score": o["mean_score"],
            "template": m["template"], "ids_sha256": m["settings"]["ids_sha256"], "out_dir": m["out_dir"]}


def _parse_data(values: list[str]) -> dict[str, str]:
    data = {}
    for v in values:
        suite, sep, path = v.partition("=")
        if not sep or not suite or not path:
            raise ValueError(f"--data takes SUITE=PATH, got {v!r}")
        data[suite] = path
    return data


def preflight(suites: list[str], data: dict[str, str], options: dict) -> None:
    """Read every suite's data before the first model loads: a broken release found after an hour of the first
    model's evaluations would waste that hour. Demo suites are left to their evaluation (their data is the
    corpus each checkpoint trained on)."""
    from evaluation.suites import get_suite, load_suite_report, suite_data

    keep = ("split", "image_root", "subset_by")
    for s in suites:
        if s in data or (options.get("data_root") and get_suite(s).layout is not None):
            load_suite_report(s, suite_data(s, data.get(s), options.get("data_root")),
                              **{k: options.get(k) for k in keep})


def benchmark_table(models: dict[str, str], suites: list[str], *, data: dict[str, str] | None = None,
                    out: str | Path | None = None, **eval_options) -> dict:
    """Evaluate every ``label -> model ref`` on every suite; write and return the table dict."""
    data = data or {}
    unknown = sorted(set(data) - set(suites))
    if unknown:
        raise ValueError(f"--data names suites not in --suites: {', '.join(unknown)}")
    if eval_options.get("manifest") and len(suites) > 1:
        raise ValueError("--manifest fixes the questions of one suite; give the table one suite or no manifest")
    preflight(suites, data, eval_options)
    results = {label: {s: evaluate(ref, s, data.get(s), **eval_options) for s in suites}
               for label, ref in models.items()}
    rows = list(models)
    table = {
        "suites": suites, "rows": rows, "models": models,
        "cells": {label: {s: _cell(m) for s, m in by_suite.items()} for label, by_suite in results.items()},
        "mean_accuracy": {label: sum(m["overall"]["accuracy"] for m in by_suite.values()) / len(suites)
                          for label, by_suite in results.items()},
        "differences": {},
    }
    if distributed.world()[0] == 0:  # predictions are on rank 0's disk
        for before, after in zip(rows, rows[1:]):
            table["differences"][f"{after} - {before}"] = {
                s: paired_comparison(_correct_by_id(table["cells"][before][s]["out_dir"]),
                                     _correct_by_id(table["cells"][after][s]["out_dir"])) for s in suites}
    if out is None:
        from stages import registry

        out = registry.reports_dir(f"table-{'-'.join(suites)}")
    table["out_dir"] = str(out)
    if distributed.world()[0] == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "table.json").write_text(json.dumps(table, indent=2))
        (Path(out) / "table.md").write_text(table_markdown(table))
    return table


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def table_markdown(table: dict) -> str:
    suites = table["suites"]
    lines = ["# benchmark table", "", "accuracy % [Wilson 95% CI] (n)", "",
             "| model | " + " | ".join(suites) + " | mean |", "|---|" + "---:|" * (len(suites) + 1)]
    for label in table["rows"]:
        cells = table["cells"][label]
        lines.append(f"| {label} | " + " | ".join(
            f"{_pct(cells[s]['accuracy'])} [{_pct(cells[s]['ci95'][0])}, {_pct(cells[s]['ci95'][1])}] ({cells[s]['n']})"
            for s in suites) + f" | {_pct(table['mean_accuracy'][label])} |")
    if table["differences"]:
        lines += ["", "paired difference on the same questions, points [95% CI] McNemar p", "",
                  "| comparison | " + " | ".join(suites) + " |", "|---|" + "---:|" * len(suites)]
        for name, by_suite in table["differences"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{100 * c['difference']:+.1f} [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}] "
                f"p={c['mcnemar_p']:.2g}" for c in (by_suite[s] for s in suites)) + " |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    from evaluation.config import parse_command

    p = argparse.ArgumentParser(prog="python -m evaluation.table", description=__doc__, add_help=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="[LABEL=]REF",
                   help="a checkpoint (registry ref or folder); repeat, in the order to compare")
    p.add_argument("--suites", required=True, help="comma-separated suite names (python -m evaluation.run --help)")
    p.add_argument("--data", action="append", default=[], metavar="SUITE=PATH",
                   help="data of one suite (overrides --data-root for it); repeat")
    p.add_argument("--out", help="output folder (default $PATHOR1_HOME/reports/table-<suites>)")
    parsed = parse_command(p, argv, suites=True)
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    return run_cli(lambda: benchmark_table(parse_model_args(args.model), suites, data=_parse_data(args.data),
                                           out=args.out, **cfg.evaluate_kwargs()), table_markdown)


if __name__ == "__main__":
    sys.exit(main())
