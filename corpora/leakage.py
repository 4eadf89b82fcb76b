"""Leakage between a training and an evaluation set: the same image (exact content hash of the decoded
pixels, so a lossless re-encode is still "exact"), a near-duplicate image (perceptual hash: resized,
JPEG re-encoded, slightly recoloured), the same whole-slide image (records naming a ``slide``: SHA-256 of the
file, so a copied or renamed slide is found; its tiles differ by selection, the slide does not; records naming
tiles of a slide, from the tile cache or a ``python -m corpora.slides tile --out`` folder, count as that slide)
and questions asked in both.

    python -m corpora.leakage TRAIN EVAL [--max-distance 8] [--json]

TRAIN / EVAL: a data file or folder any reader understands, or a folder of images (e.g. an ImageFolder).
Exit status 1 when an image leaks, 0 otherwise (repeated template questions alone are only reported).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn
from tqdm import tqdm

from corpora.grading import normalize_text
from corpora.records import QUESTION_KEYS, SLIDE_KEYS, RecordError, first_field, image_list, resolve_image
from corpora.sources import IMAGE_EXTENSIONS, iter_raw

HASH_SIZE = 8  # 8x8 low-frequency DCT coefficients -> a 64-bit perceptual hash


@dataclass
class LeakReport:
    exact: list[tuple[str, str]] = field(default_factory=list)  # (train image, eval image)
    near: list[tuple[str, str, int]] = field(default_factory=list)  # (train image, eval image, Hamming distance)
    questions: list[tuple[str, int, int]] = field(default_factory=list)  # (question, times in train, times in eval)
    slides: list[tuple[str, str]] = field(default_factory=list)  # (train slide, eval slide): same file content

    @property
    def leaks(self) -> bool:
        return bool(self.exact or self.near or self.slides)


def perceptual_hash(image: Image.Image) -> int:
    """pHash: signs of the 8x8 lowest DCT frequencies of a 32x32 grey thumbnail against their median.

    Hand-written (a dozen lines) instead of adding the `imagehash` dependency; robust to resizing,
    recompression and small colour shifts because it keeps only the coarse luminance structure."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(grey, norm="ortho")[:HASH_SIZE, :HASH_SIZE].ravel()
    bits = low[1:] > np.median(low[1:])  # the DC term only measures brightness
    return int("".join("1" if b else "0" for b in bits), 2)


