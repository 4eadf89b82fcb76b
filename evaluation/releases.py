"""What every benchmark reader needs to read a public release as it is downloaded (the layout; its files and records
are ``evaluation.reading``).

* ``SuiteError``: bad benchmark data or an unknown suite, one line naming the file and record.
* ``Skips``: what a reader left out and why (other splits, helper files, other subjects, restricted items),
  counted per reason; ``evaluation.run`` logs it and records it in ``metrics.json["settings"]``.
* ``choose_split``: the one split to read (the papers' default, ``--split NAME`` or ``all``), refusing a split
  the release does not have with the list of those it has.
* ``extract_once``: a release archive (``images.zip``, ``quilt_vqa.zip``, ``imgs.zip``) unpacked once into
  ``$PATHOR1_HOME/cache/archives`` (keyed by path, size and mtime; a marker written last, so an interrupted
  extraction is redone, never half-used).
* ``shard_split``: the split of a Hugging Face data file (``data/test-00000-of-00002.parquet`` -> ``test``).
* ``image_folder``: a release's image folder as released, else the folder its archive unpacks to.
* ``check_unique_ids``: refuses two records with one id (ids key manifests, paired comparisons, the browser).
"""
from __future__ import annotations

import hashlib
import logging
import re
import zipfile
from collections import Counter
from pathlib import Path

log = logging.getLogger("evaluation")

# HF data files: <split>-00000-of-00002.parquet, older uploads add a content hash: <split>-00000-of-00001-<hex>.parquet
_SHARD = re.compile(r"^(?P<split>[A-Za-z_]+?)(?:[-_]\d{5}-of-\d{5}(?:-[0-9a-f]{8,})?)?$")


class SuiteError(ValueError):
    """Bad benchmark data or an unknown suite; the message names the file and record."""


class Skips:
    """Counts of records a reader did not evaluate, by reason (``"split 'train' (not 'test')"``)."""

    def __init__(self):
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self.counts[reason] += n

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def log(self, suite: str, path: Path) -> None:
        for reason, n in sorted(self.counts.items()):
            log.info("%s: skipped %d record%s of %s: %s", suite, n, "" if n == 1 else "s", path, reason)


def choose_split(available, split: str | None, default: str, where: str, *, refused: dict[str, str] | None = None,
                 strict: bool = False):
    """The splits to read: ``[default]``, ``[split]`` or every available one for ``"all"`` (minus ``refused``,
    e.g. MMMU test whose answers are withheld). Unknown or refused splits raise ``SuiteError``. A release (or the
    one file given) with a single split is read whatever its name, unless ``strict`` (VQA-RAD: a file without
    test questions is more likely a mistake than a choice)."""
    available = list(dict.fromkeys(available))
    refused = refused or {}
    wanted = split or default
    if split is None and not strict and default not in available and len(available) == 1:
        wanted = available[0]  # a release (or the one file given) with a single split: that split
    if wanted in refused:
        raise SuiteError(f"{where}: expected a split with answers, found split {wanted!r}: {refused[wanted]}")
    if wanted == "all":
        return [s for s in available if s not in refused]
    if wanted not in available:
        raise SuiteError(f"{where}: expected split {wanted!r}, found only {', '.join(map(repr, available)) or 'none'}; "
                         f"fix: --split one of {', '.join(s for s in available if s not in refused) or '-'} or all")
    return [wanted]


def shard_split(path: Path) -> str:
    """``test-00000-of-00001.parquet`` and ``test-00000-of-00001-eb8844602202be60.parquet`` -> ``test``;
    ``validation.jsonl`` -> ``validation``."""
    stem = path.name.split(".")[0]
    m = _SHARD.match(stem)
    return m.group("split") if m else stem


def archive_cache_dir() -> Path:
    from stages import registry

    return registry.cache_dir("archives")


def extract_once(archive: Path) -> Path:
    """The folder ``archive`` (a zip) is unpacked into, unpacking it the first time. Member paths that would
    leave the folder (``../``, absolute) are refused: a release archive is data, not a place to write from."""
    st = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = archive_cache_dir() / f"{archive.stem}-{key}"
    done = target / ".extracted"
    if done.is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                dest = (target / member).resolve()
                if not dest.is_relative_to(target.resolve()):
                    raise SuiteError(f"{archive}: expected archive members inside the archive, found {member!r}; "
                                     "fix: unpack it yourself and pass the folder")
            log.info("extracting %s into %s (once)", archive, target)
            zf.extractall(target)
    except zipfile.BadZipFile as e:
        raise SuiteError(f"{archive}: expected a zip archive, found {e}; fix: download it again") from None
    done.write_text(str(archive))
    return target


def check_unique_ids(records: list[dict], where: str) -> None:
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r["id"] in seen:
            raise SuiteError(f"{where}: expected unique question ids, found {r['id']!r} at records {seen[r['id']]} "
                             f"and {i}; fix: give each question its own id")
        seen[r["id"]] = i


def image_folder(root: Path, name: str, archive: str, *, required: bool = True) -> Path | None:
    """``root/name`` as released, else the folder ``root/archive`` unpacks to (once, into the cache); the
    archive may hold ``name/`` or the images at its top. Neither: an error, or None when not ``required``."""
    if (root / name).is_dir():
        return root / name
    if (root / archive).is_file():
        unpacked = extract_once(root / archive)
        return unpacked / name if (unpacked / name).is_dir() else unpacked
    if not required:
        return None
    raise SuiteError(f"{root}: expected the image folder {name}/ or {archive}, found neither; "
                     f"fix: download {archive} from the release into {root}")
