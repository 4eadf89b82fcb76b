"""Browse a run in a web browser: ``python -m evaluation.browse REF [--compare REF2 ...] --out DIR``.

Writes a static, offline folder (``DIR/index.html`` opens from ``file://``; no server, no CDN, no library) showing
every evaluated question of REF's lineage (base -> pretrain -> SFT -> RL ...) with each stage's reasoning and
answer side by side, fixed / broken questions highlighted, filters and search, and a summary: lineage with settings,
per-stage accuracy (n, Wilson 95% CI), paired comparisons (difference, 95% CI, McNemar p, fixed / broken), smoothed
reward curves with the reward weights, per-class confusion tables for MCQ suites.

Markup contract (tests and scripts rely on it): each question is one element with ``data-question-id="<id>"``
(and ``data-suite``); each stage's answer inside it carries ``data-stage="<stage>"``. The page honours its URL
hash: ``#suite=S&subset=X&kind=mcq&q=text&c.rl=wrong&d.rl=fixed&page=2&per=50`` (``c.<stage>`` correct | wrong,
``d.<stage>`` fixed | broken against the stage before it).
"""
from evaluation.browse.data import gather
from evaluation.browse.render import write_browser

__all__ = ["browse", "gather", "write_browser"]


def browse(ref: str, compare: list[str] = (), *, out=None, home=None, **options):
    """Gather ``ref``'s lineage (and the ``compare`` heads) and write the folder; returns ``out/index.html``."""
    from pathlib import Path

    from stages import registry

    home = Path(home) if home else registry.home()
    inline_max = options.pop("inline_max", None)
    data = gather(ref, list(compare), home=home, **options)
    if out is None:
        from evaluation.report import slug

        out = registry.reports_dir(f"browse-{slug(ref)}", root=home)
    kwargs = {} if inline_max is None else {"inline_max": inline_max}
    return write_browser(data, out, **kwargs)