def content_hash(image: Image.Image) -> str:
    """SHA-256 of the decoded RGB pixels and size: identical for any lossless re-encoding of the image."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def collect(path) -> tuple[list[str], list[str]]:
    """(image paths, questions) of a data file/folder, or of a plain folder of images."""
    path = Path(path)
    is_image_folder = path.is_dir() and not any(path.glob("*.tar")) and not (path / "captions.json").is_file()
    if is_image_folder:
        return sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS), []
    images, questions = [], []
    for record in iter_raw(path):
        if record.data is None:
            continue
        try:
            if first_field(record.data, SLIDE_KEYS, "slide", required=False, skip_empty=True) is None:
                images.extend(image_list(record.data, record.root))  # slides: compared whole (collect_slides)
        except RecordError:
            continue  # validation reports unusable records; leakage looks at what can be read
        question = next((record.data[k] for k in QUESTION_KEYS if isinstance(record.data.get(k), str)), None)
        if question:
            options = record.data.get("options") or []
            questions.append(normalize_text(question + " " + " ".join(map(str, options))))
    return list(dict.fromkeys(images)), questions


def collect_slides(path) -> list[str]:
    """The slide files the records of a data file name (resolved, in order, once each)."""
    path = Path(path)
    if path.is_dir() and not any(path.glob("*.tar")) and not (path / "captions.json").is_file():
        return []
    slides = []
    for record in iter_raw(path):
        value = None if record.data is None else first_field(record.data, SLIDE_KEYS, "slide", required=False,
                                                             skip_empty=True)
        try:
            slide = resolve_image(record.root, value) if value is not None else None
        except RecordError:
            continue
        if slide is not None and Path(slide).is_file():
            slides.append(slide)
    return list(dict.fromkeys(slides))


def _slides_by_hash(path, images: list[str]) -> dict[str, str]:
    """content hash -> a name, for every slide of ``path``: the slides its records name, and the slides its images
    are tiles (or thumbnails) of (corpora.slides.tiling.slide_of_image: a tile set's summary holds the hash)."""
    from corpora.slides.tiling import default_cache_root, slide_hash, slide_of_image

    found = {}
    for slide in collect_slides(path):
        found.setdefault(slide_hash(slide, default_cache_root()), slide)
    for image in images:
        if (digest := slide_of_image(image)) is not None:
            found.setdefault(digest, image)
    return found


def _slide_leaks(train, eval, train_images, eval_images) -> list[tuple[str, str]]:
    in_train = _slides_by_hash(train, train_images)
    return [(in_train[h], name) for h, name in _slides_by_hash(eval, eval_images).items() if h in in_train]


def _hashes(images: list[str], desc: str) -> tuple[list[str], np.ndarray]:
    exact, perceptual = [], []
    for image in tqdm(images, desc=desc, unit="img", disable=len(images) < 500):
        with Image.open(image) as im:
            exact.append(content_hash(im))
            perceptual.append(perceptual_hash(im))
    return exact, np.array(perceptual, dtype=np.uint64)


def find_leaks(train, eval, *, max_distance: int = 8, chunk: int = 1024) -> LeakReport:
    """Exact and near-duplicate images and repeated questions between `train` and `eval`."""
    train_images, train_questions = collect(train)
    eval_images, eval_questions = collect(eval)
    train_exact, train_phash = _hashes(train_images, "hashing train")
    eval_exact, eval_phash = _hashes(eval_images, "hashing eval")
    report = LeakReport()
    by_hash = {}
    for image, digest in zip(train_images, train_exact):
        by_hash.setdefault(digest, image)
    for image, digest in zip(eval_images, eval_exact):
        if digest in by_hash:
            report.exact.append((by_hash[digest], image))
    exact_pairs = {(t, e) for t, e in report.exact}
    # Hamming distances eval x train in chunks (popcount of XOR), so large sets stay within memory.
    for start in range(0, len(eval_images), chunk):
        distances = np.bitwise_count(eval_phash[start:start + chunk, None] ^ train_phash[None, :])
        for i, j in zip(*np.nonzero(distances <= max_distance)):
            pair = (train_images[j], eval_images[start + i])
            if pair not in exact_pairs:
                report.near.append((*pair, int(distances[i, j])))
    train_counts, eval_counts = Counter(train_questions), Counter(eval_questions)
    report.questions = sorted((q, train_counts[q], eval_counts[q]) for q in train_counts.keys() & eval_counts.keys())
    report.slides = _slide_leaks(train, eval, train_images, eval_images)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corpora.leakage", description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 1 when an image leaks from train into eval, else 0.")
    parser.add_argument("train", help="training data file or folder")
    parser.add_argument("eval", help="evaluation data file or folder")
    parser.add_argument("--max-distance", type=int, default=8, help="pHash Hamming distance counted as near-duplicate")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = find_leaks(args.train, args.eval, max_distance=args.max_distance)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        for train_image, eval_image in report.exact:
            print(f"exact: {eval_image} == {train_image}")
        for train_slide, eval_slide in report.slides:
            print(f"slide: {eval_slide} == {train_slide}")
        for train_image, eval_image, distance in report.near:
            print(f"near (distance {distance}): {eval_image} ~ {train_image}")
        for question, n_train, n_eval in report.questions:
            print(f"question in both ({n_train} train, {n_eval} eval): {question}")
        print(f"{len(report.exact)} exact and {len(report.near)} near-duplicate images, {len(report.slides)} slides, "
              f"{len(report.questions)} questions in both")
    return 1 if report.leaks else 0


if __name__ == "__main__":
    raise SystemExit(main())
