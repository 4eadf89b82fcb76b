"""Running open_clip_train's ``main(argv)`` once per phase, each in a process of its own, and reading back what
it logged.

Its ``main`` is written to run once per interpreter: it adds logging handlers and raises every logger to INFO on
each call, and under torchrun creates the process group without ever destroying it. So the parent
(``pathoclip.train``) never imports it: ``run_open_clip_train`` starts ``python -m pathoclip.launch ARGV`` for
each phase, and only that child wraps open_clip_train (per-epoch seeding; on CPU, DDP without ``device_ids``);
nothing of torch or open_clip is swapped in the parent. Under torchrun each phase's children meet in a process
group of their own (``phase_env``).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from pathoclip.export import register_model_configs
from stages import adapters
from stages.compat import require_version

# the child's exit status when open_clip_train's main() refused its argv (it prints why and returns -1)
REFUSED_EXIT = 3
# how long a rank waits for rank 0 to name the port of a phase's process group (rank 0 prepares the data first)
PORT_WAIT_S = 3600
# what runs one phase (tests/reliability/launch.py puts its probes in front of it)
PHASE_COMMAND = (sys.executable, "-m", "pathoclip.launch")


# The open_clip_train internals wrapped here (train_one_epoch's positional signature; the DDP wrapping main() does)
# were checked against these open_clip_torch releases; upstream open_clip_train has since changed
# train_one_epoch's signature, so a newer release is refused instead of silently mis-calling it.
OPEN_CLIP_CHECKED = adapters.tested("open_clip_train.main.train_one_epoch")  # stages/adapters.py
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

    require_version("open_clip_torch", OPEN_CLIP_CHECKED, "pathoclip.launch (train_one_epoch, DistributedDataParallel)")
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
    failed on CPU (gloo) while the same call is right on CUDA. For a CPU run only, DDP is swapped -- in the
    phase's own process, never in pathoclip.train's -- for a subclass that drops ``device_ids`` (what torch wants
    for CPU modules); a subclass, so every ``isinstance`` check still holds. The torch release is checked against
    stages/adapters.py's row, the open_clip_train release by ``_seeded_epochs``."""
    from torch.nn import parallel

    if "--device" not in argv or argv[argv.index("--device") + 1] != "cpu":  # open_clip_argv always passes it
        yield
        return
    adapters.check("torch.nn.parallel.DistributedDataParallel")  # refused outside the torch releases it was tested with
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


def phase_env(key: str, environ=None) -> dict[str, str]:
    """The environment of one phase's child. Under torchrun the children of a phase form a new process group; the
    agent's store still holds the last phase's keys (rank addresses, barrier counts), which a new group would read
    as its own and dial dead processes. So rank 0 names a free port through that store (under ``key``) and the
    phase's rank-0 child hosts a fresh store there. Without an agent store (one process, SLURM, a hand-set
    MASTER_PORT) rank 0's child hosts the store anyway, a fresh one per phase: the environment is left as it is."""
    env = dict(os.environ if environ is None else environ)
    if int(env.get("WORLD_SIZE", "1")) <= 1 or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return env
    from datetime import timedelta

    from torch.distributed import TCPStore

    store = TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False,
                     timeout=timedelta(seconds=PORT_WAIT_S))
    name = f"pathoclip/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}/{key}/port"
    if int(env.get("RANK", "0")) == 0:
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            store.set(name, str(s.getsockname()[1]))
    return {**env, "MASTER_PORT": store.get(name).decode(), "TORCHELASTIC_USE_AGENT_STORE": "False"}


def run_open_clip_train(argv: list[str], key: str = "phase") -> None:
    """One open_clip_train run (a phase; ``key`` names it among the phases of this launch) in its own process."""
    done = subprocess.run([*PHASE_COMMAND, *argv], env=phase_env(key), preexec_fn=_die_with_parent)
    if done.returncode == REFUSED_EXIT:  # its only failure signal is a printed message and -1
        raise RuntimeError(f"open_clip_train refused to start (see the message above); argv: {argv}")
    if done.returncode != 0:
        raise RuntimeError(f"open_clip_train failed with exit status {done.returncode} (its error is above); "
                           f"argv: {argv}")


def _die_with_parent() -> None:
    """Linux: the phase's process gets SIGTERM when pathoclip.train dies (a launcher killing its ranks kills their
    phases too, instead of leaving them training on their own)."""
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main(argv: list[str]) -> int:
    """The child: ``python -m pathoclip.launch OPEN_CLIP_ARGV...``, started by ``run_open_clip_train``."""
    import_open_clip_train()
    from open_clip_train.main import main as open_clip_main

    register_model_configs()
    with _seeded_epochs(), _ddp_on_cpu(argv), _frozen_heap():
        status = open_clip_main(argv)
    return REFUSED_EXIT if status == -1 else 0


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


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main(sys.argv[1:]))  # ends the process group, then exits without the ~1.3 s heap scan
