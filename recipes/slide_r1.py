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

from dataclasses import dataclass, field

from corpora.slides.demo import slide_demo_corpus
from corpora.slides.sampling import SlideSampling
from stages.cli import run_cli
from stages.registry import home

from recipes import patho_r1
from recipes.launch import LaunchError


def _demo_slides() -> SlideSampling:
    # 2 tiles of the demo's 112 px cells at the slides' own 0.5 µm/px: 32 image tokens with the tiny preset
    # (the patch demo's 16 twice); the tissue block has 4 cells, glass and pen none.
    return SlideSampling(k=2, select="tissue", mpp=0.5, size=112, min_tissue=0.5)


@dataclass
class SlideR1Config(patho_r1.PathoR1Config):
    """Patho-R1 on whole-slide records: ``slides.*`` decide the K tiles every stage and the evaluation see."""

    run: str = field(default="slide_r1", metadata={"help": "Run name used by every stage (registry <stage>/<run>)."})
    stages: list[str] = field(default_factory=lambda: ["pretrain", "sft", "rl"], metadata={
        "help": "Stages to run (pretrain, sft, opd, rl; pathoclip reads pairs at its own tile size)."})
    slides: SlideSampling = field(default_factory=_demo_slides, metadata={
        "help": "Tiles per slide record, for every stage and the evaluation (replaces each stage's slides)."})


def run(cfg: SlideR1Config):
    if not cfg.data:
        d = cfg.demo
        cfg.data = str(slide_demo_corpus(home(), d.seed, n_train=d.n_train, n_eval=d.n_eval,
                                         image_size=d.image_size).root)
    for stage in (cfg.pretrain, cfg.sft, cfg.opd, cfg.rl):
        if hasattr(stage, "slides"):
            stage.slides = cfg.slides
    return patho_r1.run(cfg)


def main(argv: list[str] | None = None) -> int:
    # config, home, packages, then the stages; a known error is one line and exit 2 (stages.cli)
    return run_cli(SlideR1Config, run, "python -m recipes.slide_r1", argv, extra=(LaunchError,))


if __name__ == "__main__":
    from stages.compat import exit_process

    exit_process(main())
