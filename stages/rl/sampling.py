"""Dynamic sampling (DAPO): keep only groups whose rewards differ, generate more until the batch is full.

TRL 1.16 has no such option, so it is written here in two parts:

* `collect_informative` -- the refill loop as a pure function over a `generate()` callable, so its
  contract (keeps exactly the informative groups, refills, stops at `max_gen_batches`, never loops
  forever) is unit-tested without a model;
* `merge_rows` -- concatenates row subsets of several TRL generation outputs (the dicts returned by
  `GRPOTrainer._generate_and_score_completions`) into one, re-padding prompt (left) and completion
  (right) tensors to a common width and keeping per-image tensors aligned.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from stages.rl.algos import informative_groups

# Which side TRL pads each per-row 2-D tensor on, and with what (prompt_ids/completion_ids use pad_token_id).
_LEFT_PADDED = {"prompt_ids", "prompt_mask"}
_PROMPT_THEN_COMPLETION = {"token_type_ids", "mm_token_type_ids"}  # (B, P + C): prompt part left-padded
_PAD_ONE = {"tool_mask"}


@dataclass
class SamplingStats:
    """What one training batch cost: logged per step as dynamic_sampling/*."""

    gen_batches: int = 0
    groups_generated: int = 0
    groups_kept: int = 0
    groups_dropped: int = 0
    target_groups: int = 0
    zero_std_groups: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def zero_std_fraction(self) -> float:
        return self.zero_std_groups / self.groups_generated if self.groups_generated else 0.0

    def as_metrics(self) -> dict[str, float]:
        return {
            "dynamic_sampling/gen_batches": float(self.gen_batches),
            "dynamic_sampling/groups_generated": float(self.groups_generated),
            "dynamic_sampling/groups_kept": float(self.groups_kept),
            "dynamic_sampling/groups_dropped": float(self.groups_dropped),
            "dynamic_sampling/zero_std_fraction": self.zero_std_fraction,
        }


def collect_informative(
    generate: Callable[[], tuple[Any, torch.Tensor]],
    num_generations: int,
    target_groups: int,
    max_gen_batches: int,
) -> tuple[list[tuple[Any, list[int]]], SamplingStats]:
    """Call `generate()` until `target_groups` informative groups are collected or `max_gen_batches` calls.

    `generate()` returns `(batch, rewards)` with `rewards` a flat `(N,)` tensor of consecutive groups of
    `num_generations`. Returns `[(batch, kept_group_indices), ...]` (batches with nothing kept omitted;
    the surplus of the last batch is trimmed so exactly `target_groups` are kept when reachable) and the
    stats. When the limit is hit first it returns what it has and records a warning -- possibly nothing.
    """
    if target_groups < 1 or max_gen_batches < 1:
        raise ValueError(f"target_groups ({target_groups}) and max_gen_batches ({max_gen_batches}) must be >= 1")
    stats = SamplingStats(target_groups=target_groups)
    kept: list[tuple[Any, list[int]]] = []
    while stats.groups_kept < target_groups and stats.gen_batches < max_gen_batches:
        batch, rewards = generate()
        mask = informative_groups(rewards, num_generations)
        stats.gen_batches += 1
        stats.groups_generated += mask.numel()
        stats.zero_std_groups += int((~mask).sum())
        wanted = target_groups - stats.groups_kept
        indices = torch.nonzero(mask).flatten().tolist()[:wanted]
        stats.groups_kept += len(indices)
        if indices:
            kept.append((batch, indices))
    stats.groups_dropped = stats.groups_generated - stats.groups_kept
    if stats.groups_kept < target_groups:
        stats.warnings.append(
            f"dynamic sampling: only {stats.groups_kept}/{target_groups} informative groups after "
            f"{stats.gen_batches} generation batches (max_num_gen_batches={max_gen_batches}); "
            + ("training on what there is" if stats.groups_kept else "skipping this update")
        )
    return kept, stats


def _pad_cat(tensors: list[torch.Tensor], value: float, left: bool) -> torch.Tensor:
    width = max(t.size(1) for t in tensors)
    padded = []
    for t in tensors:
        fill = t.new_full((t.size(0), width - t.size(1)), value)
        padded.append(torch.cat([fill, t] if left else [t, fill], dim=1))
    return torch.cat(padded, dim=0)


def _is_per_image(key: str) -> bool:
    return key in {"pixel_values", "image_grid_thw", "image_sizes", "pixel_attention_mask", "spatial_shapes",
                   "image_position_ids"}


def _select_images(batch: dict, rows: list[int]) -> dict:
    """Per-image tensors of the selected samples (TRL stores them flat, `num_images[i]` images per sample)."""
    num_images = batch["num_images"]
    starts = [0]
    for n in num_images:
        starts.append(starts[-1] + n)
    image_idx = [j for r in rows for j in range(starts[r], starts[r + 1])]
    out = {"num_images": [num_images[r] for r in rows]}
    grid = batch.get("image_grid_thw")
    if grid is not None:  # Qwen-VL: pixel_values has prod(grid) rows per image
        lengths = grid.prod(-1).tolist()
        row_starts = [0]
        for n in lengths:
            row_starts.append(row_starts[-1] + n)
        pixel_rows = [k for j in image_idx for k in range(row_starts[j], row_starts[j + 1])]
        index = torch.tensor(pixel_rows, dtype=torch.long, device=batch["pixel_values"].device)
        out["pixel_values"] = batch["pixel_values"].index_select(0, index)
        out["image_grid_thw"] = grid[image_idx]
    for key in ("image_sizes", "pixel_attention_mask", "spatial_shapes", "image_position_ids"):
        if batch.get(key) is not None:
            raise NotImplementedError(f"dynamic sampling does not handle {key!r} yet (only Qwen-VL style inputs)")
    if grid is None and batch.get("pixel_values") is not None:
        out["pixel_values"] = batch["pixel_values"][image_idx]
    return out


def merge_rows(parts: list[tuple[dict, list[int]]], pad_token_id: int) -> dict:
    """Concatenate the selected rows of several TRL generation outputs into one output dict."""
    if not parts:
        raise ValueError("merge_rows needs at least one (batch, rows) part")
    first = parts[0][0]
    merged: dict[str, Any] = {}
    for key, value in first.items():
        if _is_per_image(key) or key == "num_images" or key == "num_items_in_batch":
            continue
        values = [batch[key] for batch, _ in parts]
        if value is None:
            merged[key] = None
        elif isinstance(value, list):
            merged[key] = [v[r] for v, (_, rows) in zip(values, parts) for r in rows]
        elif value.dim() == 1:
            merged[key] = torch.cat([v[rows] for v, (_, rows) in zip(values, parts)])
        elif key in _PROMPT_THEN_COMPLETION:
            widths = [b["prompt_ids"].size(1) for b, _ in parts]
            prompt = _pad_cat([v[rows, :w] for v, w, (_, rows) in zip(values, widths, parts)], 0, left=True)
            completion = _pad_cat([v[rows, w:] for v, w, (_, rows) in zip(values, widths, parts)], 0, left=False)
            merged[key] = torch.cat([prompt, completion], dim=1)
        else:
            pad = pad_token_id if key in ("prompt_ids", "completion_ids") else (1 if key in _PAD_ONE else 0)
            merged[key] = _pad_cat([v[rows] for v, (_, rows) in zip(values, parts)], pad, left=key in _LEFT_PADDED)
    if "num_images" in first:
        images = [_select_images(batch, rows) for batch, rows in parts]
        merged["num_images"] = [n for part in images for n in part["num_images"]]
        for key in ("pixel_values", "image_grid_thw"):
            if key in images[0]:
                merged[key] = torch.cat([part[key] for part in images], dim=0)
    if "num_items_in_batch" in first:  # TRL's token count for the dapo normaliser, recomputed for the kept rows
        mask = merged["completion_mask"]
        if merged.get("tool_mask") is not None:
            mask = mask * merged["tool_mask"]
        merged["num_items_in_batch"] = mask.sum()
    return merged
