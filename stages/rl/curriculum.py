"""Curriculum RL: the training questions in ordered phases, or in the order of a key, in TRL's sampler layout.

MedCCO found a closed -> open curriculum worth +11.4 % in-domain; MedVLThinker orders by difficulty. TRL 1.16
shuffles the whole dataset (`RepeatSampler`) and has no phases, so `PathoGRPOTrainer` swaps its sampler for
`CurriculumSampler`, which yields exactly RepeatSampler's layout -- chunks of `batch_size` prompts (one generation
batch over all ranks), each prompt repeated G times, each chunk repeated `num_iterations x steps_per_generation`
times -- but draws chunk k from the phase that the optimizer step at which chunk k is generated belongs to.

Resume-exact: the sampler's output depends only on its arguments (no generator state carried between epochs), and
it is long enough for every planned step, so the Trainer's skip-the-consumed-batches resume lands on the same
prompts, across a phase boundary too. Dynamic sampling refills from the current phase's pool (`pool_at`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from stages.rollouts import CurriculumPlan, CurriculumSampler  # noqa: F401 (shared with stages.opd)

ORDERS = ("shuffle", "pass_rate", "closed_first")


@dataclass
class CurriculumPhase:
    data: str = field(default="", metadata={"help": "QA file (or folder holding rl.jsonl) of this phase."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps trained on this phase's questions."})

    def __post_init__(self):
        if not self.data or self.max_steps < 1:
            raise ValueError(f"a curriculum phase needs data and max_steps >= 1, got data={self.data!r} "
                             f"max_steps={self.max_steps}")


def order_keys(order: str, rows: list[dict]) -> list:
    """Sort key of each row for `order` (smaller first): pass_rate -> highest pass rate first (easy to hard);
    closed_first -> mcq / yes-no before open. Ties keep a seeded shuffle (see `CurriculumPlan.build`)."""
    if order == "pass_rate":
        return [-float(r["pass_rate"]) for r in rows]
    if order == "closed_first":
        return [int(r["kind"] == "open") for r in rows]
    raise ValueError(f"curriculum_order must be one of {'|'.join(ORDERS)}, got {order!r}")


def plan(cfg, paths: list, qa_sets: list) -> CurriculumPlan:
    """The plan of a resolved RLConfig over its loaded phase datasets (laid one after another). Without phases or an
    order it is one shuffled phase -- still used instead of TRL's RepeatSampler, whose per-epoch reshuffle a resumed
    run does not replay (a resume past the first epoch trained on other prompts than the uninterrupted run)."""
    steps = [p.max_steps for p in cfg.curriculum] or [cfg.max_steps]
    keys = None
    if cfg.curriculum_order == "pass_rate":
        keys = [-r for path, qa in zip(paths, qa_sets) for r in read_pass_rates(path, list(qa["id"]))]
    elif cfg.curriculum_order == "closed_first":
        keys = [k for qa in qa_sets for k in order_keys("closed_first", [{"kind": k} for k in qa["kind"]])]
    return CurriculumPlan.build([len(qa) for qa in qa_sets], steps, keys, cfg.seed)


def read_pass_rates(path, ids: list[str]) -> list[float]:
    """`pass_rate` of each id, read from the QA JSONL `path` as written (`corpora.readers` keeps only the schema's
    columns); a question without one fails as path:line before any model loads."""
    import json
    from pathlib import Path

    rates, where = {}, {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            raw = json.loads(line)
            key = str(raw.get("id", raw.get("uuid", "")))
            rates[key], where[key] = raw.get("pass_rate"), n
    out = []
    for i in ids:
        rate = rates.get(i)
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
            at = f"{path}:{where[i]}" if i in where else f"{path}: record {i!r}"
            raise ValueError(f"{at}: expected a pass_rate in [0, 1] (curriculum_order=pass_rate), found {rate!r}; "
                             f"fix: write it with python -m recipes.filter, or use another curriculum_order")
        out.append(float(rate))
    return out
