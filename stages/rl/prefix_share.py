"""Shared-prefix forward for GRPO: each group's prompt runs through the model once, its G completions reuse it.

Why: GRPO scores G completions of one prompt. TRL's policy, reference and old-log-prob forwards (and so the
backward) run every row's full `prompt + completion`, i.e. the identical prompt -- image tokens and all -- G
times. With a 1,300-token image prompt and 500-token completions the prompt is ~70 % of the tokens processed.

How (the prompt's KV cache, reused): rows are grouped by content (same prompt ids, mask and images -- TRL
shuffles rows, so no order is assumed). Pass 1 runs one representative row per group over the prompt minus
its last token, with a cache. The cache is index-expanded over the group's rows (`Cache.batch_select_indices`;
autograd sums the G copies' gradients back into the one prompt computation, so the backward is shared too).
Pass 2 runs every row's last prompt token + completion against that cache, through TRL's fused LM head, so it
returns exactly TRL's `(log_probs, entropy)` for the completion tokens. Position ids are computed once by the
model's own `get_rope_index` over the full unshared rows and sliced, so Qwen-VL's 3-D rope positions of the
completions continue from the prompt exactly as in the unshared forward (left padding included).

Why not one packed row per group with a block mask: that needs a 4-D mask (no flash-attention), and its masked
attention costs (P + G*C)^2 per group -- more than the unshared G*(P+C)^2 once completions dominate.

What it needs from the attention implementation: a query block attending to a longer, cached key block with
bottom-right causal alignment and a 2-D padding mask over prompt + completion. transformers builds that mask
for eager and SDPA (any SDPA kernel that takes an explicit mask: math or memory-efficient on GPUs), and its
flash-attention-2 path takes the same shape (q_len < kv_len, causal from the bottom right, padding unpadded).
Gradient checkpointing: both passes run under it, with caches that give a recomputed layer the keys and values
it first saw (`stages.rl.prefix_cache`; non-reentrant checkpointing only). Not exact, so not used (TRL's own
forward runs instead): reentrant gradient checkpointing, active dropout while training (one mask for the shared prompt
instead of G: e.g. LoRA dropout > 0), sliding-window layers, MoE aux loss, model inputs other than
Qwen-VL's pixel_values / image_grid_thw / mm_token_type_ids, and video tokens inside completions.

Images inside completions (multi-turn tools: a view the slide viewer returned, stages.rl.tools) share exactly: a
row's images are its prompt's (counted by their vision-start tokens before the cut), then its tool results'.
Rows group by their prompt images only; pass 1 encodes the prompt images of each group once, pass 2 encodes each
row's tool images with its completion (Qwen-VL scatters image features into the image tokens of the ids it is
given, and Qwen3-VL's deepstack features follow the same mask), and the 3-D positions of the whole row were
computed over all its images. So the prompt is shared up to the first tool result and nothing after it is.

The same sharing for the rollouts' prefill lives in `stages.rl.prefill_share`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from stages import adapters
from stages.rl import prefix_cache

logger = logging.getLogger(__name__)

# TRL versions whose GRPOTrainer._get_per_token_logps_and_entropies signature and output contract
# (fused LM head: `model(..., labels=labels, fused_lm_head=True).log_probs`) this module was written against.
TRL_TESTED = adapters.tested("trl.GRPOTrainer._get_per_token_logps_and_entropies")  # stages/adapters.py
_SUPPORTED_INPUTS = {"pixel_values", "image_grid_thw", "num_images", "mm_token_type_ids"}


def trl_supported(version: str | None = None) -> bool:
    """True when the installed TRL is one the private hook was checked against (major.minor)."""
    from stages.compat import version_in_range

    return version_in_range("trl", (TRL_TESTED[0], TRL_TESTED[-1]), version)


@dataclass
class PrefixStats:
    """Tokens the language model ran with sharing vs without it (cumulative), for logs and benchmarks."""

    forwards: int = 0
    shared_forwards: int = 0
    tokens_unshared: int = 0
    tokens_run: int = 0

    def as_metrics(self) -> dict[str, float]:
        saved = 1 - self.tokens_run / self.tokens_unshared if self.tokens_unshared else 0.0
        return {"prefix_share/shared_forwards": float(self.shared_forwards),
                "prefix_share/token_saving": round(saved, 4)}


def plan_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, pixel_values: torch.Tensor | None,
                image_grid_thw: torch.Tensor | None, num_images: list[int] | None,
                prompt_images: list[int] | None = None) -> list[list[int]]:
    """Rows with the same prompt (ids, mask and images), as lists of row indices in first-seen order.
    ``prompt_images``: how many of each row's images are its prompt's (the rest are tool results, not compared)."""
    key_rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    _, inverse = torch.unique(key_rows, dim=0, return_inverse=True)
    images = images_per_row(pixel_values, image_grid_thw, num_images, prompt_ids.size(0))
    if images is not None and prompt_images is not None:
        images = [split_row_images(im, k)[0] for im, k in zip(images, prompt_images)]
    groups: list[list[int]] = []
    by_key: dict[int, list[int]] = {}
    for row, key in enumerate(inverse.tolist()):
        for g in by_key.setdefault(key, []):
            if _same_images(images, groups[g][0], row):
                groups[g].append(row)
                break
        else:
            by_key[key].append(len(groups))
            groups.append([row])
    return groups


def images_per_row(pixel_values, image_grid_thw, num_images, n_rows):
    """Per row: (pixel rows, grids) of its images, or None when the batch has no images."""
    if pixel_values is None or image_grid_thw is None:
        return None
    counts = num_images if num_images is not None else [image_grid_thw.size(0) // n_rows] * n_rows
    grids = image_grid_thw.split(counts)
    pixels = pixel_values.split([int(g.prod(-1).sum()) for g in grids])
    return list(zip(pixels, grids))


def split_row_images(image, k: int):
    """One row's (pixel rows, grids) as (its first ``k`` images, the rest)."""
    pixels, grids = image
    n = int(grids[:k].prod(-1).sum())
    return (pixels[:n], grids[:k]), (pixels[n:], grids[k:])


