"""What a score was measured on and how, so two scores can be compared (or refused as incomparable).

``settings(...)`` is the block every ``metrics.json`` carries: the suite data's fingerprint, the hash of the
ids evaluated, template, decoding, dtype, batch size, backend, ranks, judge and library versions.
``manifest.json`` (written next to every evaluation) lists the ids and the SHA-256 of each image; passing it back
with ``--manifest`` evaluates exactly those questions and refuses data whose images differ, so two labs can
check they measured the same thing.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

QUESTION_FILE_SUFFIXES = {".json", ".jsonl", ".csv", ".tsv", ".parquet"}


class ManifestError(ValueError):
    """A --manifest that does not match the suite data; the message names the manifest and the id."""


def data_fingerprint(path: Path) -> str:
    """``sha256:…`` of the question file, or of the question files in a folder (images are covered by the
    manifest's per-image hashes; hashing a folder of 100k images on every run would dwarf small evaluations)."""
    from stages.registry import fingerprint_files

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in QUESTION_FILE_SUFFIXES)
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f.relative_to(path).as_posix()}\0{fingerprint_files(f)}\0".encode())
        return "sha256:" + digest.hexdigest()
    return fingerprint_files(path)


def ids_hash(ids: list[str]) -> str:
    return "sha256:" + hashlib.sha256("\n".join(ids).encode()).hexdigest()


def image_hash(path: str) -> str:
    """SHA-256 of an image file's bytes (cached while the file's size and mtime stay the same)."""
    st = Path(path).stat()
    return _image_hash(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=65536)
def _image_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions(backend: str = "hf") -> dict:
    from stages.registry import git_commit, library_versions as versions

    out = {**versions(), "pathor1_commit": git_commit()}
    if backend == "vllm":
        import importlib.metadata

        out["vllm"] = importlib.metadata.version("vllm")
    return out


def manifest(suite: str, records: list[dict]) -> dict:
    return {"suite": suite, "n": len(records), "ids_sha256": ids_hash([r["id"] for r in records]),
            "questions": [{"id": r["id"], "images": [image_hash(p) for p in r["images"]]} for r in records]}


def apply_manifest(records: list[dict], manifest_file: str | Path) -> list[dict]:
    """The records named by ``manifest_file``, in its order; every image must hash as recorded."""
    manifest_file = Path(manifest_file)
    try:
        wanted = json.loads(manifest_file.read_text())["questions"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ManifestError(f"{manifest_file}: not a pathor1 evaluation manifest ({e})") from None
    by_id = {r["id"]: r for r in records}
    out = []
    for i, q in enumerate(wanted):
        rec = by_id.get(q.get("id"))
        if rec is None:
            raise ManifestError(f"{manifest_file}: questions[{i}]: id {q.get('id')!r} is not in the suite data")
        got = [image_hash(p) for p in rec["images"]]
        if got != q.get("images"):
            raise ManifestError(f"{manifest_file}: questions[{i}]: the images of id {rec['id']!r} differ from the "
                                f"manifest ({len(got)} image(s) here, hashes {[h[:12] for h in got]})")
        out.append(rec)
    return out
