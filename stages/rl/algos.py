"""RL tensor math that TRL 1.16 does not have: the dynamic-sampling group filter (DAPO §3.2).

Advantages, clipping and the grpo / dapo / dr_grpo losses are TRL's (`GRPOTrainer._compute_loss` and
`_generate_and_score_completions`); we only configure them (see `stages.rl.config`) and test that
configuration. What is written here is what TRL lacks: deciding which groups of G completions carry a
learning signal at all.
"""
from __future__ import annotations

import torch


def group_view(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """`(N,)` rewards of consecutive groups -> `(N // G, G)`; clear error when N is not a multiple of G."""
    if rewards.dim() != 1 or rewards.numel() % num_generations != 0:
        raise ValueError(
            f"rewards must be a flat tensor whose length is a multiple of num_generations={num_generations}; "
            f"got shape {tuple(rewards.shape)}"
        )
    return rewards.view(-1, num_generations)


def informative_groups(rewards: torch.Tensor, num_generations: int, tol: float = 1e-6) -> torch.Tensor:
    """Boolean mask over groups: True where the group's rewards are not all equal.

    A group whose G rewards are equal has zero advantage for every completion under every variant
    (grpo, dapo, dr_grpo), so it only dilutes the batch. NaN rewards (a completion no reward function
    could score; TRL gives it advantage 0) are ignored; a group with fewer than two finite rewards is
    degenerate.
    """
    grouped = group_view(rewards.detach().float(), num_generations)
    finite = torch.isfinite(grouped)
    high = torch.where(finite, grouped, torch.full_like(grouped, -torch.inf)).amax(dim=1)
    low = torch.where(finite, grouped, torch.full_like(grouped, torch.inf)).amin(dim=1)
    return (finite.sum(dim=1) >= 2) & ((high - low) > tol)


def zero_std_fraction(rewards: torch.Tensor, num_generations: int) -> float:
    """Fraction of groups whose rewards are all equal (TRL logs the per-row version as frac_reward_zero_std)."""
    mask = informative_groups(rewards, num_generations)
    return float((~mask).float().mean()) if mask.numel() else 0.0


def group_rows(group_indices: list[int], num_generations: int) -> list[int]:
    """Row indices of whole groups, in order: groups [0, 2] with G=2 -> rows [0, 1, 4, 5]."""
    return [g * num_generations + j for g in group_indices for j in range(num_generations)]


def subset_scales(subset_ids: torch.Tensor, weights: torch.Tensor, balance: bool) -> torch.Tensor:
    """Per-row advantage multipliers for domain-aware RL (QoQ-Med's domain scaling, which TRL lacks).

    `subset_ids` `(N,)`: each row's subset index into `weights` `(S,)` (fixed per-subset multipliers, 1 = none).
    `balance`: every subset present in the batch gets the same total weight, whatever its number of rows
    (factor N / (k * n_s) for k subsets present, n_s rows of subset s; the factors average 1 over the rows), so a
    rare modality is not drowned by a common one. The result is `balance factor x weight` per row.
    """
    ids = subset_ids.long()
    scale = weights.to(torch.float32)[ids]
    if balance and ids.numel():
        counts = torch.bincount(ids, minlength=weights.numel()).to(torch.float32)
        present = int((counts > 0).sum())
        scale = scale * ids.numel() / (present * counts[ids])
    return scale


class SubsetScaling:
    """`subset_scales` over subset names: `names` is every subset of the training data (the same order on every rank)."""

    def __init__(self, names: list[str], weights: dict[str, float], balance: bool):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"subset_weights names subsets {unknown} that the data does not have; expected some of "
                             f"{sorted(names)}; fix the names (the records' `subset` field)")
        self.index = {name: i for i, name in enumerate(names)}
        self.weights = torch.tensor([float(weights.get(name, 1.0)) for name in names])
        self.balance = balance

    def ids(self, subsets: list[str]) -> torch.Tensor:
        return torch.tensor([self.index[s] for s in subsets], dtype=torch.long)

    def scales(self, subset_ids: torch.Tensor) -> torch.Tensor:
        return subset_scales(subset_ids, self.weights, self.balance)
