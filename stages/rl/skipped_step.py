"""A DAPO step with no informative group on any rank moves nothing, under every engine.

`PathoGRPOTrainer` hands TRL an empty batch for such a step (decided from an all-gather, so every rank skips
together). The engines cannot be handed a graph-less zero loss: DeepSpeed 0.19.8's `engine.backward` refuses it
("loss must be a scalar tensor", measured: the 2-rank ZeRO-2 and ZeRO-3 runs died at the skipped step), and its
`engine.step()` runs its gradient epilogue whatever the loss was (ZeRO-2 would move Adam with zero gradients).
So the trainer never calls the engine's backward / step for a skipped micro-batch:

* DDP, FSDP2, one process: no backward leaves every `.grad` at None; the Trainer's `optimizer.step()` then
  leaves every parameter, moment and Adam step count as it was (torch's optimizers skip parameters without a
  gradient), and the Trainer advances the learning-rate schedule as for any step. FSDP2's root parameters,
  gathered by the step's generation forwards, are resharded as a backward would have.
* DeepSpeed: `engine.step()` is what advances its schedule and step counter, and it is not called; we do that
  bookkeeping here so the learning rate and DeepSpeed's `global_stepN` checkpoint tag stay those of the
  Trainer's global step, as under DDP.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

from accelerate.utils import DistributedType


def skip_update(accelerator, model) -> None:
    """What a skipped micro-batch does instead of `accelerator.backward(loss)`."""
    if getattr(accelerator, "is_fsdp2", False):
        _reshard(model)
    if accelerator.distributed_type != DistributedType.DEEPSPEED or not accelerator.sync_gradients:
        return  # the Trainer's own optimizer.step() finds no gradient; nothing to do before it
    engine = accelerator.deepspeed_engine_wrapped.engine
    # The bookkeeping of DeepSpeed's _take_model_step, without its optimizer.step() / gradient epilogue.
    if engine.lr_scheduler is not None:
        engine.lr_scheduler.step()
    engine.global_steps += 1
    engine.global_samples += engine.train_batch_size()


def _reshard(model) -> None:
    """FSDP2 keeps the root module's parameters gathered after a forward until the backward reshards them; the
    step's generation ran forwards and no backward follows: reshard as a trained step would leave them."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextmanager
def backward_unless(accelerator, model, skipped: Callable[[], bool]):
    """Within the block `accelerator.backward(loss)` runs only when `skipped()` is False, else `skip_update`.
    The Trainer calls `self.accelerator.backward` inside its `training_step`: an instance attribute shadows
    the method for the duration of one call (restored after, also on error)."""
    from stages import adapters

    adapters.check("accelerate.Accelerator.backward")  # refused outside the accelerate releases it was tested with
    had_own = "backward" in vars(accelerator)
    backward = accelerator.backward

    def guarded(loss, **kwargs):
        if skipped():
            return skip_update(accelerator, model)
        return backward(loss, **kwargs)

    accelerator.backward = guarded
    try:
        yield
    finally:
        if had_own:
            accelerator.backward = backward
        else:
            del accelerator.backward
