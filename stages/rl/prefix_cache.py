"""The two KV caches of the shared-prefix forward (`stages.rl.prefix_share`), safe under gradient checkpointing.

Gradient checkpointing runs every decoder layer a second time in the backward (the recompute). transformers'
`DynamicCache` appends on every call, so a recomputed layer would see its keys twice; transformers therefore drops
the cache inside checkpointed layers, which made the shared forward fall back to TRL's unshared one whenever
`gradient_checkpointing=true` (the GPU configs). These caches give a layer the same keys and values however often
it runs:

* `PromptCache` (pass 1, one row per group over the prompt): the first call of a layer stores the prompt's
  keys/values; a recompute gets back the keys/values it just computed (the prompt attended only to itself) and
  stores nothing.
* `CompletionCache` (pass 2, every row's last prompt token + completion): each call returns its group's stored
  prompt keys/values (index-selected per row at call time, so autograd sums the G rows' gradients back into the
  one prompt computation) followed by the call's own; nothing is stored, so the recompute sees what the first run
  saw.

The recompute must be non-reentrant (`use_reentrant=False`, transformers' default): a reentrant checkpoint runs
the first forward without autograd, so the stored prompt keys would carry no gradient back
(`reentrant_checkpointing` tells; the shared forward then falls back).

Private transformers hooks used (checked against `TRANSFORMERS_TESTED`, their rows' range in stages/adapters.py; tests/test_library_adapters.py pins
them): `GradientCheckpointingLayer._can_checkpoint_with_cache` (True keeps the cache inside a checkpointed layer:
transformers meant it for layers that only read the cache, which is what both caches make of every layer) and the
layer's `_gradient_checkpointing_func` (a `functools.partial` of torch's checkpoint with its keyword arguments).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from stages import adapters

TRANSFORMERS_TESTED = adapters.tested("transformers.GradientCheckpointingLayer._can_checkpoint_with_cache",
                                      "transformers.PreTrainedModel._gradient_checkpointing_func")


def hooks_supported(version: str | None = None) -> bool:
    from stages.compat import version_in_range

    return version_in_range("transformers", TRANSFORMERS_TESTED, version)


class _PromptLayer(DynamicLayer):
    def update(self, key_states, value_states, *args, **kwargs):
        if self.is_initialized:  # gradient checkpointing's recompute of pass 1
            return key_states, value_states
        return super().update(key_states, value_states, *args, **kwargs)


class _CompletionLayer(DynamicLayer):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values, self.rows = keys, values, rows

    def update(self, key_states, value_states, *args, **kwargs):
        return (torch.cat([self.keys[self.rows], key_states], dim=-2),
                torch.cat([self.values[self.rows], value_states], dim=-2))


class PromptCache(DynamicCache):
    """Pass 1's cache: one row per group."""

    def __init__(self):
        super().__init__()
        self.layer_class_to_replicate = _PromptLayer

    def for_rows(self, rows: torch.Tensor) -> "CompletionCache":
        """Pass 2's cache: row i reads the prompt of group `rows[i]`."""
        return CompletionCache([_CompletionLayer(layer.keys, layer.values, rows) for layer in self.layers])


class CompletionCache(DynamicCache):
    def __init__(self, layers: list[_CompletionLayer]):
        super().__init__()
        self.layer_class_to_replicate = None
        self.layers = layers


def checkpointed_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True
            and hasattr(m, "_can_checkpoint_with_cache")]


def reentrant_checkpointing(model: torch.nn.Module) -> bool:
    """A checkpointed layer whose recompute is reentrant (torch's default when use_reentrant is not given)."""
    for layer in checkpointed_layers(model):
        func = getattr(layer, "_gradient_checkpointing_func", None)
        if getattr(func, "keywords", {}).get("use_reentrant", True) is not False:
            return True
    return False


@contextmanager
def keep_cache_when_checkpointing(model: torch.nn.Module):
    """Within the block, checkpointed decoder layers keep the cache they are handed (ours never accumulates)."""
    layers = checkpointed_layers(model)
    for layer in layers:
        layer._can_checkpoint_with_cache = True  # instance attribute over the class's False
    try:
        yield
    finally:
        for layer in layers:
            vars(layer).pop("_can_checkpoint_with_cache", None)