def vision_start_id(unwrapped) -> int | None:
    return getattr(unwrapped.config, "vision_start_token_id", None)


def prompt_image_counts(unwrapped, input_ids: torch.Tensor, end: int) -> list[int]:
    """Images of each row that lie before column ``end`` (one vision-start token each): the prompt's."""
    return (input_ids[:, :end] == vision_start_id(unwrapped)).sum(1).tolist()


def _same_images(images, a: int, b: int) -> bool:
    if images is None:
        return True
    (pa, ga), (pb, gb) = images[a], images[b]
    return torch.equal(ga, gb) and torch.equal(pa, pb)


def unshareable_reason(model: torch.nn.Module, logits_to_keep: int, extra_inputs: dict) -> str | None:
    """Why the shared forward would not be exact for this model and these inputs (None: it is)."""
    unwrapped = unwrap_model(model)
    mm = extra_inputs.get("mm_token_type_ids")
    if mm is not None:
        completion_types = mm[:, -logits_to_keep - 1:]
        if bool((completion_types > 1).any()):
            return "video tokens inside the completions"
        if bool((completion_types == 1).any()) and vision_start_id(unwrapped) is None:
            return "image tokens inside the completions of a model without a vision_start_token_id"
    if extra_inputs.get("compute_aux_loss"):
        return "MoE aux loss requested"
    unsupported = sorted(k for k, v in extra_inputs.items()
                         if v is not None and k not in _SUPPORTED_INPUTS and k != "compute_aux_loss")
    if unsupported:
        return f"model inputs {unsupported} are not supported"
    text_config = unwrapped.config.get_text_config()
    if unwrapped.training:
        if getattr(unwrapped, "is_gradient_checkpointing", False) and torch.is_grad_enabled():
            if not prefix_cache.hooks_supported():
                return (f"gradient checkpointing with sharing uses transformers internals checked against "
                        f"{'-'.join(prefix_cache.TRANSFORMERS_TESTED)} only")
            if prefix_cache.reentrant_checkpointing(unwrapped):
                return "reentrant gradient checkpointing (use_reentrant=True) keeps no gradient path to the cache"
        # One dropout mask for the shared prompt instead of G independent ones: not the same computation.
        if getattr(text_config, "attention_dropout", 0.0) or any(
                isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in unwrapped.modules()):
            return "dropout is active (e.g. LoRA dropout > 0)"
        # Measured on 2 gloo ranks (tests/reliability/test_engines.py, fsdp2-rl): FSDP2's backward through the two
        # forward calls of the shared path (prompts, then completions) fails ("setStorage ... out of bounds for
        # storage of size 0"): the first call's parameters are already resharded. No-grad forwards still share.
        if torch.is_grad_enabled() and fsdp_sharded(model):
            return "FSDP shards the parameters (its backward through two forward calls fails)"
    layer_types = getattr(text_config, "layer_types", None) or ["full_attention"]
    if any(t != "full_attention" for t in layer_types) or getattr(text_config, "use_sliding_window", False):
        return "sliding-window attention layers"
    if extra_inputs.get("pixel_values") is not None and rope_owner(unwrapped) is None:
        return "image inputs on a model without get_rope_index"
    return None


