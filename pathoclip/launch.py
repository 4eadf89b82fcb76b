"""Running open_clip_train's ``main(argv)`` in-process, more than once, and reading back what it logged.

Its ``main`` is written to run once per interpreter: it adds logging handlers and raises every logger to INFO
on each call, and under torchrun creates the process group without ever destroying it. The shims below undo
or sidestep exactly that; the training itself is untouched.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from pathoclip.export import register_model_configs
from stages.compat import require_version


@contextmanager
def restore_logging(quiet_between: bool = False):
    """open_clip_train adds root handlers (stdout + its out.log) per call: drop them afterwards so phases don't
    print twice or log into each other's out.log. ``quiet_between`` parks a NullHandler on the root for the
    duration, so a bare ``logging.info`` between phases cannot trigger ``basicConfig``'s extra handler."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # it also sets EVERY logger to INFO (torch's included, which then log at interpreter exit)
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    parked = logging.NullHandler() if quiet_between else None
    if parked:
        root.addHandler(parked)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            if handler is not parked:
                handler.close()
        root.setLevel(level)
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels.get(name, logging.NOTSET))


@contextmanager
def _reuse_process_group():
    """Under torchrun open_clip_train's main() creates the process group and never destroys it, so the next
    phase's main() would fail creating it again; destroy + create does not rendezvous a second time either
    (measured with gloo: it dials the first round's stale addresses). The group is kept and re-creation skipped."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        yield
        return
    create = dist.init_process_group
    dist.init_process_group = lambda *args, **kwargs: None
    try:
        yield
    finally:
        dist.init_process_group = create


# The two open_clip_train internals wrapped here (train_one_epoch's positional signature; main() creating the
# process group) were checked against these open_clip_torch releases; upstream open_clip_train has since changed
# train_one_epoch's signature, so a newer release is refused instead of silently mis-calling it.
OPEN_CLIP_CHECKED = ("3.3", "3.3")
TRAIN_ONE_EPOCH_ARGS = ("model", "data", "loss", "epoch", "optimizer", "scaler", "scheduler", "dist_model", "args")


def check_train_one_epoch(fn) -> None:
    """The positional parameters ``_seeded_epochs`` forwards must be exactly open_clip_train's, in order."""
    import inspect

    params = tuple(inspect.signature(fn).parameters)[:len(TRAIN_ONE_EPOCH_ARGS)]
    if params != TRAIN_ONE_EPOCH_ARGS:
        raise RuntimeError(f"open_clip_train.main.train_one_epoch takes {params}, not {TRAIN_ONE_EPOCH_ARGS}: "
                           "pathoclip.launch._seeded_epochs must be updated for this open_clip_train")


@contextmanager
def _seeded_epochs():
    """open_clip_train saves no RNG state, so a phase resumed from ``epoch_k.pt`` would shuffle and augment epoch
    k+1 with a fresh generator, unlike an uninterrupted run (measured: weights 7e-4 apart after two epochs).
    Seeding every epoch from (seed, epoch, rank) makes each epoch's draws independent of how the run got there."""
    import open_clip_train.main as open_clip_main

    require_version("open_clip_torch", OPEN_CLIP_CHECKED, "pathoclip.launch (train_one_epoch, init_process_group)")
    check_train_one_epoch(open_clip_main.train_one_epoch)
    train_one_epoch = open_clip_main.train_one_epoch

    def seeded(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, **kwargs):
        open_clip_main.random_seed(args.seed + 7919 * (epoch + 1), args.rank)
        return train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, **kwargs)

    open_clip_main.train_one_epoch = seeded
    try:
        yield
    finally:
        open_clip_main.train_one_epoch = train_one_epoch


@contextmanager
def _ddp_on_cpu(argv: list[str]):
    """open_clip_train wraps the model as ``DistributedDataParallel(model, device_ids=[device])``, which torch
    refuses for a CPU module ("device_ids ... only work with ... GPU modules"), so ``torchrun -m pathoclip.train``
    failed on CPU (gloo) while the same call is right on CUDA. For a CPU run only, DDP is swapped for a subclass
    that drops ``device_ids`` (what torch wants for CPU modules); a subclass, so every ``isinstance`` check
    still holds. The open_clip_train release is checked by ``_seeded_epochs`` (same private surface)."""
    from torch.nn import parallel

    if "--device" not in argv or argv[argv.index("--device") + 1] != "cpu":  # open_clip_argv always passes it
        yield
        return
    ddp = parallel.DistributedDataParallel

    class CPUDistributedDataParallel(ddp):
        def __init__(self, module, device_ids=None, *args, **kwargs):
            super().__init__(module, None, *args, **kwargs)

    parallel.DistributedDataParallel = CPUDistributedDataParallel
    try:
        yield
    finally:
        parallel.DistributedDataParallel = ddp


@contextmanager
def _frozen_heap():
    """What exists before training starts -- torch, open_clip and everything else imported, the corpus: ~500k
    objects -- lives until the end. Measured on the demo (2 epochs): Python's cyclic GC spent ~2.4 s re-scanning
    it during open_clip_train's loop; `gc.freeze()` moves it to a generation the collector skips (0.7 s saved).
    The loop's own objects are collected as before; `gc.unfreeze()` hands the old heap back afterwards."""
    import gc

    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def import_open_clip_train() -> None:
    """Import torch, torchvision, transformers and open_clip with the cyclic GC paused. An import allocates
    hundreds of thousands of long-lived objects and none of them is garbage, yet each allocation burst triggers
    a collection that re-scans them all; measured on this machine: 5.55 s -> 5.2 s for this import. The
    collector is back on (unchanged thresholds) before any training code runs."""
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        import open_clip_train.main  # noqa: F401
    finally:
        if was_enabled:
            gc.enable()


def run_open_clip_train(argv: list[str]) -> None:
    from open_clip_train.main import main

    register_model_configs()
    with restore_logging(), _reuse_process_group(), _seeded_epochs(), _ddp_on_cpu(argv), _frozen_heap():
        status = main(argv)
    if status == -1:  # its only failure signal is a printed message and -1
        raise RuntimeError(f"open_clip_train refused to start (see the message above); argv: {argv}")


def set_aside_incomplete_checkpoints(folder: Path) -> list[Path]:
    """Rename ``epoch_N.pt`` files that are not whole zip archives to ``*.pt.incomplete``; returns the new names.

    open_clip_train writes ``epoch_N.pt`` in place, so a process killed mid-save leaves a truncated newest file
    that ``--resume latest`` would pick and fail to load on every restart. torch.save writes the zip directory
    last, so a truncated file is exactly one ``zipfile`` does not recognise; the phase then resumes from the
    newest whole checkpoint. Every rank may call this: a rename another rank already did is skipped."""
    import zipfile

    moved = []
    for path in sorted(Path(folder).glob("*.pt")):
        if not zipfile.is_zipfile(path):
            target = path.with_name(path.name + ".incomplete")
            try:
                os.replace(path, target)
            except FileNotFoundError:
                continue
            logging.getLogger(__name__).warning("%s is incomplete (killed while saving?): set aside as %s",
                                                path, target.name)
            moved.append(target)
    return moved


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def loss_curve(tensorboard_dir: Path) -> list[tuple[int, float]]:
    """(step, train/loss) pairs open_clip_train logged, over every resumed session of the phase."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    events.Reload()
    if "train/loss" not in events.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in events.Scalars("train/loss")]
