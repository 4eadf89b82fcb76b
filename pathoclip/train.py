"""PathoCLIP training: corpus -> open_clip_train (a process per phase) -> registry entries, in two progressive phases.

Phase A trains on a seeded subset of the corpus, phase B on the whole corpus starting from A's weights
(fresh optimizer and schedule); each phase becomes a registry entry of stage ``pathoclip`` (B's parent is A)
in open_clip's hf-hub layout. The CLIP loss, the loop, checkpointing and TensorBoard are open_clip_train's:
this module only prepares the data, builds its argv and exports what it saved.

    python -m pathoclip.train                                    # demo corpus, tiny model, CPU
    python -m pathoclip.train --config pathoclip/configs/vit_b16.yaml data=/data/pairs.csv run=b16
    torchrun --nproc_per_node 8 -m pathoclip.train --config pathoclip/configs/vit_l14.yaml

Layout under ``$PATHOR1_HOME``: ``logs/pathoclip/<run>/{a,b}/`` (open_clip_train's log, ``tensorboard/``,
``checkpoints/epoch_N.pt``), ``cache/pathoclip/<corpus fingerprint>-slides<hash>/`` (the corpus as open_clip's CSV, shared
by every run on that corpus version: pathoclip.data), ``logs/pathoclip/<run>/data/`` (WebDataset shards) and the
registry entries ``pathoclip/<run>/step-N``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from corpora.slides.sampling import SlideSampling
from stages.cli import run_cli
from stages.config import to_dict
from stages.registry import Registry, RegistryError, cache_dir, home, logs_dir
from stages.runs import RunConfig, plan_run

from pathoclip.data import PreparedCorpus, phase_rows
from pathoclip.export import WEIGHTS_FILE, export_checkpoint, load_exported
from pathoclip.launch import is_main_process, loss_curve, run_open_clip_train, set_aside_incomplete_checkpoints

STAGE = "pathoclip"
# Our copies of open_clip's architectures: open_clip finds a pretrained TAG by architecture name.
PRETRAINED_BASE = {"PathoCLIP-ViT-B-16": "ViT-B-16", "PathoCLIP-ViT-L-14": "ViT-L-14"}


@dataclass
class CLIPTrainConfig(RunConfig):
    """Train a CLIP model on an image-caption corpus with open_clip_train, in two progressive phases.

    The shared names (run, init, data, seed, batch_size, lr, weight_decay, logging_steps) are stages.runs'."""

    run: str = field(default="demo", metadata={"help": "run name (registry pathoclip/<run>, logs/pathoclip/<run>)"})
    init: str = field(default="", metadata={"help": "initial weights: an open_clip pretrained tag (e.g. openai), "
                                                    "a weights file, an exported folder or a registry ref "
                                                    "(pathoclip:RUN); '' = random init"})
    data: str = field(default="", metadata={"help": "pairs corpus readable by corpora.readers.load_pairs "
                                                    "(CSV / JSONL / folder); '' or 'demo' = the demo corpus"})
    seed: int = field(default=0, metadata={"help": "seed of the subset draw and of open_clip_train"})
    resume: Literal["auto", "never"] = field(
        default="auto", metadata={"help": "auto: skip finished phases and continue from the newest open_clip_train "
                                          "checkpoint of this run; never: refuse to reuse an existing run"})
    batch_size: int = field(default=16, metadata={"help": "batch size per device"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (cosine schedule)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    logging_steps: int = field(default=5, metadata={"help": "TensorBoard / log interval in steps"})
    data_format: Literal["csv", "webdataset"] = field(
        default="csv", metadata={"help": "what open_clip_train reads: a CSV, or WebDataset shards written by corpora"})
    shard_size: int = field(default=1000, metadata={"help": "samples per WebDataset shard"})
    model: str = field(default="PathoCLIP-Tiny", metadata={"help": "open_clip architecture: a pathoclip/configs/*.json "
                                                                   "name or any open_clip built-in"})
    subset_fraction: float = field(default=0.5, metadata={"help": "phase A trains on this fraction of the corpus; "
                                                                  "0 skips phase A"})
    epochs_a: int = field(default=1, metadata={"help": "epochs of phase A (subset)"})
    epochs_b: int = field(default=3, metadata={"help": "epochs of phase B (whole corpus, from A's weights)"})
    warmup: int = field(default=10, metadata={"help": "warm-up steps of each phase"})
    precision: str = field(default="auto", metadata={"help": "open_clip_train precision; auto = amp on CUDA, fp32 on CPU"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    workers: int = field(default=0, metadata={"help": "dataloader workers per device"})
    save_frequency: int = field(default=1, metadata={"help": "save an open_clip_train checkpoint every N epochs"})
    zeroshot_dir: str = field(default="", metadata={"help": "ImageFolder for the zero-shot metric (demo: eval/zeroshot)"})
    zeroshot_prompts: str = field(default="", metadata={"help": "prompt JSON for zero-shot (demo: its prompts)"})
    slides: SlideSampling = field(default_factory=SlideSampling, metadata={
        "help": "How pairs naming a whole-slide image (\"slide\": PATH, CSV slide_path) become images: each of the "
                "K tiles (and the thumbnail, if asked) is one (tile, caption) row; the stages' slides.* fields."})
    extra_args: list[str] = field(default_factory=list, metadata={"help": "passed verbatim to open_clip_train, e.g. "
                                                                           "['--grad-checkpointing']"})

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.subset_fraction < 1:
            raise ValueError(f"subset_fraction must be in [0, 1), got {self.subset_fraction}")
        for name in ("epochs_a", "epochs_b", "shard_size", "save_frequency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# old name -> new name (a class attribute set after the class: dataclasses would take an annotated one for a field
# when this module runs as __main__)
CLIPTrainConfig.RENAMED = {**RunConfig.RENAMED, "pretrained": "init", "log_every_n_steps": "logging_steps"}


def resolve_corpus(cfg: CLIPTrainConfig) -> CLIPTrainConfig:
    """The demo corpus (corpora.demo.demo_corpus, the one the demo stages train on) when asked for, with
    zero-shot pointed at it."""
    if cfg.data not in ("", "demo"):
        return cfg
    from corpora.demo import demo_corpus

    demo = demo_corpus(home(), seed=cfg.seed)  # built once, reused
    cfg.data = str(demo.pairs)
    cfg.zeroshot_dir = cfg.zeroshot_dir or str(demo.zeroshot)
    cfg.zeroshot_prompts = cfg.zeroshot_prompts or str(demo.zeroshot_prompts)
    return cfg


def _pretrained(cfg: CLIPTrainConfig) -> tuple[str, str | None]:
    """(architecture name, pretrained argument) for the first phase."""
    if not cfg.init:
        return cfg.model, None
    if Path(cfg.init).is_file():
        return cfg.model, cfg.init
    try:  # an exported folder or a registry ref such as pathoclip:other-run
        return cfg.model, str(Registry().resolve(cfg.init) / WEIGHTS_FILE)
    except RegistryError:
        return PRETRAINED_BASE.get(cfg.model, cfg.model), cfg.init  # an open_clip pretrained tag


def open_clip_argv(cfg: CLIPTrainConfig, logs: Path, phase: str, data_args: list[str], epochs: int,
                   model: str, pretrained: str | None) -> list[str]:
    import torch

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = cfg.precision if cfg.precision != "auto" else ("amp" if device == "cuda" else "fp32")
    argv = [*data_args, "--model", model, "--logs", str(logs), "--name", phase, "--epochs", str(epochs),
            "--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr), "--warmup", str(cfg.warmup),
            "--wd", str(cfg.weight_decay), "--precision", precision, "--device", device, "--workers", str(cfg.workers),
            "--seed", str(cfg.seed), "--save-frequency", str(cfg.save_frequency), "--report-to", "tensorboard",
            "--log-every-n-steps", str(cfg.logging_steps)]
    if pretrained:
        argv += ["--pretrained", pretrained]
    if cfg.resume == "auto":
        argv += ["--resume", "latest"]  # open_clip_train picks the newest epoch_N.pt of logs/<phase>, if any
    return argv + list(cfg.extra_args)


# ------------------------------------------------------------------------------------------------- phases


def _finished_phase(registry: Registry, run: str, phase: str):
    for entry in registry.entries(STAGE):
        if entry.get("run") == run and (entry.get("extra") or {}).get("phase") == phase:
            return entry
    return None


def _wait_for_phase(registry: Registry, run: str, phase: str, timeout_s: float = 3600.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while (entry := _finished_phase(registry, run, phase)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {os.environ.get('RANK')}: rank 0 wrote no registry entry for phase {phase} "
                               f"of run {run!r} within {timeout_s:.0f}s")
        time.sleep(2)
    return entry


def evaluate_zero_shot(cfg: CLIPTrainConfig, folder: Path) -> dict:
    if not (cfg.zeroshot_dir and cfg.zeroshot_prompts):
        return {}
    from pathoclip.metrics import zero_shot

    model, preprocess, tokenizer = load_exported(folder)
    result = zero_shot(model, preprocess, tokenizer, cfg.zeroshot_dir, cfg.zeroshot_prompts)
    return {"zeroshot_accuracy": result["accuracy"], "zeroshot_chance": result["chance"]}


def train_phase(cfg, registry, corpus, phase, rows, *, logs, model, pretrained, parent, step_offset):
    """One open_clip_train run on ``rows``, exported as a registry entry. Returns the entry's manifest."""
    epochs = cfg.epochs_a if phase == "a" else cfg.epochs_b
    if cfg.resume == "never" and (logs / phase).exists():
        raise RuntimeError(f"{logs / phase} already exists: pass resume=auto to continue run {cfg.run!r} "
                           f"or choose another run=NAME")
    data_args = corpus.open_clip_args(phase, rows, cfg.data_format, cfg.shard_size, logs / "data")
    set_aside_incomplete_checkpoints(logs / phase / "checkpoints")
    run_open_clip_train(open_clip_argv(cfg, logs, phase, data_args, epochs, model, pretrained), f"{cfg.run}/{phase}")
    if not is_main_process():  # rank 0 alone saves and exports; the others wait for its entry to start the next phase
        return _wait_for_phase(registry, cfg.run, phase)
    checkpoint = logs / phase / "checkpoints" / f"epoch_{epochs}.pt"
    if not checkpoint.is_file():
        raise RuntimeError(f"open_clip_train finished without writing {checkpoint}")
    curve = loss_curve(logs / phase / "tensorboard")
    steps = curve[-1][0] + 1 if curve else 0
    corpus_file = cfg.data if Path(cfg.data).is_file() else None  # fingerprint the index, not every image
    with registry.writer(STAGE, cfg.run, step_offset + steps, parent=parent, config=to_dict(cfg),
                         data=corpus_file, kind="open_clip") as writer:
        export_checkpoint(checkpoint, model, writer.path)
        writer.finished = phase == "b"  # phase a is the first half of the run
        writer.extra.update(phase=phase, open_clip_model=model, open_clip_checkpoint=str(checkpoint))
        writer.metrics.update(phase_steps=steps, samples=len(rows), epochs=epochs,
                              loss_first=curve[0][1] if curve else None, loss_final=curve[-1][1] if curve else None,
                              **evaluate_zero_shot(cfg, writer.path))
    return _finished_phase(registry, cfg.run, phase)


def prepare_corpus(cfg: CLIPTrainConfig) -> PreparedCorpus:
    """The corpus as open_clip's CSV, validated (file:line) and tiled (slide pairs) on its first use."""
    corpus = PreparedCorpus(cfg.data, cache_dir(STAGE), cfg.slides.resolved(Registry().resolve))
    len(corpus)
    return corpus


def train(cfg: CLIPTrainConfig) -> Path | None:
    """Run the phases that are not finished yet, each in its own process (pathoclip.launch); returns the final
    registry entry's folder."""
    cfg = resolve_corpus(cfg)
    registry, logs = Registry(), logs_dir(STAGE, cfg.run)
    run_plan = plan_run(STAGE, cfg, init=cfg.init, registry=registry)  # the same rule as every stage
    if run_plan.finished:
        print(run_plan.describe())
        return run_plan.resume_from
    corpus = prepare_corpus(cfg)
    model, pretrained = _pretrained(cfg)
    parent, step = None, 0
    for phase, rows in phase_rows(len(corpus), cfg.subset_fraction, cfg.seed).items():
        entry = _finished_phase(registry, cfg.run, phase) if cfg.resume == "auto" else None
        if entry is None:
            entry = train_phase(cfg, registry, corpus, phase, rows, logs=logs, model=model, pretrained=pretrained,
                                parent=parent, step_offset=step)
            print(f"pathoclip phase {phase}: {entry['metrics']} -> {entry['path']}")
        else:
            print(f"pathoclip phase {phase}: already finished ({entry['ref']}), skipped")
        parent, step = entry["ref"], entry["step"]
        pretrained = str(Path(entry["path"]) / WEIGHTS_FILE)  # the next phase starts from these weights
    return Path(entry["path"])


def _validate_and_train(cfg: CLIPTrainConfig) -> Path | None:
    # After the config is known good: a bad record fails in a second, before any phase's process starts (the CSV
    # is cached, so train() reads it again for free).
    prepare_corpus(resolve_corpus(cfg))
    return train(cfg)


def main(argv=None) -> int:
    return run_cli(CLIPTrainConfig, _validate_and_train, "python -m pathoclip.train", argv)


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())  # ends the process group, then exits without the ~1.3 s heap scan
