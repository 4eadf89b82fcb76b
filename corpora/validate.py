"""Check every record before any training: one line per problem (`file:line: code: message`), a summary,
and a policy: strict refuses data with any problem, lenient skips bad records and counts them.

    python -m corpora.validate PATH [--kind pairs|sft|qa|rl|eval] [--policy strict|lenient] [--root DIR]
                               [--slides.k 8 --slides.mpp 0.5 --slides.size 224 --slides.min-tissue 0.5 ...]
                               [--config RUN.yaml [--stage sft]]

Records naming a ``slide`` are tiled under the ``--slides.*`` options (the ``slides.*`` fields of the stage configs,
same names and defaults: pass the values the run will use, or ``--config`` the run's YAML), and each must yield
at least ``slides.k`` tiles.

Problem codes: malformed-line, missing-field, bad-field, bad-options, bad-kind, bad-messages, empty-caption,
empty-question, answer-not-in-options, text-too-long, bad-image-path, path-escapes-root, missing-image,
empty-image, unreadable-image, truncated-image, image-too-large, unreadable-slide, too-few-tiles, duplicate-id, no-records. Non-RGB images (grey, RGBA, palette,
16-bit) are not problems: the processors convert them to RGB.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from corpora.records import NORMALIZERS, SLIDE_KEYS, DataError, RecordError, canonical_kind, first_field
from corpora.sources import iter_raw

__all__ = ["DataError", "Problem", "Report", "validate", "check_image", "MAX_IMAGE_PIXELS"]

# Whole-slide images are named as `slide` (corpora.slides tiles them); a single image above this is a mistake
# or a decompression bomb. Checked from the header before any pixel is decoded.
MAX_IMAGE_PIXELS = 100_000_000


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.code}: {self.message}"


@dataclass
class Report:
    path: str
    kind: str
    policy: str
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    bad_records: int = 0

    @property
    def ok(self) -> bool:
        """Usable for training: no problems at all (strict), or at least one good record (lenient)."""
        return not self.problems if self.policy == "strict" else self.records - self.bad_records > 0

    def summary(self) -> str:
        good = self.records - self.bad_records
        verdict = "OK" if self.ok else "REFUSED"
        skipped = f", {self.bad_records} skipped" if self.policy == "lenient" and self.bad_records else ""
        return (f"{self.path}: {self.records} {self.kind} records, {len(self.problems)} problems in "
                f"{self.bad_records} records, {good} usable{skipped} ({self.policy}): {verdict}")

    @property
    def bad_locations(self) -> set[tuple[str, int]]:
        """`(file, line)` of every bad record: what a lenient run leaves out (`corpora.readers.load(skip=...)`)."""
        return {(p.file, p.line) for p in self.problems if p.line > 0}

    def raise_if_errors(self) -> None:
        """Raise DataError listing every problem when the data is refused under the policy."""
        if not self.ok:
            lines = [str(p) for p in self.problems[:50]]
            more = len(self.problems) - len(lines)
            raise DataError("\n".join([self.summary(), *lines] + ([f"... and {more} more"] if more > 0 else [])))


def check_image(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[str, str] | None:
    """(code, message) of what is wrong with the image file at `path`, or None if it decodes fully."""
    file = Path(path)
    if file.is_dir():
        return "missing-image", f"image path is a folder, not a file: {path}"
    if not file.is_file():
        return "missing-image", f"image not found: {path}"
    if file.stat().st_size == 0:
        return "empty-image", f"image file is empty (0 bytes): {path}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return "image-too-large", f"image is {width}x{height} = {width * height} pixels " \
                                              f"(limit {max_pixels}): {path}"
                image.load()  # decodes every byte: catches truncated files that open() alone accepts
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return "image-too-large", f"{e}: {path}"
    except OSError as e:
        if "truncated" in str(e).lower() or "broken data stream" in str(e).lower():
            return "truncated-image", f"image is truncated ({e}): {path}"
        return "unreadable-image", f"cannot decode image ({e}): {path}"
    except Exception as e:  # noqa: BLE001 -- PIL raises many types on garbage input; all mean "unreadable"
        return "unreadable-image", f"cannot decode image ({type(e).__name__}: {e}): {path}"
    return None


def _slide_problems(raw: dict, sample: dict, slides) -> list[tuple[str, str]]:
    """A slide record must yield ``slides.k`` tiles: a prompt with fewer is not what the run trains on."""
    if sample.get("trace") or first_field(raw, SLIDE_KEYS, "slide", required=False, skip_empty=True) is None:
        return []  # a tool-calling trace's slide is where its images came from; it brings its own images
    from corpora.slides.sampling import SlideSampling

    slides = slides or SlideSampling()
    tiles = len(sample["images"]) - bool(slides.thumbnail)
    if tiles >= slides.k:
        return []
    return [("too-few-tiles", f"slide {first_field(raw, SLIDE_KEYS, 'slide')} yields {tiles} tiles of {slides.size} px "
                              f"with >= {slides.min_tissue:g} tissue at {slides.mpp:g} µm/px, slides.k={slides.k} asks "
                              f"for {slides.k}; lower slides.k or slides.min_tissue (or drop the record)")]


def validate(path, kind: str, policy: str = "strict", *, root=None, template: str = "cot",
             check_images: bool = True, max_pixels: int = MAX_IMAGE_PIXELS, slides=None) -> Report:
    """Check every record of `path` as `kind`; never raises for bad data (see `Report.raise_if_errors`).
    Records naming a `slide` are tiled here (``slides``: corpora.slides.SlideSampling), once: training reads
    the cached tiles; an unreadable slide is an `unreadable-slide` problem at the record's file:line."""
    if policy not in ("strict", "lenient"):
        raise ValueError(f"policy must be 'strict' or 'lenient', got {policy!r}")
    canonical = canonical_kind(kind)
    report = Report(str(path), canonical, policy)
    extra = {"template": template, "slides": slides} if canonical == "sft" else {"slides": slides}
    seen_ids: dict[str, str] = {}
    checked_images: dict[str, tuple[str, str] | None] = {}
    for record in iter_raw(path, root):
        report.records += 1
        where = (str(record.file), record.line)
        found = []
        if record.error is not None:
            found.append((record.error.code, record.error.message))
        else:
            try:
                sample = NORMALIZERS[canonical](record.data, record.root, f"{record.file.stem}-{record.line}", **extra)
            except RecordError as e:
                found.append((e.code, e.message))
            else:
                found.extend(_slide_problems(record.data, sample, slides))
                if sample["id"] in seen_ids:
                    found.append(("duplicate-id", f"id {sample['id']!r} already used at {seen_ids[sample['id']]}"))
                else:
                    seen_ids[sample["id"]] = f"{record.file}:{record.line}"
                for image in sample["images"] if check_images else []:
                    if image not in checked_images:  # QA files ask several questions about one image
                        checked_images[image] = check_image(image, max_pixels)
                    if checked_images[image] is not None:
                        found.append(checked_images[image])
        report.problems.extend(Problem(*where, code, message) for code, message in found)
        report.bad_records += bool(found)
    if report.records == 0:  # an empty file (or a CSV header alone) must not pass as "no problems"
        report.problems.append(Problem(str(path), 0, "no-records", "no records found (empty data)"))
    return report


