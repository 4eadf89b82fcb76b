"""The three report figures, as PNG files: accuracy bars with CI error bars, reward curves, the
generalisation heat map. matplotlib's Agg backend: no display needed (servers, CI)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_bars(table: dict[str, dict[str, dict]], path: Path, title: str = "accuracy by checkpoint") -> Path:
    """``table[checkpoint][suite] = metrics["overall"]``: grouped bars (one group per checkpoint, in the
    given order), Wilson 95% CI as error bars."""
    checkpoints = list(table)
    suites = sorted({s for row in table.values() for s in row})
    width = 0.8 / max(1, len(suites))
    x = np.arange(len(checkpoints))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(checkpoints) + 2), 4.5))
    for k, suite in enumerate(suites):
        acc, err, ns = [], [[], []], []
        for c in checkpoints:
            m = table[c].get(suite)
            a = 100 * m["accuracy"] if m else np.nan
            lo, hi = (100 * v for v in m["ci95"]) if m else (np.nan, np.nan)
            acc.append(a)
            err[0].append(max(0.0, a - lo))  # never negative: matplotlib refuses negative error bars
            err[1].append(max(0.0, hi - a))
            ns.append(f"n={m['n']}" if m and m.get("n") is not None else "")
        bars = ax.bar(x + (k - (len(suites) - 1) / 2) * width, acc, width, yerr=err, capsize=3, label=suite)
        ax.bar_label(bars, labels=ns, label_type="center", fontsize="x-small", rotation=90)  # n on every bar
    ax.set_xticks(x, checkpoints, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%), 95% Wilson CI")
    ax.set_xlabel("checkpoint (pipeline order)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(title="suite", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def curves(series: dict[str, list[tuple[int, float]]], path: Path, title: str, ylabel: str) -> Path:
    """One line per named series of (step, value)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in series.items():
        steps, values = zip(*points) if points else ((), ())
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def heatmap(matrix: dict, path: Path) -> Path:
    """The generalisation matrix: rows = models (trained on one subset), columns = evaluated subsets."""
    acc = np.array([[np.nan if v is None else 100 * v for v in row] for row in matrix["accuracy"]], dtype=float)
    rows, cols = matrix["rows"], matrix["subsets"]
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 3, 0.8 * len(rows) + 2.2))
    im = ax.imshow(acc, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(acc[i, j]):
                ax.text(j, i, f"{acc[i, j]:.1f}", ha="center", va="center",
                        color="white" if acc[i, j] < 60 else "black", fontsize=9)
            if rows[i] == cols[j]:  # in-domain cell: the model was trained on this subset
                ax.add_patch(plt.Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="red", linewidth=2.5))
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("evaluated on subset")
    ax.set_ylabel("model (trained on)")
    ax.set_title(f"generalisation matrix — {matrix['suite']} accuracy (%)")
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    return _save(fig, path)
