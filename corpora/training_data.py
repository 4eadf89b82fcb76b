"""Resolving and checking the data a training stage reads: a user's path or the demo corpus, validated before
any model loads, and split by image for an eval loss. Moved here from stages/engine.py so every stage
(pretrain, SFT, RL) gets its data from corpora without importing the supervised trainer."""
from __future__ import annotations

import random
from pathlib import Path

from corpora.demo import demo_corpus
from corpora.records import DataError
from corpora.validate import validate


def data_file(data: str, default_name: str, home) -> Path:
    """Empty -> ``default_name`` of the demo corpus under ``home`` (corpora.demo.demo_corpus, default sizes); a
    folder holding ``default_name`` -> that file; else ``data`` as given (a file, or a folder the corpora readers
    understand, e.g. WebDataset shards)."""
    path = Path(data) if data else demo_corpus(home).root
    if path.is_dir() and (path / default_name).is_file():
        path = path / default_name
    if not path.exists():
        raise FileNotFoundError(f"training data not found: {path}")
    return path


def check_data(path: Path, kind: str, policy: str, template: str, slides=None) -> set[tuple[str, int]]:
    """Fail before any model is loaded if the data has problems (file:line: code: message).

    Returns the ``(file, line)`` records to leave out: none under ``strict`` (any problem refuses the data),
    the bad ones under ``lenient`` (pass them to the reader's ``skip=``), none under ``skip``."""
    if policy == "skip":
        return set()
    report = validate(path, kind, policy=policy, template=template, slides=slides)
    report.raise_if_errors()
    if report.bad_records:
        print(f"{report.summary()}\n" + "\n".join(str(p) for p in report.problems[:20]))
    return report.bad_locations


def split_by_image(rows, fraction: float, seed: int):
    """(train, eval) with ``fraction`` of the distinct images held out, so no image is in both.

    Images are grouped before the draw: every image of one record goes with it, and every tile (and the thumbnail)
    of one slide counts as that slide (corpora.slides.tiling.slide_of_image: the slide's content hash), so two
    records naming the same slide -- under any name, with other tiles chosen -- never fall on both sides."""
    if fraction <= 0:
        return rows, None
    groups = _image_groups(rows["images"])
    keys = sorted(set(groups))
    random.Random(seed).shuffle(keys)
    held = set(keys[: max(1, round(fraction * len(keys)))])
    is_eval = [g in held for g in groups]
    train = rows.select([i for i, e in enumerate(is_eval) if not e])
    evaluation = rows.select([i for i, e in enumerate(is_eval) if e])
    if len(train) == 0:  # a DataError: the CLIs' one line and exit 2, not a traceback
        raise DataError(f"eval_fraction={fraction} holds out all {len(keys)} image groups (records sharing an image "
                        "or a slide), leaving no training samples; lower eval_fraction or add data")
    return train, evaluation


def _image_groups(images_per_row) -> list[str]:
    """One group name per row: records sharing an image or a slide share a group (union-find over their keys);
    the name is the group's smallest key, so plain one-image records keep their image path as before."""
    from corpora.slides.tiling import slide_of_image

    parent: dict[str, str] = {}

    def find(key):
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    known: dict[str, str] = {}  # QA files ask many questions about one image: look each up once

    def key_of(image):
        if image not in known:
            known[image] = f"slide:{sha}" if (sha := slide_of_image(image)) else image
        return known[image]

    row_keys = []
    for images in images_per_row:
        keys = [key_of(i) for i in images] or [""]
        for other in keys[1:]:
            a, b = sorted((find(keys[0]), find(other)))
            parent[b] = a  # the smaller key names the merged group
        row_keys.append(keys[0])
    return [find(k) for k in row_keys]
