"""Which distributed engine a run asked for, the TrainingArguments that engine needs, and a check that it got it.

``accelerate launch --config_file X.yaml`` passes its choice to the training process through environment
variables (``ACCELERATE_USE_DEEPSPEED``, ``ACCELERATE_USE_FSDP``, ...); the Trainer builds its ``Accelerator``
from them. Two things go wrong on a machine without CUDA, and both silently:

- DeepSpeed is skipped when ``use_cpu=True`` (accelerate's ``PartialState`` ignores ``ACCELERATE_USE_DEEPSPEED``
  on CPU), and without a process-group backend it sees one process per rank. It needs ``use_cpu=False`` and
  ``ddp_backend="gloo"``: DeepSpeed then picks its own CPU accelerator.
- FSDP is skipped because accelerate only turns it on for a GPU-like distributed type: on CPU the type is
  MULTI_CPU, so both ranks train unsharded into the same folder. :func:`prepare_state` sets the type to
  MULTI_GPU once the gloo group exists; FSDP2 then shards for real (DTensor ``Shard(0)``) on CPU.

The engine a run asked for is honoured or refused, never swapped: :func:`check_engine` compares it with what
the Trainer's accelerator actually runs and stops with a clear error otherwise. The manifest of every
checkpoint records :func:`describe` (engine, world size, mixed precision).
"""
from __future__ import annotations

import contextlib
import json
import os

import accelerate

from stages.compat import version_in_range

