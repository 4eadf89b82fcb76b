"""One checkpoint path for every Trainer-based stage (pretrain, SFT, RL): the library saves, we publish.

Saving: the Trainer's own ``_save_checkpoint`` runs unchanged on every rank and writes ``checkpoint-N`` under
``args.output_dir``. It knows every engine: DeepSpeed's collective ``save_checkpoint`` (its ``global_stepN``
folder), ZeRO-3's 16-bit gather of the full weights, FSDP's full state dict and optimizer, each rank's RNG
state. Then, from the public ``on_save`` callback, the main process *publishes* that folder into the registry
(``Registry.writer``: staging folder, manifest last, atomic rename, LATEST):

    <stage>/<run>/step-N/
        config.json, model.safetensors, processor files   full HF weights: AutoModelForImageTextToText loads it
        adapter/                                           LoRA runs: the adapter the merged weights came from
        README.md                                          model card: lineage, data fingerprint, metrics, engine
        trainer_state/                                     the library's checkpoint-N as written (resume input)
        manifest.json                                      written last

For LoRA the merged weights are computed from files, never from the live (possibly ZeRO-3/FSDP-sharded)
model: the library's save already gathered the adapter, and the main process merges it into a CPU copy of
the input model (peft ``merge_and_unload``). Full weights are hard links to the library's gathered file.

Resuming: ``train(resume_from_checkpoint=<entry>/trainer_state)``, the library's own resume (DeepSpeed loads
its ``global_stepN``, FSDP its ``pytorch_model_fsdp.bin`` or, under FSDP2 with ``SHARDED_STATE_DICT``, the
per-rank ``torch.distributed.checkpoint`` shards ``pytorch_model_fsdp_0/`` and ``optimizer_0/``, peft the adapter, every rank its RNG state). For
plain full fine-tuning the weights come with the model: the stage loads them from the entry itself.

Policies shared by every stage live here too: which towers train, ``stop_after``; what ``resume`` means and when a
run is finished are stages.runs.RunPlan's.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from stages import distributed
from stages.registry import Registry, RegistryError, step_dir
from stages.runs import resume_point  # noqa: F401 (the one resume rule, re-exported for stages)
from stages.stage_config import TRAIN_POLICIES  # noqa: F401 (re-exported for RL and tests)

TRAINER_STATE_DIR = "trainer_state"
ADAPTER_DIR = "adapter"
# Files of the library's checkpoint folder that are training state, not part of the HF model folder.
_STATE_ONLY = {"optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin", "latest",
               "zero_to_fp32.py", "README.md", "adapter_config.json", "adapter_model.safetensors",
               "adapter_model.bin", "entropy_ctrl_state.json", "zero_to_torch.py"}
_STATE_PREFIXES = ("rng_state", "pytorch_model_fsdp", "optimizer")


# ----------------------------------------------------------------------------------------------- policies
def trained_steps(entry: Path | None) -> int:
    """The optimizer step an entry was saved at (0 for none)."""
    if entry is None:
        return 0
    state = entry / TRAINER_STATE_DIR / "trainer_state.json"
    if not state.is_file():
        raise RegistryError(f"{entry} has no {TRAINER_STATE_DIR}/trainer_state.json: it cannot be resumed")
    return int(json.loads(state.read_text())["global_step"])


def resume_argument(entry: Path | None) -> str | None:
    """What to pass to ``Trainer.train(resume_from_checkpoint=...)``."""
    return str(entry / TRAINER_STATE_DIR) if entry is not None else None


class StopAfter(TrainerCallback):
    """Stop (and checkpoint) after ``step`` optimizer steps; the schedule still spans the planned steps."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if self.step and state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = True
        return control


# ----------------------------------------------------------------------------------------------- publishing
@dataclass
class Publication:
    """Where and how a trainer publishes its checkpoints."""

    stage: str
    run: str
    parent: str  # the input model as given (ref, folder or hub id): every entry of the run names it
    base: str  # the input model's folder (or hub id): LoRA adapters are merged into it
    config: object
    data: list
    keep_last: int = 0
    extra: dict = field(default_factory=dict)


