"""The slide demo: the Patho-R1 recipe (pretrain -> CoT SFT -> DAPO -> evaluation) on whole-slide prompts.

Every record names a slide (corpora.slides.demo: small pyramidal TIFFs whose diagnosis shows only in their
tissue); every stage and the evaluation turn it into the same ``slides.k`` tiles chosen by tissue
(``slides.*`` below, copied into each stage's config), so the model answers from K-tile prompts. Everything else
is recipes.patho_r1 with its demo settings; PathoCLIP is left out (its pairs would be tiled at its own size).

    python -m recipes.slide_r1                         # the slide demo corpus, tiny model, CPU
    python -m recipes.slide_r1 slides.k=4 slides.thumbnail=true rl.max_steps=60
    python -m recipes.slide_r1 data=MY_SLIDE_CORPUS    # a corpus folder in the demo layout whose records name slides
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from corpora.files import write_text_atomic
from corpora.records import SLIDE_KEYS, RecordError, first_field, resolve_image
from corpora.slides.demo import slide_demo_corpus
from corpora.slides.sampling import SlideSampling
from corpora.slides.tiling import tile_slides
from corpora.sources import iter_raw
from stages.cli import run_cli
from stages.registry import home
from stages.rl.config import RLConfig

from recipes import patho_r1
from recipes.launch import LaunchError
from recipes.pipeline import CORPUS_FILES


def _demo_slides() -> SlideSampling:
    # 2 tiles of the demo's 112 px cells at the slides' own 0.5 µm/px: 32 image tokens with the tiny preset
    # (the patch demo's 16 twice); the tissue block has 4 cells, glass and pen none.
    return SlideSampling(k=2, select="tissue", mpp=0.5, size=112, min_tissue=0.5)


def _slide_rl() -> RLConfig:
    # The patch demo's DAPO at the 120 steps the slide demo was measured with (the patch demo runs 80 since
    # issue 27 item 6; the slide demo's own budget is tuned separately).
    cfg = patho_r1._demo_rl()
    cfg.max_steps = 120
    return cfg


@dataclass
class SlideR1Config(patho_r1.PathoR1Config):
    """Patho-R1 on whole-slide records: ``slides.*`` decide the K tiles every stage and the evaluation see."""

    run: str = field(default="slide_r1", metadata={"help": "Run name used by every stage (registry <stage>/<run>)."})
    stages: list[str] = field(default_factory=lambda: ["pretrain", "sft", "rl"], metadata={
        "help": "Stages to run (pretrain, sft, opd, rl; pathoclip reads pairs at its own tile size)."})
    rl: RLConfig = field(default_factory=_slide_rl, metadata={"help": "Stage 3 settings (DAPO preset)."})
    slides: SlideSampling = field(default_factory=_demo_slides, metadata={
        "help": "Tiles per slide record, for every stage and the evaluation (replaces each stage's slides)."})


def corpus_slides(root: Path) -> list[str]:
    """Every slide the recipe's files name (records that name none, or a bad one, are validation's to report)."""
    found = set()
    for name, _ in CORPUS_FILES:
        if not (root / name).is_file():
            continue
        for record in iter_raw(root / name):
            value = None if record.error else first_field(record.data, SLIDE_KEYS, "slide", required=False,
                                                          skip_empty=True)
            if value is None:
                continue
            try:
                found.add(resolve_image(record.root, value))
            except RecordError:
                pass
    return sorted(found)


def warm_tile_cache(root: Path, slides: SlideSampling) -> int:
    """Tile every slide of the corpus before any stage starts, one process per core: validation and the stages
    then only read the cache (the first tiling is the corpus's one CPU-bound pass, ~0.1 s a demo slide)."""
    paths = corpus_slides(root)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    tile_slides(paths, slides.params(), cache_root=slides.cache_dir or None, processes=cores)
    return len(paths)


def run(cfg: SlideR1Config):
    start = time.perf_counter()
    if not cfg.data:
        d = cfg.demo
        cfg.data = str(slide_demo_corpus(home(), d.seed, n_train=d.n_train, n_eval=d.n_eval,
                                         image_size=d.image_size).root)
    n = warm_tile_cache(Path(cfg.data), cfg.slides)
    prep = round(time.perf_counter() - start, 1)
    print(f"slides: {n} tiled or found in the cache ({prep:.1f} s, corpus included)", flush=True)
    for stage in (cfg.pretrain, cfg.sft, cfg.opd, cfg.rl):
        if hasattr(stage, "slides"):
            stage.slides = cfg.slides
    path = patho_r1.run(cfg)
    if path is not None:  # the recipe's clock starts after the corpus: add its build and tiling
        metrics = json.loads(path.read_text())
        metrics["stage_seconds"] = {"slide_corpus_and_tiles": prep, **metrics.get("stage_seconds", {})}
        metrics["wall_seconds"] = round(metrics.get("wall_seconds", 0) + prep, 1)
        write_text_atomic(path, json.dumps(metrics, indent=2, default=str))
    return path


def main(argv: list[str] | None = None) -> int:
    # config, home, packages, then the stages; a known error is one line and exit 2 (stages.cli)
    return run_cli(SlideR1Config, run, "python -m recipes.slide_r1", argv, extra=(LaunchError,))


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())
