"""Run a pathor1 entry point (``recipes.sft``, ``pathoclip.train``, ...) with test probes, then as ``__main__``.

    python -m tests.reliability.launch recipes.sft data=... max_steps=4
    torchrun --nproc_per_node 2 -m tests.reliability.launch recipes.rl ...

The entry point runs unchanged; the probes only observe or slow it, each switched on by an environment variable:

- ``PATHOR1_PROBE_SAMPLES=DIR``: every rank appends ``rank world sample`` lines to ``DIR/rank-<R>.txt`` for each
  training sample it consumes, and one ``rank world weights <sha256>`` line after ``train()`` (a digest of its
  parameters: equal on all ranks only if DDP synchronised the gradients).
- ``PATHOR1_PROBE_EPOCH_DELAY=SECONDS``: open_clip_train waits this long before each epoch after the first
  (touching ``<logs>/<phase>/.probe-epoch-<N>``), so a test can SIGKILL PathoCLIP between its checkpoints. Under
  ``pathoclip.train`` each phase's process (``pathoclip.launch``) is started through this module too, so the
  probes reach the process that runs open_clip_train.
- ``PATHOR1_PROBE_DYNAMIC=DIR``: after each dynamic-sampling generation every rank appends one JSON line to
  ``DIR/dynamic-<R>.jsonl``: the step, the rounds it ran, whether it skipped, the prompt ids and rewards of each
  round's rows on this rank, which rows it kept and padded, whether the padding is inert, and a digest of its
  weights before the step (equal to the previous step's digest when that step was skipped).
- ``PATHOR1_PROBE_GATHERED=DIR``: after ``train()`` every rank takes part in gathering the full parameters
  (accelerate's ``get_state_dict``: ZeRO-3 / FSDP all-gather) and rank 0 writes them, under the names of the
  live (unwrapped) model, to ``DIR/gathered.safetensors``, with ``DIR/engine.json`` (the engine that ran, and
  whether rank 0 held only shards of the parameters).
- ``PATHOR1_PROBE_OPTIMIZER=DIR``: every rank appends one JSON line to ``DIR/optimizer-<R>.jsonl`` when training
  begins and after every optimizer step: the global step, a digest of this rank's part of the weights (ZeRO-3
  partitions, FSDP2 shards), a digest of its optimizer state (the innermost torch optimizer's moments, step
  counts and the tensors they belong to, e.g. ZeRO's fp32 master partitions), the Adam step counts, the learning
  rate and DeepSpeed's own step counter.
- ``PATHOR1_PROBE_MEMORY=DIR``: every rank appends JSON lines to ``DIR/memory-<R>.jsonl``: right after the stage
  loaded its model (whether every parameter was already a ZeRO-3 partition, the elements this rank holds, its
  resident memory now and its peak so far) and after ``train()`` (its peak resident memory).
- ``PATHOR1_PROBE_TOOL_SCRIPT=1``: the RL policy's rollouts follow ``tests.slide_tools``'s script (a logits
  processor on its own ``generate``: some rows call the slide viewer's zoom, then answer), so a tool path runs
  with known tool calls on a random tiny model.
- ``PATHOR1_PROBE_STEP_DELAY=SECONDS:DIR``: at every optimizer-step boundary each rank touches
  ``DIR/step-<N>-rank-<R>`` and waits SECONDS before the preemption check (stages/preemption.py), so a test can
  signal the launchers mid-run and know which steps were trained.
- ``PATHOR1_PROBE_COMMIT_DELAY=SECONDS``: a registry checkpoint of step >= 2 waits this long after its payload
  is written and before its manifest is -- a window in which a test can SIGKILL the process mid-write.
"""
from __future__ import annotations

import hashlib
import os
import runpy
import sys
import time
from pathlib import Path


def token_parity_reward(completions, completion_ids, **columns) -> list[float]:
    """An RL reward a random tiny model can move (the share of even token ids), so advantages are non-zero."""
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


_calls_per_step: dict[int, int] = {}


