"""Group-shared vision encoding: encode each distinct image once per forward, not once per completion.

Why: GRPO scores G completions of the same prompt, so TRL's policy / reference / old-log-prob forwards
(and generation's prefill) hand the vision tower every prompt image G times. The vision tower of a
Qwen-VL model treats images independently (block-diagonal attention via `cu_seqlens`), so encoding the
distinct images once and index-expanding the result is exact; `index_select` sums the G copies'
gradients back into the one encoding, so a trainable vision tower gets the same gradient as before.

How: `share_vision_encoding(model)` overrides the vision tower's `forward` on the instance (a bound
method, so `copy.deepcopy` of the model rebinds it correctly and `save_pretrained` is unaffected).
Duplicates are found by content (a random-projection fingerprint per image, confirmed by `torch.equal`),
not by assuming TRL's row order -- TRL shuffles rows before the training forward.

When no parameter of the vision tower requires grad (frozen tower and projector), encodings are also kept
in a small content-addressed cache, so the same images are encoded once per step across generation, the
reference forward, the policy forward and all `num_iterations` -- not once per forward.
"""
from __future__ import annotations

import logging
import types
from collections import OrderedDict

import torch

from stages import adapters

logger = logging.getLogger(__name__)

_ATTR = "_pathor1_shared"
CACHE_IMAGES = 512


def vision_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    """The Qwen-VL vision tower (`model.model.visual` in transformers 5), or None for other models."""
    for owner in (getattr(model, "model", None), model, getattr(getattr(model, "base_model", None), "model", None)):
        visual = getattr(owner, "visual", None) if owner is not None else None
        if isinstance(visual, torch.nn.Module):
            return visual
    if hasattr(model, "get_base_model"):  # peft wrapper
        return vision_tower(model.get_base_model())
    return None


def _fingerprints(pixel_values: torch.Tensor, lengths: list[int]) -> list[tuple]:
    """Per image: two random projections summed over its rows -- equal images give equal fingerprints."""
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(pixel_values.size(1), 2, generator=gen).to(pixel_values.device)
    with torch.autocast(pixel_values.device.type, enabled=False):  # fp32 fingerprints under bf16 autocast too
        projected = pixel_values.detach().float() @ probe  # (rows, 2)
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=pixel_values.device),
                                    torch.tensor(lengths, device=pixel_values.device))
    sums = torch.zeros(len(lengths), 2, device=pixel_values.device).index_add_(0, owner, projected)
    # Coarse keys: float sums can differ in the last bits between kernels; torch.equal decides anyway.
    return [tuple(float(f"{x:.5g}") for x in row) for row in sums.tolist()]


def plan_unique(pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[list[int], list[int]]:
    """`(representatives, owner)`: indices of the distinct images, and for every image its representative's slot."""
    lengths = grid_thw.prod(-1).tolist()
    chunks = pixel_values.split(lengths)
    grids = [tuple(g) for g in grid_thw.tolist()]
    buckets: dict[tuple, list[int]] = {}
    representatives: list[int] = []
    owner: list[int] = []
    for i, key in enumerate(_fingerprints(pixel_values, lengths)):
        slots = buckets.setdefault((grids[i], key), [])
        for slot in slots:
            if torch.equal(chunks[representatives[slot]], chunks[i]):
                owner.append(slot)
                break
        else:
            slots.append(len(representatives))
            owner.append(len(representatives))
            representatives.append(i)
    return representatives, owner


def _block_index(sizes: list[int], owner: list[int], device) -> torch.Tensor:
    """Row index that lays out block `owner[i]` (of the given sizes) for every image i."""
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + n)
    return torch.cat([torch.arange(starts[s], starts[s + 1], device=device) for s in owner])


def _expand(value, patch_index, token_index, n_patches: int, n_tokens: int):
    """Index-expand every per-patch or per-token tensor of the vision output (recursing into lists)."""
    if isinstance(value, torch.Tensor) and value.dim() >= 1:
        if value.size(0) == n_tokens:
            return value.index_select(0, token_index)
        if value.size(0) == n_patches:
            return value.index_select(0, patch_index)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_expand(v, patch_index, token_index, n_patches, n_tokens) for v in value)
    return value


