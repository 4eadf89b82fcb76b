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

import math
from dataclasses import dataclass, field

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


@dataclass
class CurriculumPlan:
    """`pools[p]`: dataset indices of phase p, in consumption order when `ordered`; `phase_steps[p]`: its steps."""

    pools: list[list[int]]
    phase_steps: list[int]
    ordered: bool

    @classmethod
    def build(cls, phase_sizes: list[int], phase_steps: list[int], keys: list | None, seed: int) -> "CurriculumPlan":
        """Phases laid one after another in the dataset; `keys` (one per row, or None = shuffle) orders each phase,
        ties broken by a permutation seeded with `seed` (so equal keys are not read in file order)."""
        pools, start = [], 0
        for p, size in enumerate(phase_sizes):
            if size < 1:
                raise ValueError(f"curriculum phase {p + 1} has no questions")
            pool = list(range(start, start + size))
            if keys is not None:
                import torch

                tie = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1009 + p)).tolist()
                pool = [i for _, _, i in sorted(zip((keys[i] for i in pool), tie, pool))]
            pools.append(pool)
            start += size
        return cls(pools, list(phase_steps), keys is not None)

    def phase_at(self, step: int) -> int:
        """The phase optimizer step `step` (0-based) trains in; the last phase past the end."""
        for p, end in enumerate(_ends(self.phase_steps)):
            if step < end:
                return p
        return len(self.phase_steps) - 1

    def pool_at(self, step: int) -> list[int]:
        return self.pools[self.phase_at(step)]

    def sampler(self, *, batch_size: int, mini_repeat_count: int, repeat_count: int, steps_per_chunk: float,
                seed: int) -> "CurriculumSampler":
        chunks = math.ceil(sum(self.phase_steps) / steps_per_chunk)
        phases = [self.phase_at(math.floor(k * steps_per_chunk)) for k in range(chunks)]
        return CurriculumSampler(self.pools, phases, self.ordered, batch_size, mini_repeat_count, repeat_count, seed)


def _ends(steps: list[int]) -> list[int]:
    out, total = [], 0
    for n in steps:
        total += n
        out.append(total)
    return out


class CurriculumSampler:  # a torch Sampler by protocol (__iter__ / __len__): keeps this module torch-free to import
    """RepeatSampler's layout with chunk k drawn from phase `chunk_phases[k]`: each phase is read as a stream --
    its ordered pool repeated, or a fresh seeded permutation of it per pass -- continued where its last chunk
    stopped."""

    def __init__(self, pools, chunk_phases, ordered, batch_size, mini_repeat_count, repeat_count, seed):
        self.pools, self.chunk_phases, self.ordered = pools, list(chunk_phases), ordered
        self.batch_size, self.mini_repeat_count, self.repeat_count, self.seed = (
            batch_size, mini_repeat_count, repeat_count, seed)

    def _pass(self, phase: int, n: int) -> list[int]:
        import torch

        pool = self.pools[phase]
        if self.ordered:
            return pool
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + phase) * 10_007 + n)
        return [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]

    def chunks(self) -> list[list[int]]:
        """The prompts of each generation batch, in order (deterministic)."""
        cursors = {p: ([], 0) for p in set(self.chunk_phases)}  # phase -> (unread stream, passes started)
        out = []
        for phase in self.chunk_phases:
            stream, passes = cursors[phase]
            while len(stream) < self.batch_size:
                stream, passes = stream + self._pass(phase, passes), passes + 1
            out.append(stream[:self.batch_size])
            cursors[phase] = (stream[self.batch_size:], passes)
        return out

    def __iter__(self):
        for chunk in self.chunks():
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        return len(self.chunk_phases) * self.batch_size * self.mini_repeat_count * self.repeat_count


def plan(cfg, paths: list, qa_sets: list) -> CurriculumPlan | None:
    """The plan of a resolved RLConfig over its loaded phase datasets (laid one after another); None when TRL's own
    shuffled sampler serves (no phases, curriculum_order=shuffle)."""
    if not cfg.curriculum and cfg.curriculum_order == "shuffle":
        return None
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