def refill_forcing_reward(completions, completion_ids, trainer_state, **columns) -> list[float]:
    """For dynamic sampling tests: the first generation round of every step scores all completions alike (so
    every rank must refill), later rounds score token parity (informative groups); at step index 1 every round
    scores alike (a step where no group is informative anywhere), and at step index 2 every round on rank 1 does
    (one rank finds nothing while the other trains). Called once per round on every rank."""
    step = trainer_state.global_step
    call = _calls_per_step[step] = _calls_per_step.get(step, -1) + 1
    if step == 1 or call == 0 or (step == 2 and os.environ.get("RANK") == "1"):
        return [0.5] * len(completion_ids)
    return token_parity_reward(completions, completion_ids)


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), 1  # a torchrun rank without a process group trains alone


def record(folder: Path, *words) -> None:
    rank, world = rank_and_world()
    with open(folder / f"rank-{os.environ.get('RANK', 0)}.txt", "a") as fh:
        fh.write(" ".join(str(w) for w in (rank, world, *words)) + "\n")


def parameter_digest(model) -> str:
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        digest.update(name.encode() + p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def probe_samples(folder: Path) -> None:
    import json

    from transformers import Trainer

    from stages.engine import ChatCollator
    from stages.rl.trainer import PathoGRPOTrainer

    folder.mkdir(parents=True, exist_ok=True)
    collate, rewards, train = ChatCollator.__call__, PathoGRPOTrainer._calculate_rewards, Trainer.train

    def collate_and_record(self, rows):  # SFT / pretraining rows have no id: name them by image + text
        for r in rows:
            text = hashlib.sha256(json.dumps(r["messages"], sort_keys=True).encode()).hexdigest()[:12]
            record(folder, "sample", f"{Path(r['images'][0]).name}:{text}")
        return collate(self, rows)

    def rewards_and_record(self, inputs, *args):  # RL: one line per completion scored on this rank
        for row in inputs:
            record(folder, "sample", row["id"])
        return rewards(self, inputs, *args)

    def train_and_record(self, *args, **kwargs):
        out = train(self, *args, **kwargs)
        record(folder, "weights", parameter_digest(self.accelerator.unwrap_model(self.model)))
        return out

    ChatCollator.__call__, PathoGRPOTrainer._calculate_rewards, Trainer.train = (
        collate_and_record, rewards_and_record, train_and_record)


def probe_dynamic(folder: Path) -> None:
    import json

    from stages.rl.trainer import PathoGRPOTrainer

    folder.mkdir(parents=True, exist_ok=True)
    generate = PathoGRPOTrainer._generate_and_score_completions

    def generate_and_record(self, inputs):
        if not (self.dynamic_sampling and self.model.training):
            return generate(self, inputs)
        digest = parameter_digest(self.accelerator.unwrap_model(self.model))
        out = generate(self, inputs)
        rank, world = rank_and_world()
        n = len(inputs)
        rounds = [{"ids": ids, "rewards": rewards[rank * n:(rank + 1) * n].tolist()}
                  for ids, rewards in self.last_rounds]

        def where(parts, round_indices):
            return [{"round": k, "rows": rows} for (_, rows), k in zip(parts, round_indices)]

        got = self.last_sampling
        pad = got.padding_rows
        inert = bool((out["advantages"][pad] == 0).all() and (out["completion_mask"][pad] == 0).all())
        line = {"rank": rank, "world": world, "step": self.state.global_step, "digest": digest,
                "rounds": rounds, "skipped": got.stats.skipped, "kept": where(got.kept, got.kept_rounds),
                "padding": where(got.padding, got.padding_rounds), "inert_padding": inert,
                "rows": int(out["completion_ids"].size(0)),
                "num_items_in_batch": int(out["num_items_in_batch"]),
                "local_tokens": int(out["completion_mask"].sum()) if out["completion_ids"].numel() else 0}
        with open(folder / f"dynamic-{os.environ.get('RANK', 0)}.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
        return out

    PathoGRPOTrainer._generate_and_score_completions = generate_and_record


def holds_a_shard(p) -> bool:
    """This rank holds only part of the parameter: an FSDP2 DTensor shard, or a ZeRO-3 partition."""
    from torch.distributed.tensor import DTensor

    if isinstance(p, DTensor):
        return p.to_local().numel() < p.numel()
    return getattr(p, "ds_tensor", None) is not None and p.ds_tensor.numel() < p.ds_numel


def probe_gathered(folder: Path) -> None:
    import json

    from safetensors.torch import save_file
    from transformers import Trainer

    from stages.distributed import engine_of

    folder.mkdir(parents=True, exist_ok=True)
    train = Trainer.train

    def train_and_gather(self, *args, **kwargs):
        out = train(self, *args, **kwargs)
        sharded = any(holds_a_shard(p) for p in self.model.parameters())
        wrapped = self.model_wrapped if self.is_deepspeed_enabled else self.model
        state = self.accelerator.get_state_dict(wrapped)  # collective under ZeRO-3 / FSDP
        if self.accelerator.is_main_process:
            tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
            save_file(tensors, str(folder / "gathered.safetensors"))
            (folder / "engine.json").write_text(json.dumps(
                {"engine": engine_of(self.accelerator), "world_size": self.accelerator.num_processes,
                 "sharded": sharded}))
        return out

    Trainer.train = train_and_gather


def local_tensor(t):
    """This rank's part of a tensor: the local shard of an FSDP2 DTensor, the partition of a ZeRO-3 parameter."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        return t.to_local()
    return t.ds_tensor if getattr(t, "ds_tensor", None) is not None else t


def optimizer_state(trainer) -> dict:
    import torch

    opt = trainer.optimizer
    while hasattr(opt, "optimizer"):  # accelerate's wrapper -> DeepSpeed's ZeRO optimizer -> the torch optimizer
        opt = opt.optimizer
    def data(t) -> bytes:  # a copy: numpy() of the tensor itself would make FSDP2's unsharded storage unresizable
        return local_tensor(t).detach().float().cpu().clone().reshape(-1).numpy().tobytes()

    weights, state = hashlib.sha256(), hashlib.sha256()
    for name, p in sorted(trainer.model.named_parameters()):
        weights.update(name.encode() + data(p))
    steps = set()
    # Keyed by the tensors the optimizer updates: the parameters (DDP, FSDP2), ZeRO's fp32 master partitions
    # (ZeRO-3 empties its param_groups between steps, its state stays).
    for i, (p, values) in enumerate(opt.state.items()):
        state.update(f"{i}".encode() + data(p))
        for key, value in sorted(values.items()):
            if key == "step":
                steps.add(float(value))
            if isinstance(value, torch.Tensor):
                state.update(key.encode() + data(value))
    engine = trainer.model_wrapped if trainer.is_deepspeed_enabled else None
    return {"weights": weights.hexdigest(), "optimizer": state.hexdigest(), "adam_steps": sorted(steps),
            "lr": trainer.lr_scheduler.get_last_lr()[0] if trainer.lr_scheduler is not None else None,
            "engine_steps": getattr(engine, "global_steps", None)}


def probe_optimizer(folder: Path) -> None:
    import json

    from transformers import Trainer, TrainerCallback

    folder.mkdir(parents=True, exist_ok=True)
    train = Trainer.train

    class RecordState(TrainerCallback):
        def __init__(self, trainer):
            self.trainer = trainer

        def write(self, state):
            rank, world = rank_and_world()
            line = {"rank": rank, "world": world, "step": state.global_step, **optimizer_state(self.trainer)}
            with open(folder / f"optimizer-{os.environ.get('RANK', 0)}.jsonl", "a") as fh:
                fh.write(json.dumps(line) + "\n")

        def on_train_begin(self, args, state, control, **kwargs):
            self.write(state)

        def on_step_end(self, args, state, control, **kwargs):
            self.write(state)

    def train_and_record(self, *args, **kwargs):
        self.add_callback(RecordState(self))
        return train(self, *args, **kwargs)

    Trainer.train = train_and_record


def rss_mib() -> tuple[float, float]:
    """(resident memory now, peak resident memory so far) of this process, MiB."""
    import resource

    with open("/proc/self/statm") as fh:
        resident_pages = int(fh.read().split()[1])
    return (resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20,
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def probe_memory(folder: Path) -> None:
    import json

    import stages.model
    from transformers import Trainer

    folder.mkdir(parents=True, exist_ok=True)
    load_model, train = stages.model.load_model, Trainer.train

    def write(line: dict) -> None:
        with open(folder / f"memory-{os.environ.get('RANK', 0)}.jsonl", "a") as fh:
            fh.write(json.dumps({"rank": int(os.environ.get("RANK", 0)), **line}) + "\n")

    def load_and_record(cfg):
        model, processor = load_model(cfg)
        params = list(model.parameters())
        now, peak = rss_mib()
        write({"event": "loaded", "partitioned": all(getattr(p, "ds_tensor", None) is not None for p in params),
               "local_numel": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params),
               "numel": sum(getattr(p, "ds_numel", p.numel()) for p in params), "rss_mib": now, "peak_rss_mib": peak})
        return model, processor

    def train_and_record(self, *args, **kwargs):
        out = train(self, *args, **kwargs)
        write({"event": "trained", "peak_rss_mib": rss_mib()[1]})
        return out

    stages.model.load_model, Trainer.train = load_and_record, train_and_record
    if "stages.engine" in sys.modules:  # bound by name at its import
        sys.modules["stages.engine"].load_model = load_and_record


def probe_tool_script() -> None:
    from stages.rl.trainer import PathoGRPOTrainer
    from tests.slide_tools import scripted

    init = PathoGRPOTrainer.__init__

    def init_and_script(self, *args, **kwargs):
        init(self, *args, **kwargs)
        scripted(self.model, self.processing_class.tokenizer)  # over the shared prefill's generate, if any

    PathoGRPOTrainer.__init__ = init_and_script


def delay_commits(seconds: float) -> None:
    from stages.registry import CheckpointWriter

    commit = CheckpointWriter._commit

    def slow_commit(self):
        if self.step >= 2:
            marker = self.path / ".probe-payload-written"  # tells the test the window is open
            marker.touch()
            time.sleep(seconds)
            marker.unlink()
        return commit(self)

    CheckpointWriter._commit = slow_commit


def delay_epochs(seconds: float) -> None:
    import open_clip_train.main as open_clip_main

    train_one_epoch = open_clip_main.train_one_epoch

    def slow_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, **kwargs):
        if epoch >= 1:
            (Path(args.logs) / args.name / f".probe-epoch-{epoch}").touch()
            time.sleep(seconds)
        return train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, **kwargs)

    open_clip_main.train_one_epoch = slow_epoch


def delay_steps(spec: str) -> None:
    from stages.preemption import Preemption

    seconds, folder = spec.split(":", 1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    on_step_end = Preemption.on_step_end

    def slow_step_end(self, args, state, control, **kwargs):
        (Path(folder) / f"step-{state.global_step}-rank-{os.environ.get('RANK', 0)}").touch()
        time.sleep(float(seconds))
        return on_step_end(self, args, state, control, **kwargs)

    Preemption.on_step_end = slow_step_end


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    import stages  # noqa: F401  (the torchvision fix, before anything imports torchvision)

    if os.environ.get("PATHOR1_PROBE_SAMPLES"):
        probe_samples(Path(os.environ["PATHOR1_PROBE_SAMPLES"]))
    if os.environ.get("PATHOR1_PROBE_DYNAMIC"):
        probe_dynamic(Path(os.environ["PATHOR1_PROBE_DYNAMIC"]))
    if os.environ.get("PATHOR1_PROBE_GATHERED"):
        probe_gathered(Path(os.environ["PATHOR1_PROBE_GATHERED"]))
    if os.environ.get("PATHOR1_PROBE_OPTIMIZER"):
        probe_optimizer(Path(os.environ["PATHOR1_PROBE_OPTIMIZER"]))
    if os.environ.get("PATHOR1_PROBE_MEMORY"):
        probe_memory(Path(os.environ["PATHOR1_PROBE_MEMORY"]))
    if os.environ.get("PATHOR1_PROBE_TOOL_SCRIPT"):
        probe_tool_script()
    if os.environ.get("PATHOR1_PROBE_COMMIT_DELAY"):
        delay_commits(float(os.environ["PATHOR1_PROBE_COMMIT_DELAY"]))
    if module == "pathoclip.train":  # each phase runs in a process of its own: the probes go along
        import pathoclip.launch

        pathoclip.launch.PHASE_COMMAND = (sys.executable, "-m", "tests.reliability.launch", "pathoclip.launch")
    elif os.environ.get("PATHOR1_PROBE_EPOCH_DELAY"):
        delay_epochs(float(os.environ["PATHOR1_PROBE_EPOCH_DELAY"]))
    if os.environ.get("PATHOR1_PROBE_STEP_DELAY"):
        delay_steps(os.environ["PATHOR1_PROBE_STEP_DELAY"])
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