def fsdp_sharded(model: torch.nn.Module) -> bool:
    """FSDP2 (DTensor parameters) or FSDP1 (a FullyShardedDataParallel wrapper) anywhere in the model."""
    from torch.distributed.tensor import DTensor

    return any("FullyShardedDataParallel" in type(m).__name__ for m in model.modules()) or any(
        isinstance(p, DTensor) for p in model.parameters())


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP / DeepSpeed (`.module`) and peft (`get_base_model()`) wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def rope_owner(unwrapped: torch.nn.Module):
    for owner in (unwrapped, getattr(unwrapped, "model", None)):
        if owner is not None and hasattr(owner, "get_rope_index"):
            return owner
    return None


def _position_ids(unwrapped, input_ids, attention_mask, image_grid_thw, mm_token_type_ids) -> torch.Tensor:
    """Positions the unshared forward would use for every row: (3, N, L) for Qwen-VL, (N, L) for plain text.

    Qwen-VL computes 3-D rope positions (`get_rope_index`) only when both image grids and `mm_token_type_ids`
    are given; otherwise its text model counts 0..L-1 along the padded row -- so do we."""
    owner = rope_owner(unwrapped)
    if owner is not None and image_grid_thw is not None and mm_token_type_ids is not None:
        positions, _ = owner.get_rope_index(input_ids, mm_token_type_ids=mm_token_type_ids,
                                            image_grid_thw=image_grid_thw, attention_mask=attention_mask)
        return positions
    return torch.arange(input_ids.size(1), device=input_ids.device).expand(input_ids.size(0), -1)


def _take_rows(positions: torch.Tensor, rows: torch.Tensor, cols: slice) -> torch.Tensor:
    return positions[:, rows, cols] if positions.dim() == 3 else positions[rows, cols]


def _chunks(groups: list[list[int]], batch_size: int | None) -> list[list[list[int]]]:
    """Whole groups per chunk, at most `batch_size` rows each (a larger group gets a chunk of its own)."""
    if not batch_size:
        return [groups]
    chunks, current, rows = [], [], 0
    for group in groups:
        if current and rows + len(group) > batch_size:
            chunks.append(current)
            current, rows = [], 0
        current.append(group)
        rows += len(group)
    return chunks + [current] if current else chunks


def try_shared_logps(model, input_ids, attention_mask, logits_to_keep: int, inputs: dict, *,
                     batch_size: int | None = None, compute_entropy: bool = False, compute_aux_loss: bool = False,
                     stats: PrefixStats | None = None):
    """`(log_probs, entropies)` from the shared forward, or None where it would not be exact or gain nothing
    (then the caller runs TRL's own forward). `inputs` are TRL's extra model inputs (pixel_values, ...)."""
    if stats is not None:
        stats.forwards += 1
    if input_ids.size(0) < 2:
        return None
    reason = unshareable_reason(model, logits_to_keep, dict(inputs, compute_aux_loss=compute_aux_loss))
    if reason:
        logger.debug("shared-prefix forward skipped: %s", reason)
        return None
    counts = None
    if inputs.get("pixel_values") is not None and vision_start_id(unwrap_model(model)) is not None:
        counts = prompt_image_counts(unwrap_model(model), input_ids, input_ids.size(1) - logits_to_keep)
    groups = plan_groups(input_ids[:, :-logits_to_keep], attention_mask[:, :-logits_to_keep],
                         inputs.get("pixel_values"), inputs.get("image_grid_thw"), inputs.get("num_images"), counts)
    if len(groups) == input_ids.size(0):  # no prompt repeats in this batch
        return None
    return shared_prefix_logps(model, input_ids, attention_mask, logits_to_keep, groups,
                               pixel_values=inputs.get("pixel_values"), image_grid_thw=inputs.get("image_grid_thw"),
                               num_images=inputs.get("num_images"), mm_token_type_ids=inputs.get("mm_token_type_ids"),
                               compute_entropy=compute_entropy, batch_size=batch_size, stats=stats)


