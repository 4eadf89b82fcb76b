"""Accuracy with Wilson 95% intervals, per-subset / per-kind breakdowns, and the markdown summary.

Rows are the per-sample predictions written to ``predictions.jsonl``: each has ``correct`` (bool),
``score`` (0/1, or token F1 / judge score for open questions), ``format_ok`` (bool), ``n_tokens`` (int),
``subset`` and ``kind``.
"""
from __future__ import annotations

import math
from collections import defaultdict

Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; unlike the normal approximation it stays inside
    [0, 1] and is honest for the small n and extreme accuracies of subset breakdowns."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n correct one bound is exactly 0 or 1; in floating point centre - half is then ~1e-18 (n = 400),
    # which put the point estimate outside its own interval and crashed matplotlib's error bars.
    lower = 0.0 if correct == 0 else max(0.0, centre - half)
    upper = 1.0 if correct == n else min(1.0, centre + half)
    return (lower, upper)


def group_metrics(rows: list[dict]) -> dict:
    n = len(rows)
    k = sum(bool(r["correct"]) for r in rows)
    lo, hi = wilson_interval(k, n)
    mean = lambda key: (sum(float(r[key]) for r in rows) / n) if n else 0.0  # noqa: E731
    return {
        "n": n, "correct": k, "accuracy": k / n if n else 0.0, "ci95": [lo, hi],
        "mean_score": mean("score"), "format_rate": mean("format_ok"), "mean_tokens": mean("n_tokens"),
    }


def summarize(rows: list[dict]) -> dict:
    """Overall metrics plus the same metrics for every subset and every question kind."""
    by = {"subset": defaultdict(list), "kind": defaultdict(list)}
    for r in rows:
        for key in by:
            by[key][r.get(key) or "(none)"].append(r)
    return {
        "overall": group_metrics(rows),
        "by_subset": {s: group_metrics(rs) for s, rs in sorted(by["subset"].items())},
        "by_kind": {s: group_metrics(rs) for s, rs in sorted(by["kind"].items())},
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def metrics_table(groups: dict[str, dict]) -> list[str]:
    lines = ["| group | n | accuracy % | 95% CI | format % | mean tokens |", "|---|---:|---:|---|---:|---:|"]
    for name, m in groups.items():
        lo, hi = m["ci95"]
        lines.append(f"| {name} | {m['n']} | {_pct(m['accuracy'])} | [{_pct(lo)}, {_pct(hi)}] | "
                     f"{_pct(m['format_rate'])} | {m['mean_tokens']:.1f} |")
    return lines


def markdown_summary(metrics: dict) -> str:
    head = [f"# {metrics['suite']} — {metrics['model']}", "",
            f"template `{metrics['template']}`, {metrics['overall']['n']} samples, "
            f"greedy, max_new_tokens {metrics['max_new_tokens']}", ""]
    body = metrics_table({"overall": metrics["overall"]}) + [""]
    sampling = metrics.get("sampling") or {}
    if sampling:
        decoding = (metrics.get("settings") or {}).get("decoding", {}).get("sampling") or {}
        knobs = ", ".join(f"{k} {v}" for k, v in decoding.items() if k not in ("mode", "max_new_tokens"))
        body += [f"## sampled answers ({knobs})", "", "| metric | % |", "|---|---:|"]
        body += [f"| {k} | {_pct(v)} |" for k, v in sampling.items() if k != "n_samples"] + [""]
    if len(metrics["by_subset"]) > 1 or "(none)" not in metrics["by_subset"]:
        body += ["## by subset", ""] + metrics_table(metrics["by_subset"]) + [""]
    body += ["## by question kind", ""] + metrics_table(metrics["by_kind"]) + [""]
    return "\n".join(head + body)


def paired_comparison(before: dict[str, bool], after: dict[str, bool]) -> dict:
    """How much ``after`` beats ``before`` on the SAME questions (``id -> correct``), with a paired 95% CI.

    Two checkpoints scored on one split are not independent samples, so comparing their separate Wilson
    intervals is needlessly weak: what matters is the questions one gets right and the other wrong. This
    returns the difference of accuracies with Newcombe's paired interval (hybrid score method 10, Stat. Med.
    1998) and the exact two-sided McNemar p-value on the discordant pairs. Newcombe's interval is written by hand
    because no library in our stack has it (scipy has the binomial test, not this). ``supported`` = the CI lies
    above zero.
    """
    ids = sorted(set(before) & set(after))
    if not ids or set(before) != set(after):
        raise ValueError(f"paired_comparison needs the same questions on both sides: {len(before)} before, "
                         f"{len(after)} after, {len(ids)} shared")
    n = len(ids)
    both = sum(before[i] and after[i] for i in ids)
    fixed = sum(after[i] and not before[i] for i in ids)  # wrong before, right after
    broken = sum(before[i] and not after[i] for i in ids)  # right before, wrong after
    neither = n - both - fixed - broken
    p_after, p_before = (both + fixed) / n, (both + broken) / n
    l1, u1 = wilson_interval(both + fixed, n)
    l2, u2 = wilson_interval(both + broken, n)
    denom = (both + fixed) * (broken + neither) * (both + broken) * (fixed + neither)
    phi = (both * neither - fixed * broken) / math.sqrt(denom) if denom else 0.0
    diff = p_after - p_before
    lower = diff - math.sqrt(max(0.0, (p_after - l1) ** 2 - 2 * phi * (p_after - l1) * (u2 - p_before)
                                 + (u2 - p_before) ** 2))
    upper = diff + math.sqrt(max(0.0, (u1 - p_after) ** 2 - 2 * phi * (u1 - p_after) * (p_before - l2)
                                 + (p_before - l2) ** 2))
    discordant = fixed + broken
    tail = sum(math.comb(discordant, k) for k in range(min(fixed, broken) + 1)) / 2 ** discordant if discordant else 1.0
    return {"n": n, "difference": diff, "ci95": [max(-1.0, lower), min(1.0, upper)], "fixed": fixed,
            "broken": broken, "mcnemar_p": min(1.0, 2 * tail), "supported": lower > 0}