def _hf_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.name not in _STATE_ONLY
            and not p.name.startswith(_STATE_PREFIXES)]


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the same bytes twice for free: nothing rewrites a published file
    except OSError:
        shutil.copy2(src, dst)


def merge_adapter(base: str, adapter_dir: Path, out: Path) -> None:
    """Full weights = the input model with the adapter merged in, computed on CPU from files (correct whatever
    engine sharded the live model)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    with distributed.without_zero3_init():  # a plain CPU copy on this process only
        model = AutoModelForImageTextToText.from_pretrained(base, dtype="auto")
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out)


def _lineage(registry: Registry, ref: str, parent: str | None) -> list[str]:
    chain = [ref]
    if parent:
        try:
            chain += [c["ref"] or c["base"] for c in registry.lineage(parent)]
        except RegistryError:
            chain.append(parent)
    return chain


def model_card(writer, lineage: list[str]) -> str:
    """README.md of an entry: what it is, where it came from, what data and how it was trained, its metrics."""
    engine = writer.extra.get("training", {})
    metrics = {k: v for k, v in writer.metrics.items() if isinstance(v, (int, float))}
    rows = "\n".join(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    base = lineage[-1]
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
base_model: {json.dumps(base)}
tags: [pathor1, {writer.stage}]
---
# {writer.ref}

Stage `{writer.stage}`, run `{writer.run}`, step {writer.step}: written by pathor1.

- **Lineage**: {" <- ".join(f"`{c}`" for c in lineage)}
- **Data fingerprint**: `{writer.data_fingerprint}`
- **Trained with**: {engine.get("engine", "?")}, {engine.get("world_size", "?")} process(es), mixed precision \
{engine.get("mixed_precision", "?")}
- **Weights**: full, safetensors{" (LoRA merged; the adapter is in `adapter/`)" if writer.extra.get("lora") else ""}

```python
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained(FOLDER)
processor = AutoProcessor.from_pretrained(FOLDER)
```

| metric | value |
|---|---|
{rows}

The optimizer, scheduler and RNG states for resuming are in `trainer_state/`; `manifest.json` has the full
configuration and library versions.
"""


def publish(trainer, publication: Publication, step: int, metrics: dict) -> Path | None:
    """Move the library's ``checkpoint-<step>`` into the registry as ``stage/run/step-N`` (main process only)."""
    registry = Registry()
    folder = Path(trainer.args.output_dir) / f"checkpoint-{step}"
    if (registry.root / publication.stage / publication.run / step_dir(step)).exists():
        shutil.rmtree(folder, ignore_errors=True)  # resumed exactly at a saved step: nothing new to write
        return None
    with registry.writer(publication.stage, publication.run, step, parent=publication.parent,
                         config=publication.config, data=publication.data) as w:
        state_dir = w.path / TRAINER_STATE_DIR
        shutil.move(str(folder), state_dir)  # a rename: output_dir and the registry share $PATHOR1_HOME
        lora = (state_dir / "adapter_config.json").is_file()
        if lora:
            merge_adapter(publication.base, state_dir, w.path)
            (w.path / ADAPTER_DIR).mkdir()
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                _link(state_dir / name, w.path / ADAPTER_DIR / name)
        for f in _hf_files(state_dir):
            if not (w.path / f.name).exists():
                _link(f, w.path / f.name)
        if not any(w.path.glob("*.safetensors")):
            raise RuntimeError(f"the library saved no full weights in {folder}: under ZeRO-3 set "
                               "zero3_save_16bit_model: true, under FSDP fsdp_state_dict_type: FULL_STATE_DICT")
        w.metrics.update(metrics)
        w.finished = step >= trainer.state.max_steps  # stop_after / preemption / a mid-run save: not the end
        w.extra.update(publication.extra, lora=lora, planned_steps=trainer.state.max_steps,
                       training=distributed.describe(trainer))
        (w.path / "README.md").write_text(model_card(w, _lineage(registry, w.ref, w.parent)))
    if publication.keep_last:
        registry.prune(publication.stage, publication.run, publication.keep_last)
    return registry.root / publication.stage / publication.run / step_dir(step)