ENGINES = ("single", "ddp", "deepspeed-zero1", "deepspeed-zero2", "deepspeed-zero3", "fsdp1", "fsdp2")
# The FSDP-on-CPU adapter below writes PartialState's shared state: checked against these accelerate versions.
_FSDP_CPU_ACCELERATE = ("1.15", "1.16")


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def requested_engine() -> str:
    """The engine the launcher asked for (from accelerate's / torchrun's environment)."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return f"deepspeed-zero{_zero_stage()}"
    if _flag("ACCELERATE_USE_FSDP"):
        return f"fsdp{os.environ.get('FSDP_VERSION', '1')}"
    return "ddp" if world_size() > 1 else "single"


def _zero_stage() -> str:
    """The ZeRO stage: from the DeepSpeed JSON the accelerate config names, else from its zero_stage field."""
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if config_file and os.path.isfile(config_file):
        with open(config_file) as fh:
            stage = json.load(fh).get("zero_optimization", {}).get("stage")
        if stage is not None:
            return str(stage)
    return os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _pin_cpu_device() -> None:
    """DDP on CPU: accelerate names each rank's device ``cpu:<local rank % 1>`` = ``cpu:0``, and transformers 5.17
    resumes a multi-rank run with ``torch.load(optimizer.pt, map_location=args.device)``, which torch refuses for
    ``cpu:0`` ("don't know how to restore data location"). accelerate's own ACCELERATE_TORCH_DEVICE names it
    plain ``cpu``. (DeepSpeed and FSDP load their optimizer state their own way.)"""
    if requested_engine() == "ddp" and not _cuda():
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")


def engine_arguments() -> dict:
    """TrainingArguments fields the requested engine needs on this machine (merged into every stage's args)."""
    if _cuda():
        return {"use_cpu": False}
    _pin_cpu_device()
    engine = requested_engine()
    if engine.startswith("deepspeed"):
        return {"use_cpu": False, "ddp_backend": "gloo"}
    if engine.startswith("fsdp"):
        if _flag("FSDP_ACTIVATION_CHECKPOINTING"):
            raise ValueError("the accelerate config sets fsdp_activation_checkpointing: use the stage's "
                             "gradient_checkpointing=true instead (one switch; the Trainer refuses both)")
        return {"use_cpu": True, "ddp_backend": "gloo"}
    # Without use_cpu a torchrun/accelerate job on CPU trains each rank alone.
    return {"use_cpu": True}


def prepare_state(args) -> None:
    """Set up the process group from ``args`` and, for FSDP on CPU, tell accelerate the run is distributed.

    Call after building the TrainingArguments and before the Trainer (whose Accelerator reads the state)."""
    engine = requested_engine()
    if not engine.startswith("fsdp") or _cuda() or world_size() < 2:
        return
    if not version_in_range("accelerate", _FSDP_CPU_ACCELERATE):
        low, high = _FSDP_CPU_ACCELERATE
        raise RuntimeError(f"FSDP on CPU needs the PartialState adapter in stages/distributed.py, checked with "
                           f"accelerate {low}-{high}; this is accelerate "
                           f"{accelerate.__version__}: re-check it or run FSDP on GPUs")
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    args.device  # noqa: B018  (creates PartialState and the gloo process group)
    state = PartialState()
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.MULTI_GPU  # shared state: the Accelerator reads it next


@contextlib.contextmanager
def main_process_first():
    """Run a block (data checks, dataset preparation) on the main process first, then on the others (which
    then find the datasets cache warm). A no-op for a single process; starts the process group otherwise,
    with the backend the Trainer will use."""
    if world_size() < 2:
        yield
        return
    from accelerate.state import PartialState

    _pin_cpu_device()
    kwargs = {} if _cuda() else {"backend": "gloo", "cpu": not requested_engine().startswith("deepspeed")}
    with PartialState(**kwargs).main_process_first():
        yield


@contextlib.contextmanager
def without_zero3_init():
    """Load a model on one process inside a ZeRO-3 run: transformers would otherwise build it under
    ``deepspeed.zero.Init`` (sharded across ranks: a collective the other ranks never join, so a hang)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = ref() if ref is not None else None
    if config is None:
        yield
        return
    from stages import adapters

    adapters.check("transformers.integrations.deepspeed._hf_deepspeed_config_weak_ref")  # refused outside its range
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def zero3_init_requested() -> bool:
    """ZeRO-3 with accelerate's ``zero3_init_flag`` (its default under ZeRO-3): build the model partitioned."""
    return requested_engine() == "deepspeed-zero3" and \
        os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def model_loading(bf16: bool):
    """Around a stage's ``from_pretrained``. Under ZeRO-3 with ``zero3_init_flag`` the DeepSpeed config the
    Trainer will use is registered with transformers first (``HfDeepSpeedConfig``, through accelerate's own
    ``DeepSpeedPlugin`` read from the launcher's environment), so ``from_pretrained`` builds every parameter
    inside ``deepspeed.zero.Init``: each rank only ever holds its partition, never the whole model in host RAM.
    (SFT / pretraining build their TrainingArguments first, which registers it; RL's need the processor, so the
    model loads before them.) Before this the model always loaded before the arguments: the flag had no effect.
    Without the flag, and under DDP, ZeRO-2 and FSDP, every rank loads the whole model (FSDP shards it in the
    Trainer)."""
    if not zero3_init_requested():
        with without_zero3_init():  # TrainingArguments built first registered DeepSpeed's config: load whole
            yield
        return
    from accelerate.utils import DeepSpeedPlugin
    from transformers.integrations import deepspeed as hf_deepspeed

    if hf_deepspeed.is_deepspeed_zero3_enabled():  # the stage's TrainingArguments already registered it
        yield
        return
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision("bf16" if bf16 else "no")  # zero.Init casts to the config's dtype: no "auto" left
    plugin.set_deepspeed_weakref()
    try:
        yield
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()  # the Trainer's arguments register their own
        del plugin


def engine_of(accelerator) -> str:
    """The engine an accelerator actually runs."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return f"deepspeed-zero{accelerator.state.deepspeed_plugin.zero_stage}"
    if kind == DistributedType.FSDP:
        return f"fsdp{accelerator.state.fsdp_plugin.fsdp_version}"
    return "ddp" if accelerator.num_processes > 1 else "single"


def check_engine(accelerator) -> str:
    """The engine in use; raises if it is not the one the launcher asked for."""
    asked, got = requested_engine(), engine_of(accelerator)
    if asked != got:
        raise RuntimeError(f"the launcher asked for {asked} on {world_size()} process(es) but the Trainer runs "
                           f"{got} on {accelerator.num_processes}: refusing to train with another engine "
                           f"(docs/DISTRIBUTED.md lists the launch commands that work)")
    return got


def keeps_fp32_master_weights(accelerator) -> bool:
    """DeepSpeed keeps fp32 master weights for a bf16/fp16 model; DDP, FSDP2 and a single process do not."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def upcast_trainable(model) -> int:
    """Trainable half-precision parameters -> fp32 (the forward runs under bf16 autocast): AdamW updates at
    small learning rates round to zero in bf16. Returns how many tensors were cast."""
    import torch

    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
            cast += 1
    return cast


def describe(trainer) -> dict:
    """How a checkpoint was trained, for its manifest."""
    args = trainer.args
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
    return {"engine": engine_of(trainer.accelerator), "world_size": trainer.accelerator.num_processes,
            "mixed_precision": precision}


def fsdp2_sharded_checkpoints(accelerator) -> bool:
    """FSDP2 with ``SHARDED_STATE_DICT``: checkpoints hold per-rank shards (torch.distributed.checkpoint) and the
    full weights of a published entry are gathered separately (``PublishingTrainer.save_model``)."""
    from accelerate.utils import DistributedType

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return (plugin is not None and accelerator.distributed_type == DistributedType.FSDP
            and plugin.fsdp_version == 2 and "SHARDED_STATE_DICT" in str(plugin.state_dict_type))