def slide_options(parser: argparse.ArgumentParser) -> None:
    """``--slides.NAME`` (also ``--slides.NAME_WITH_UNDERSCORES``) for every field of SlideSampling, with its
    default and help: the same settings a stage's ``slides.NAME=VALUE`` takes; ``--config`` reads them from the
    run's YAML (its ``slides:`` section, or that of ``--stage``'s section in a recipe config)."""
    from dataclasses import fields

    from corpora.slides.sampling import SlideSampling

    group = parser.add_argument_group("slides", "how records naming a slide become tiles (the stages' slides.*)")
    group.add_argument("--config", default=None, help="the run's config YAML: its slides.* settings (options override)")
    group.add_argument("--stage", default=None, help="with a recipe --config: the section (pretrain, sft, rl, opd...)")
    for f in fields(SlideSampling):
        names = dict.fromkeys([f"--slides.{f.name.replace('_', '-')}", f"--slides.{f.name}"])
        kind = {"bool": argparse.BooleanOptionalAction}.get(type(f.default).__name__)
        options = {"action": kind} if kind else {"type": type(f.default), "metavar": f.name.upper()}
        group.add_argument(*names, dest=f"slides__{f.name}", default=None,  # None: not given, the config's or default
                           help=f.metadata["help"] + (f" (default: {f.default})" if f.default != "" else ""), **options)


def _config_slides(path: str | None, stage: str | None) -> dict:
    if path is None:
        if stage:
            raise ValueError("--stage names a section of --config; pass --config FILE too")
        return {}
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"--config {path}: expected a readable YAML config, found {type(e).__name__}: {e}") from None
    section = config.get(stage) if stage else config
    if not isinstance(section, dict):
        raise ValueError(f"--config {path}: expected a section {stage!r}, found none; pass --stage as the recipe "
                         "config names it")
    slides = section.get("slides") or {}
    if not isinstance(slides, dict):
        raise ValueError(f"--config {path}: expected 'slides' to be a mapping of slides.* fields, found {slides!r}")
    return slides


def slide_sampling(args):
    """The SlideSampling of parsed ``--slides.*`` options over ``--config``'s; a bad value raises ValueError naming
    the field. select=clip is checked as select=tissue: the ranking picks among the same tiles, so the count is the
    same, and corpora resolves no registry ref (a stage checks its own ranking when it starts)."""
    from dataclasses import fields, replace

    from corpora.slides.sampling import SlideSampling

    settings = _config_slides(args.config, args.stage)
    unknown = set(settings) - {f.name for f in fields(SlideSampling)}
    if unknown:
        raise ValueError(f"--config {args.config}: unknown slides field(s) {', '.join(sorted(unknown))}")
    settings.update({k.removeprefix("slides__"): v for k, v in vars(args).items()
                     if k.startswith("slides__") and v is not None})
    slides = SlideSampling(**settings)
    return replace(slides, select="tissue", clip_model="") if slides.select == "clip" else slides


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corpora.validate", description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 when the data is usable under the policy, 1 otherwise.")
    parser.add_argument("path", help="data file (.jsonl .json .csv .tsv .tar) or folder (shards, ARCH)")
    parser.add_argument("--kind", default="qa", choices=["pairs", "sft", "qa", "rl", "eval"], help="sample kind")
    parser.add_argument("--policy", default="strict", choices=["strict", "lenient"],
                        help="strict: any problem refuses the data; lenient: bad records are skipped and counted")
    parser.add_argument("--root", default=None, help="folder relative image paths resolve against")
    parser.add_argument("--template", default="cot", help="prompt template for QA records read as sft")
    parser.add_argument("--no-images", action="store_true", help="skip decoding the images (fast)")
    slide_options(parser)
    args = parser.parse_args(argv)
    try:
        report = validate(args.path, args.kind, args.policy, root=args.root, template=args.template,
                          check_images=not args.no_images, slides=slide_sampling(args))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