class RegistryPublisher(TrainerCallback):
    """After every library save (``on_save``, on every rank): collect metrics, then the main process publishes."""

    def __init__(self, trainer, publication: Publication):
        self.trainer, self.publication = trainer, publication

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # a checkpoint-N left by a killed run was never published: drop it
            for stale in Path(args.output_dir).glob("checkpoint-*"):
                shutil.rmtree(stale, ignore_errors=True)

    def on_save(self, args, state, control, **kwargs):
        trainer = self.trainer
        metrics = trainer.checkpoint_metrics()  # may be collective (the eval loss): every rank takes part
        trainer.accelerator.wait_for_everyone()  # every rank's files (RNG, ZeRO shards) are written
        if trainer.is_world_process_zero():
            publish(trainer, self.publication, state.global_step, metrics)
        trainer.accelerator.wait_for_everyone()  # nobody trains on (or resumes) before the entry exists


class PublishingTrainer:
    """Mixin for a ``Trainer`` subclass: the requested engine or an error, fp32 trainable weights where no
    engine keeps fp32 master weights, and checkpoints published to the registry."""

    def __init__(self, *args, publication: Publication | None = None, **kwargs):
        """``publication`` None: the Trainer's plain ``checkpoint-N`` folders stay where it writes them."""
        model = kwargs.get("model", args[0] if args else None)
        training_args = kwargs.get("args")  # by keyword: Trainer and GRPOTrainer place it differently
        if training_args is not None:
            distributed.prepare_state(training_args)
        if isinstance(model, torch.nn.Module) and not distributed.requested_engine().startswith("deepspeed"):
            distributed.upcast_trainable(model)
        super().__init__(*args, **kwargs)
        self.engine = distributed.check_engine(self.accelerator)
        _check_full_weights_saved(self.accelerator)
        self.publication = publication
        if publication is not None:
            self.add_callback(RegistryPublisher(self, publication))

    def checkpoint_metrics(self) -> dict:
        """Metrics recorded in each entry's manifest (override; may use collectives)."""
        return {}

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        if not distributed.fsdp2_sharded_checkpoints(self.accelerator):
            return super().save_model(output_dir, _internal_call)
        # FSDP2 with SHARDED_STATE_DICT: the Trainer's save_model writes no weights; its checkpoint's resume state
        # is torch.distributed.checkpoint shards of the model and optimizer (every rank writes its own). An entry
        # still needs full weights: gather the model alone (a collective; rank 0 receives it on CPU), never the
        # optimizer, which FULL_STATE_DICT would gather whole on rank 0 at every save.
        state_dict = self.accelerator.get_state_dict(self.model)
        if self.args.should_save:
            self._save(output_dir or self.args.output_dir, state_dict=state_dict)


def _check_full_weights_saved(accelerator) -> None:
    """Refuse at start, not at the first checkpoint, an engine setting under which save_model writes no weights."""
    state = accelerator.state
    plugin = getattr(state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        zero = plugin.deepspeed_config.get("zero_optimization", {})
        if not zero.get("stage3_gather_16bit_weights_on_model_save", False):
            raise ValueError("DeepSpeed ZeRO-3 without stage3_gather_16bit_weights_on_model_save saves no full "
                             "weights: set zero3_save_16bit_model: true in the accelerate config")
    fsdp = getattr(state, "fsdp_plugin", None)
    if fsdp is not None and not distributed.fsdp2_sharded_checkpoints(accelerator) \
            and "FULL_STATE_DICT" not in str(fsdp.state_dict_type):
        raise ValueError(f"FSDP{fsdp.fsdp_version} with {fsdp.state_dict_type} saves no full weights: set "
                         "fsdp_state_dict_type: FULL_STATE_DICT, or use fsdp_version: 2 (SHARDED_STATE_DICT works "
                         "there), in the accelerate config")