def _frozen(module: torch.nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def _shared_forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs):
    original = type(self).forward
    state = getattr(self, _ATTR)
    # Precomputed per-batch tensors (cu_seqlens, position ids...) would no longer match: do not touch them.
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()) or grid_thw is None:
        return original(self, hidden_states, grid_thw, **kwargs)
    reps, owner = plan_unique(hidden_states, grid_thw)
    state["images_seen"] += len(owner)
    use_cache = _frozen(self)
    if not use_cache:
        state["cache"].clear()
    if len(reps) == len(owner) and not use_cache:
        state["images_encoded"] += len(owner)
        return original(self, hidden_states, grid_thw, **kwargs)

    lengths = grid_thw.prod(-1).tolist()
    merge = self.spatial_merge_size ** 2
    chunks = hidden_states.split(lengths)
    to_encode = reps
    if use_cache:  # frozen tower: reuse encodings across forwards, keyed by exact content
        to_encode = [i for i in reps if _cache_get(state, chunks[i], grid_thw[i]) is None]
    if to_encode:
        index = torch.tensor(to_encode, device=grid_thw.device)
        out = original(self, torch.cat([chunks[i] for i in to_encode]), grid_thw.index_select(0, index), **kwargs)
        state["images_encoded"] += len(to_encode)
        if not use_cache:
            rep_lengths = [lengths[i] for i in reps]
            patch_index = _block_index(rep_lengths, owner, hidden_states.device)
            token_index = _block_index([n // merge for n in rep_lengths], owner, hidden_states.device)
            for key in list(out.keys()):
                out[key] = _expand(out[key], patch_index, token_index, sum(rep_lengths), sum(rep_lengths) // merge)
            return out
        _cache_put_all(state, out, [chunks[i] for i in to_encode], grid_thw[to_encode], lengths, to_encode, merge)
    return _from_cache(state, chunks, grid_thw, hidden_states.device)


def _cache_key(chunk: torch.Tensor, grid: torch.Tensor) -> tuple:
    return (tuple(grid.tolist()), chunk.dtype, str(chunk.device), _fingerprints(chunk, [chunk.size(0)])[0])


def _cache_get(state, chunk, grid):
    entry = state["cache"].get(_cache_key(chunk, grid))
    if entry is not None and torch.equal(entry[0], chunk):
        state["cache"].move_to_end(_cache_key(chunk, grid))
        return entry[1]
    return None


def _cache_put_all(state, out, chunks, grids, lengths, encoded, merge):
    """Split the batched output into per-image pieces (each tensor field, per patch or per token) and cache them."""
    sizes = [lengths[i] for i in encoded]
    n_patches, n_tokens = sum(sizes), sum(sizes) // merge

    def piece(value, k):
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.size(0) in (n_tokens, n_patches):
            per = [n // merge for n in sizes] if value.size(0) == n_tokens else sizes
            return value.detach().split(per)[k]
        if isinstance(value, (list, tuple)):
            return type(value)(piece(v, k) for v in value)
        return value

    for k, (chunk, grid) in enumerate(zip(chunks, grids)):
        fields = {key: piece(out[key], k) for key in out.keys()}
        state["cache"][_cache_key(chunk, grid)] = (chunk.detach().clone(), fields, type(out))
        while len(state["cache"]) > CACHE_IMAGES:
            state["cache"].popitem(last=False)


def _from_cache(state, chunks, grid_thw, device):
    entries = [_cache_get(state, c, g) for c, g in zip(chunks, grid_thw)]
    if any(e is None for e in entries):  # the batch outgrew the cache: encode this one without it
        raise RuntimeError(f"vision cache holds {CACHE_IMAGES} images, fewer than one batch needs")
    out_type = state["cache"][_cache_key(chunks[0], grid_thw[0])][2]

    def join(values):
        first = values[0]
        if isinstance(first, torch.Tensor) and first.dim() >= 1:
            return torch.cat(values).to(device)
        if isinstance(first, (list, tuple)):
            return type(first)(join([v[i] for v in values]) for i in range(len(first)))
        return first

    return out_type(**{key: join([e[key] for e in entries]) for key in entries[0]})


# `_shared_forward` calls the Qwen-VL vision tower's own forward(hidden_states, grid_thw, **kwargs) on a subset of
# the images and splits its output by `spatial_merge_size`: checked against these transformers releases.
TRANSFORMERS_CHECKED = adapters.tested("transformers.Qwen2VisionTransformerPretrainedModel.forward")
VISION_FORWARD_ARGS = ("self", "hidden_states", "grid_thw")


def tower_supported(visual: torch.nn.Module) -> bool:
    """The tower's forward takes (hidden_states, grid_thw, ...) and transformers is a release this was checked on."""
    import inspect

    from stages.compat import version_in_range

    params = tuple(inspect.signature(type(visual).forward).parameters)[:len(VISION_FORWARD_ARGS)]
    return (params == VISION_FORWARD_ARGS and hasattr(visual, "spatial_merge_size")
            and version_in_range("transformers", TRANSFORMERS_CHECKED))


def share_vision_encoding(model: torch.nn.Module) -> bool:
    """Install group-shared encoding on `model`'s vision tower. Returns False (and leaves the tower as it is)
    when the model has none, or one this override was not checked against."""
    visual = vision_tower(model)
    if visual is None:
        return False
    if not tower_supported(visual):
        logger.warning("share_vision is off for %s: its forward or the transformers release differs from what "
                       "stages/rl/vision_share.py was checked against (transformers %s-%s)",
                       type(visual).__name__, *TRANSFORMERS_CHECKED)
        return False
    if not hasattr(visual, _ATTR):
        setattr(visual, _ATTR, {"cache": OrderedDict(), "images_seen": 0, "images_encoded": 0})
        visual.forward = types.MethodType(_shared_forward, visual)
    return True


def unshare_vision_encoding(model: torch.nn.Module) -> None:
    visual = vision_tower(model)
    if visual is not None and hasattr(visual, _ATTR):
        del visual.forward
        delattr(visual, _ATTR)


def sharing_stats(model: torch.nn.Module) -> dict[str, int]:
    """Images handed to the vision tower vs images actually encoded, since installation."""
    visual = vision_tower(model)
    state = getattr(visual, _ATTR, None) if visual is not None else None
    return {} if state is None else {"images_seen": state["images_seen"], "images_encoded": state["images_encoded"]}