def shared_prefix_logps(model, input_ids, attention_mask, logits_to_keep: int, groups: list[list[int]], *,
                        pixel_values=None, image_grid_thw=None, num_images=None, mm_token_type_ids=None,
                        compute_entropy: bool = False, batch_size: int | None = None,
                        stats: PrefixStats | None = None):
    """Per-token log-probs (and entropies) of the completions, as TRL's forward returns them: (N, C) each.

    `model` is what TRL calls (possibly DDP / peft wrapped, with TRL's fused LM head installed); `groups` comes
    from `plan_groups`. Both passes go through `model(...)` itself, so wrappers' forward hooks run as usual."""
    unwrapped = unwrap_model(model)
    n_rows, length = input_ids.shape
    cut = length - logits_to_keep - 1  # pass 1: prompt minus its last token; pass 2: that token + completion
    positions = _position_ids(unwrapped, input_ids, attention_mask, image_grid_thw, mm_token_type_ids)
    images = images_per_row(pixel_values, image_grid_thw, num_images, n_rows)
    if images is not None:  # (prompt images, tool-result images) per row; all the prompt's without a vision start
        counts = prompt_image_counts(unwrapped, input_ids, cut) if vision_start_id(unwrapped) is not None \
            else [len(grids) for _, grids in images]
        images = [split_row_images(im, k) for im, k in zip(images, counts)]
    out_logps, out_entropies, out_rows = [], [], []
    for chunk in _chunks(groups, batch_size):
        reps = [g[0] for g in chunk]
        rows = [r for g in chunk for r in g]
        owner = torch.tensor([k for k, g in enumerate(chunk) for _ in g], device=input_ids.device)
        rep_index = torch.tensor(reps, device=input_ids.device)
        row_index = torch.tensor(rows, device=input_ids.device)
        prefix_inputs = {"input_ids": input_ids[rep_index, :cut], "attention_mask": attention_mask[rep_index, :cut],
                         "position_ids": _take_rows(positions, rep_index, slice(0, cut))}
        suffix_images = {}
        if images is not None:
            prefix_inputs.update(_image_inputs([images[r][0] for r in reps]))
            suffix_images = _image_inputs([images[r][1] for r in rows])  # tool results, in row order
        suffix_ids = input_ids[row_index, cut:]
        labels = suffix_ids.masked_fill(attention_mask[row_index, cut:] == 0, -100)
        labels[:, 0] = -100  # the last prompt token is context, not a completion token
        cache = prefix_cache.PromptCache()  # both caches give a recomputed (checkpointed) layer what it first saw
        with prefix_cache.keep_cache_when_checkpointing(unwrapped):
            model(**prefix_inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
            # every row reads its group's prompt keys/values (their gradients sum back into the one prompt pass)
            out = model(input_ids=suffix_ids, attention_mask=attention_mask[row_index], **suffix_images,
                        position_ids=_take_rows(positions, row_index, slice(cut, length)),
                        past_key_values=cache.for_rows(owner), labels=labels, fused_lm_head=True)
        out_rows.append(row_index)
        out_logps.append(out.log_probs[:, -logits_to_keep:])
        if compute_entropy:
            out_entropies.append(out.entropy[:, -logits_to_keep:])
        if stats is not None:
            stats.tokens_run += len(reps) * cut + len(rows) * (length - cut)
    order = torch.cat(out_rows)
    back = torch.empty_like(order)
    back[order] = torch.arange(n_rows, device=order.device)  # rows were run group by group: restore TRL's order
    logps = torch.cat(out_logps)[back]
    entropies = torch.cat(out_entropies)[back] if compute_entropy else None
    if stats is not None:
        stats.shared_forwards += 1
        stats.tokens_unshared += n_rows * length
    return logps, entropies


def _image_inputs(parts) -> dict:
    """pixel_values / image_grid_thw of (pixel rows, grids) parts, in order; {} when they hold no image."""
    parts = [(p, g) for p, g in parts if g.numel()]
    if not parts:
        return {}
    return {"pixel_values": torch.cat([p for p, _ in parts]), "image_grid_thw": torch.cat([g for _, g in parts])}
