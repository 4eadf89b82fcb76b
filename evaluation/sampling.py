"""Metrics over k sampled answers per question: pass@k (unbiased estimator) and majority@k (self-consistency).

pass@k is the chance that at least one of k answers drawn without replacement from the n generated is right:
``1 - C(n-c, k) / C(n, k)`` for c right answers among n (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code"), computed as a product so large n do not overflow. Written by hand: none of our libraries
has it for VQA answers. majority@k grades the answer given most often (ties: the one given first); answers are
compared in canonical form (option letter, yes/no, normalised text), so "B" and "B) Lymphoma" are one vote.
"""
from __future__ import annotations

from collections import Counter


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one question with ``c`` right answers among ``n`` samples (``k <= n``)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
        miss *= 1.0 - k / i
    return 1.0 - miss


def canonical_answer(extracted: str | None, kind: str, options=()) -> str | None:
    """The answer in the form votes are counted in; None when there is no answer to count."""
    from corpora.grading import match_option, normalize_text, yes_no

    if extracted is None:
        return None
    if kind == "mcq":
        return match_option(extracted, options)
    if kind == "yesno":
        return yes_no(extracted)
    return normalize_text(extracted) or None


def majority_index(extracted: list[str | None], kind: str, options=()) -> int | None:
    """Index of the first sample carrying the most frequent answer; None when no sample answered."""
    keys = [canonical_answer(e, kind, options) for e in extracted]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(i for i, k in enumerate(keys) if k is not None and counts[k] == top)


def ks_for(n: int) -> list[int]:
    """The k reported for n samples: 1, powers of two below n, and n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def sampling_summary(rows: list[dict]) -> dict:
    """``{"n_samples", "pass@1", …, "pass@n", "majority@n"}`` averaged over the rows that carry samples."""
    rows = [r for r in rows if r.get("samples")]
    if not rows:
        return {}
    n = len(rows[0]["samples"])
    out: dict = {"n_samples": n}
    for k in ks_for(n):
        out[f"pass@{k}"] = sum(pass_at_k(n, sum(s["correct"] for s in r["samples"]), k) for r in rows) / len(rows)
    out[f"majority@{n}"] = sum(bool(r["majority_correct"]) for r in rows) / len(rows)
    return out
