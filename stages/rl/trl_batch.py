"""The one place that knows the layout of TRL's private generation batch (dynamic sampling needs it).

`GRPOTrainer._generate_and_score_completions` returns a dict whose keys, padding sides and per-image tensors
are TRL internals, not API. Dynamic sampling selects rows of several such dicts, merges them, and makes some
rows inert; everything that depends on the dict's layout lives here, behind `check_trl_version`, so a TRL
upgrade breaks in one small file with a clear message instead of silently training on misaligned rows.
"""
from __future__ import annotations

from typing import Any

import torch

# The TRL releases whose batch layout this file was written against (checked when dynamic sampling is on).
TESTED_TRL = ("1.16",)

# Which side TRL pads each per-row 2-D tensor on, and with what (prompt_ids/completion_ids use pad_token_id).
_LEFT_PADDED = {"prompt_ids", "prompt_mask"}
_PROMPT_THEN_COMPLETION = {"token_type_ids", "mm_token_type_ids"}  # (B, P + C): prompt part left-padded
_PAD_ONE = {"tool_mask"}
_PER_IMAGE = {"pixel_values", "image_grid_thw", "image_sizes", "pixel_attention_mask", "spatial_shapes",
              "image_position_ids"}


def check_trl_version(version: str | None = None) -> None:
    """Fail fast when the installed TRL is not one whose generation batch layout this module knows."""
    from stages.compat import version_in_range

    if version is None:
        import trl

        version = trl.__version__
    if not version_in_range("trl", (TESTED_TRL[0], TESTED_TRL[-1]), version):
        raise RuntimeError(
            f"dynamic sampling reads TRL's private generation batch, written for trl {'/'.join(TESTED_TRL)}; "
            f"installed trl {version}. Check GRPOTrainer._generate_and_score_completions' output keys against "
            f"stages/rl/trl_batch.py and add the version to TESTED_TRL, or set dynamic_sampling=false."
        )


def loss_token_count(batch: dict) -> torch.Tensor:
    """This rank's tokens in the loss (TRL's `num_items_in_batch` before the cross-rank sum)."""
    mask = batch["completion_mask"]
    if batch.get("tool_mask") is not None:
        mask = mask * batch["tool_mask"]
    return mask.sum()


def empty_batch(device) -> dict:
    """A batch with no rows: `PathoGRPOTrainer.compute_loss` turns it into a step that moves nothing."""
    ids = torch.zeros((0, 1), dtype=torch.long, device=device)
    return {"prompt_ids": ids, "prompt_mask": ids.clone(), "completion_ids": ids.clone(),
            "completion_mask": ids.clone(), "advantages": torch.zeros(0, device=device),
            "num_items_in_batch": torch.tensor(0, device=device)}


def make_inert(batch: dict, rows: list[int]) -> dict:
    """Zero the advantage and the loss mask of `rows`: they still run through the forward (so every rank joins
    the gradient all-reduce with a batch of the planned size) but add nothing to the loss, its gradient, the KL
    term or the token normaliser.

    TRL's loss mask is ``completion_mask * tool_mask`` and its attention mask ``prompt_mask + completion_mask``.
    With tools, a completion holds tool results, views included: zeroing its completion_mask would hide the view's
    image tokens from the attention mask while its image stays in the batch, and Qwen-VL's rope index then pairs
    the next row's tokens with this row's image (a shape error on the slide-navigation recipe). Such rows are
    made inert through tool_mask alone; without tools through completion_mask."""
    if not rows:
        return batch
    index = torch.tensor(rows, dtype=torch.long, device=batch["advantages"].device)
    out = dict(batch)
    out["advantages"] = batch["advantages"].index_fill(0, index, 0.0)
    key = "tool_mask" if batch.get("tool_mask") is not None else "completion_mask"
    out[key] = out[key].index_fill(0, index.to(out[key].device), 0)
    return out


def _pad_cat(tensors: list[torch.Tensor], value: float, left: bool) -> torch.Tensor:
    width = max(t.size(1) for t in tensors)
    padded = []
    for t in tensors:
        fill = t.new_full((t.size(0), width - t.size(1)), value)
        padded.append(torch.cat([fill, t] if left else [t, fill], dim=1))
    return torch.cat(padded, dim=0)


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
    """Concatenate the selected rows of several TRL generation outputs into one output dict.

    Prompt (left) and completion (right) tensors are re-padded to a common width and per-image tensors follow
    their rows. `num_items_in_batch` is left out: it is a cross-rank sum the caller recomputes.
    """
    if not parts:
        raise ValueError("merge_rows needs at least one (batch, rows) part")
    first = parts[0][0]
    merged: dict[str, Any] = {}
    for key, value in first.items():
        if key in _PER_IMAGE or key in ("num_images", "num_items_in_batch"):
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
    return merged
