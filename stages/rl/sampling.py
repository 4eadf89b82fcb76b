"""Dynamic sampling (DAPO §3.2) on one rank or many: keep only groups whose rewards differ, refill until full.

TRL 1.16 has no such option. The refill loop is written here as pure functions over a `generate()` callable
and an `all_gather` of one integer, so its contract is unit-tested without a model or a process group
(tests/stages/test_rl_sampling.py runs two "ranks" in threads with a fake all-gather).

Why this differs from verl's DAPO recipe and EasyR1's online filtering: both filter in a single driver process
(Ray controller) that sees every rollout, drops the zero-variance groups, concatenates refills until the batch
is full (verl raises once `max_num_gen_batches` is exceeded) and only then splits the rows across data-parallel
workers, balancing tokens. TRL has no driver: each rank is an equal process that generates and trains on its
own rows, and every collective (reward gather, gradient all-reduce) must be entered by all ranks the same
number of times. So here

* every rank sees the same globally gathered rewards (TRL gathers them to normalise advantages) and computes
  the same informative-group mask from them, then keeps the rows of that mask that are its own;
* the stop decision is collective: after each round an all-gather of the per-rank kept counts says whether
  every rank has its quota, so all ranks run the same number of generation rounds (a rank that is already
  full keeps generating -- and discarding -- until the slowest is, or the cap is hit);
* a rank still short at the cap is padded to its quota with rows of its non-informative groups made inert
  (zero advantage, zero loss mask), so no rank enters the gradient all-reduce with an empty batch; when no rank
  kept anything the step is skipped on every rank together;
* refill prompts come from one permutation shared by all ranks (a seed keyed by step, generation and round),
  sliced per rank exactly as TRL's RepeatSampler slices its batches: ranks draw different prompts, groups that
  straddle two ranks still share their prompt, and a resumed run draws the same refills as an uninterrupted one
  with no sampler state to save.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from stages.rl.algos import informative_groups


@dataclass
class SamplingStats:
    """What one training batch cost on this rank: logged per step as dynamic_sampling/*."""

    num_generations: int = 1
    quota_rows: int = 0
    gen_batches: int = 0  # generation rounds (equal on every rank)
    groups_generated: int = 0  # over all ranks
    zero_std_groups: int = 0  # over all ranks
    rows_kept: int = 0  # this rank's informative rows
    rows_padded: int = 0  # this rank's inert padding rows
    skipped: bool = False  # no rank kept anything: nobody trains this step
    warnings: list[str] = field(default_factory=list)

    @property
    def zero_std_fraction(self) -> float:
        return self.zero_std_groups / self.groups_generated if self.groups_generated else 0.0

    def as_metrics(self) -> dict[str, float]:
        G = self.num_generations
        return {
            "dynamic_sampling/gen_batches": float(self.gen_batches),
            "dynamic_sampling/groups_generated": float(self.groups_generated),
            "dynamic_sampling/groups_kept": self.rows_kept / G,
            "dynamic_sampling/groups_padded": self.rows_padded / G,
            "dynamic_sampling/zero_std_fraction": self.zero_std_fraction,
            "dynamic_sampling/skipped": float(self.skipped),
        }


@dataclass
class Collected:
    """Rows to train on: `kept` (informative) then `padding` (to be made inert), each `[(batch, rows), ...]`;
    `kept_rounds` / `padding_rounds` say which generation round each part came from."""

    kept: list[tuple[Any, list[int]]]
    padding: list[tuple[Any, list[int]]]
    stats: SamplingStats
    kept_rounds: list[int] = field(default_factory=list)
    padding_rounds: list[int] = field(default_factory=list)

    def summary(self) -> "Collected":
        """The same record without the batches (kept per step for logging and tests, holds no tensors)."""
        return Collected([(None, rows) for _, rows in self.kept], [(None, rows) for _, rows in self.padding],
                         self.stats, list(self.kept_rounds), list(self.padding_rounds))

    @property
    def parts(self) -> list[tuple[Any, list[int]]]:
        return self.kept + self.padding

    @property
    def padding_rows(self) -> list[int]:
        """Positions of the padding rows in the batch merged from `parts` (they come last)."""
        return list(range(self.stats.rows_kept, self.stats.rows_kept + self.stats.rows_padded))


def local_row_mask(group_mask: torch.Tensor, num_generations: int, rank: int, local_rows: int) -> torch.Tensor:
    """This rank's rows of the global group mask: TRL lays rank r's rows at [r * local_rows, (r+1) * local_rows)
    of the gathered batch, groups of G consecutive rows (a group may straddle two ranks)."""
    rows = group_mask.repeat_interleave(num_generations)
    if local_rows < 1 or rows.numel() % local_rows or not 0 <= rank < rows.numel() // local_rows:
        raise ValueError(f"{rows.numel()} gathered rows do not split into ranks of {local_rows} rows "
                         f"(rank {rank})")
    return rows[rank * local_rows:(rank + 1) * local_rows]


def collect_informative(
    generate: Callable[[int], tuple[Any, torch.Tensor]],
    num_generations: int,
    quota_rows: int,
    max_gen_batches: int,
    *,
    rank: int = 0,
    all_gather: Callable[[int], list[int]] | None = None,
) -> Collected:
    """Generate rounds until every rank holds `quota_rows` informative rows, or `max_gen_batches` rounds.

    `generate(round)` returns `(batch, rewards)`: this rank's batch of `quota_rows` rows and the rewards of every
    rank's rows, gathered (`(world * quota_rows,)`, consecutive groups of `num_generations`). `all_gather(n)`
    returns every rank's `n` (identity on one process); it is called exactly once per round on every rank, which
    is what keeps the ranks in step. Surplus informative rows of the last round are left out; a shortfall is
    filled with rows of non-informative groups, to be made inert by the caller; when no rank kept a row,
    `stats.skipped` is set and nothing is returned.
    """
    if quota_rows < 1 or max_gen_batches < 1:
        raise ValueError(f"quota_rows ({quota_rows}) and max_gen_batches ({max_gen_batches}) must be >= 1")
    all_gather = all_gather or (lambda n: [n])
    stats = SamplingStats(num_generations=num_generations, quota_rows=quota_rows)
    kept: list[tuple[Any, list[int]]] = []
    spare: list[tuple[Any, list[int]]] = []  # rows of non-informative groups, candidates for padding
    kept_rounds: list[int] = []
    spare_rounds: list[int] = []
    while True:
        batch, rewards = generate(stats.gen_batches)
        stats.gen_batches += 1
        group_mask = informative_groups(rewards, num_generations)
        stats.groups_generated += group_mask.numel()
        stats.zero_std_groups += int((~group_mask).sum())
        rows = local_row_mask(group_mask, num_generations, rank, quota_rows)
        take = torch.nonzero(rows).flatten().tolist()[:quota_rows - stats.rows_kept]
        if take:
            kept.append((batch, take))
            kept_rounds.append(stats.gen_batches - 1)
            stats.rows_kept += len(take)
        dull = torch.nonzero(~rows).flatten().tolist()
        if dull:
            spare.append((batch, dull))
            spare_rounds.append(stats.gen_batches - 1)
        counts = all_gather(stats.rows_kept)
        if min(counts) >= quota_rows or stats.gen_batches >= max_gen_batches:
            break
    if sum(counts) == 0:
        stats.skipped = True
        stats.warnings.append(
            f"dynamic sampling: no informative group on any rank after {stats.gen_batches} generation batches "
            f"(max_num_gen_batches={max_gen_batches}); every rank skips this update")
        return Collected([], [], stats)
    padding, padding_rounds = [], []
    for (batch, dull), round_index in zip(spare, spare_rounds):
        need = quota_rows - stats.rows_kept - stats.rows_padded
        if need <= 0:
            break
        padding.append((batch, dull[:need]))
        padding_rounds.append(round_index)
        stats.rows_padded += len(dull[:need])
    if min(counts) < quota_rows:
        stats.warnings.append(
            f"dynamic sampling: only {sum(counts)}/{quota_rows * len(counts)} informative rows over "
            f"{len(counts)} rank(s) after {stats.gen_batches} generation batches "
            f"(max_num_gen_batches={max_gen_batches}); this rank pads {stats.rows_padded} inert rows")
    return Collected(kept, padding, stats, kept_rounds, padding_rounds)


def _mix(*numbers: int) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, numbers)).encode()).digest()[:8], "little")


def refill_prompt_indices(dataset_len: int, local_rows: int, num_generations: int, rank: int, world: int,
                          seed: int, key: tuple[int, ...]) -> list[int]:
    """Dataset indices of this rank's refill rows (each prompt repeated G times, TRL's RepeatSampler layout).

    All ranks draw the same `world * local_rows / G` prompts from a permutation seeded by `(seed, *key)` and
    take their own slice of the repeated rows, as TRL's sampler does: no two ranks get the same prompt unless a
    group straddles them, and the draw depends on nothing but its key (so resuming needs no sampler state).
    """
    global_rows = world * local_rows
    if global_rows % num_generations:
        raise ValueError(f"{world} rank(s) x {local_rows} rows is not a whole number of groups of "
                         f"{num_generations}")
    if dataset_len < 1:
        raise ValueError("cannot refill from an empty dataset")
    n_prompts = global_rows // num_generations
    generator = torch.Generator().manual_seed(_mix(seed, *key) % (2 ** 63))
    order: list[int] = []
    while len(order) < n_prompts:
        order += torch.randperm(dataset_len, generator=generator).tolist()
    rows = [p for p in order[:n_prompts] for _ in range(num_generations)]
    return rows[rank * local_rows:(rank + 1) * local_rows]
