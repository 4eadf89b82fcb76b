"""Shared prefill for rollouts: each group's prompt is prefilled once in transformers' `generate`, not G times.

`generate` prefills every row's prompt, i.e. each group's prompt G times. The shared version prefills one row
per group minus its last token, expands that cache over the group, and hands transformers' `generate` the full
rows plus the cache -- its documented "continue from a cache" path, which feeds only the uncached last prompt
token. Position ids are passed in exactly as Qwen-VL's generate would build them for the unshared batch (text
row from the padding mask, 3-D rope rows from `get_rope_index`), so every decoding step sees the same positions,
masks and keys as before (tested: same greedy tokens and scores, same sampled tokens).

`share_prefill(model)` installs it as an instance-level `generate` (a public method, overridden on the
instance like `stages.rl.vision_share` does for the vision tower); anything it does not cover -- beam search,
several sequences per row, inputs other than Qwen-VL's, active dropout, no repeated prompt -- goes to the
original `generate` unchanged.
"""
from __future__ import annotations

import types

import torch

from stages.rl.prefix_share import (PrefixStats, images_per_row, plan_groups, rope_owner, unshareable_reason,
                                    unwrap_model)

_GENERATE_STATE = "_pathor1_prefix_generate"
_GENERATE_INPUTS = {"pixel_values", "image_grid_thw", "mm_token_type_ids"}


def share_prefill(model: torch.nn.Module) -> bool:
    """Install the shared prefill as an instance-level `generate` on the transformers model under `model`.

    Returns False for models it does not cover (not a Qwen-VL model with `get_rope_index`) and under a transformers
    release outside the range stages/adapters.py gives."""
    from stages import adapters

    target = unwrap_model(model)
    if rope_owner(target) is None or not hasattr(target, "generate"):
        return False
    if not adapters.check("transformers.PreTrainedModel.generate"):  # another transformers: its own generate
        return False
    if not hasattr(target, _GENERATE_STATE):
        setattr(target, _GENERATE_STATE, PrefixStats())
        target.generate = types.MethodType(_shared_generate, target)
    return True


def unshare_prefill(model: torch.nn.Module) -> None:
    target = unwrap_model(model)
    if hasattr(target, _GENERATE_STATE):
        del target.generate
        delattr(target, _GENERATE_STATE)


def prefill_stats(model: torch.nn.Module) -> PrefixStats | None:
    return getattr(unwrap_model(model), _GENERATE_STATE, None)


def _prefill_unshareable(self, input_ids, attention_mask, kwargs) -> str | None:
    if input_ids is None or attention_mask is None or attention_mask.dim() != 2 or input_ids.size(1) < 2:
        return "needs 2-D input_ids and attention_mask"
    given = {k for k, v in kwargs.items() if isinstance(v, torch.Tensor) or k in ("past_key_values", "inputs_embeds")}
    if given - _GENERATE_INPUTS:
        return f"inputs {sorted(given - _GENERATE_INPUTS)} are not supported"
    config = kwargs.get("generation_config") or self.generation_config
    if (getattr(config, "num_beams", 1) or 1) > 1 or (getattr(config, "num_return_sequences", 1) or 1) > 1 \
            or getattr(config, "prefill_chunk_size", None) or kwargs.get("assistant_model") is not None:
        return "beam search, several sequences per row, chunked prefill or assisted decoding"
    if (kwargs.get("pixel_values") is None) != (kwargs.get("image_grid_thw") is None):
        return "pixel_values without image_grid_thw"
    mm = kwargs.get("mm_token_type_ids")
    if kwargs.get("pixel_values") is not None and (mm is None or bool((mm[:, -1] != 0).any())):
        return "image prompts need mm_token_type_ids and a text token last"
    return unshareable_reason(self, 0, {})


def _images_per_row_from_tokens(mm_token_type_ids, image_grid_thw, merge: int) -> list[int]:
    """How many of the (row-ordered) images each row holds, from its image-token count."""
    tokens_per_image = (image_grid_thw.prod(-1) // merge ** 2).tolist()
    counts, i = [], 0
    for wanted in (mm_token_type_ids == 1).sum(-1).tolist():
        n = 0
        while wanted > 0:
            wanted -= tokens_per_image[i]
            i, n = i + 1, n + 1
        counts.append(n)
    return counts


@torch.no_grad()
def _shared_generate(self, inputs=None, input_ids=None, attention_mask=None, **kwargs):
    original = type(self).generate
    input_ids = inputs if input_ids is None else input_ids
    reason = _prefill_unshareable(self, input_ids, attention_mask, kwargs)
    pixel_values, grid = kwargs.get("pixel_values"), kwargs.get("image_grid_thw")
    mm = kwargs.get("mm_token_type_ids")
    groups = None
    if reason is None:
        num_images = None
        if grid is not None:
            merge = self.config.vision_config.spatial_merge_size
            num_images = _images_per_row_from_tokens(mm, grid, merge)
        groups = plan_groups(input_ids, attention_mask, pixel_values, grid, num_images)
    if groups is None or len(groups) == input_ids.size(0):
        return original(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    owner_model = rope_owner(self)
    text = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    if grid is not None:
        rope, deltas = owner_model.get_rope_index(input_ids, mm_token_type_ids=mm, image_grid_thw=grid,
                                                  attention_mask=attention_mask)
    else:
        rope, deltas = text.unsqueeze(0).expand(3, -1, -1), text.new_zeros((input_ids.size(0), 1))
    positions = torch.cat([text.unsqueeze(0), rope.to(text.dtype)], dim=0)  # (4, N, P): what generate builds
    reps = torch.tensor([g[0] for g in groups], device=input_ids.device)
    owner = torch.empty(input_ids.size(0), dtype=torch.long, device=input_ids.device)
    for k, g in enumerate(groups):
        owner[g] = k
    prefill = {"input_ids": input_ids[reps, :-1], "attention_mask": attention_mask[reps, :-1],
               "position_ids": positions[:, reps, :-1]}
    if pixel_values is not None:
        images = images_per_row(pixel_values, grid, num_images, input_ids.size(0))
        prefill["pixel_values"] = torch.cat([images[g[0]][0] for g in groups])
        prefill["image_grid_thw"] = torch.cat([images[g[0]][1] for g in groups])
        prefill["mm_token_type_ids"] = mm[reps, :-1]
    cache = self(**prefill, use_cache=True, logits_to_keep=1).past_key_values
    cache.batch_select_indices(owner)
    owner_model.rope_deltas = deltas  # as the unshared generate leaves it
    stats = getattr(self, _GENERATE_STATE)
    stats.shared_forwards += 1
    stats.tokens_unshared += input_ids.numel()
    stats.tokens_run += len(groups) * (input_ids.size(1) - 1) + input_ids.size(0)
    rest = {k: v for k, v in kwargs.items() if k not in ("pixel_values", "image_grid_thw")}
    return original(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                    past_key_values=cache, **rest)
