"""Preemption: SIGTERM or SIGUSR1 -> every rank saves a complete checkpoint at the next step boundary, then exits 75.

Clusters announce the end of a job with a signal: Slurm sends SIGTERM at preemption / ``scancel`` (and SIGKILL
``KillWait`` seconds later, 30 by default), or SIGUSR1 ``N`` seconds before the time limit with
``sbatch --signal=USR1@N`` (scripts/slurm/). Without a handler Python dies at once and the run loses everything
since its last periodic checkpoint.

:class:`Preemption` is a transformers ``TrainerCallback`` (pretrain, SFT and RL all train through the Trainer's loop,
so one callback covers them; RL's dynamic sampling lives inside a step). The signal handler only sets a flag. At
each optimizer-step boundary the ranks agree (an all-reduce MAX of the flag: the signal reaches the ranks at
different moments, and a checkpoint is a collective under DeepSpeed and FSDP, so all must stop at the same step).
Then the Trainer saves -- the library's own ``_save_checkpoint`` on every rank, published to the registry by
``stages.checkpointing`` -- and training stops. The stage process exits with :data:`PREEMPTED_EXIT` (75,
EX_TEMPFAIL: "try again") instead of 0, and the same command resumes from that checkpoint (``resume=auto``).

torchrun forwards SIGTERM to its workers and SIGKILLs them ``--shutdown-timeout`` seconds later (30 by default);
SIGUSR1 only with ``--signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1``. The Slurm templates set both.
"""
from __future__ import annotations

import signal

from transformers import TrainerCallback

from stages.compat import PREEMPTED_EXIT

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# (step, planned steps) where this process's training stopped for a signal; read by the CLI for its exit code
_stopped: list[tuple[int, int]] = []


class Preemption(TrainerCallback):
    """Checkpoint and stop at the first step boundary after SIGTERM / SIGUSR1 reached any rank."""

    def __init__(self, signals=SIGNALS):
        self.signals = signals
        self.received: int | None = None  # the signal this rank got
        self.stopped_at: int | None = None  # the step all ranks stopped (and saved) at
        self._previous = {}

    def _handler(self, signum, frame):  # async: only remember it; the step boundary does the work
        self.received = signum

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handler)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self._anyone_signalled(args):
            self.stopped_at = state.global_step
            if state.global_step < state.max_steps:  # at the last step the run simply ends (complete)
                _stopped.append((state.global_step, state.max_steps))
            control.should_save = True
            control.should_training_stop = True
        return control

    def _anyone_signalled(self, args) -> bool:
        import torch
        import torch.distributed as dist

        mine = self.received is not None
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return mine
        # every rank reaches this boundary at the same step; one int each (on the device the backend needs)
        flag = torch.tensor([int(mine)], device=args.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def preempted(self) -> bool:
        return self.stopped_at is not None


def exit_code() -> int:
    """The CLI's exit status: ``PREEMPTED_EXIT`` when training in this process stopped early for a signal, else 0."""
    if not _stopped:
        return 0
    step, planned = _stopped[-1]
    print(f"preempted: checkpoint saved at step {step} of {planned}; run the same command again to resume "
          f"(exit {PREEMPTED_EXIT})", flush=True)
    return PREEMPTED_EXIT
