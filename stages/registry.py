"""Checkpoint registry shared by every stage, PathoCLIP and evaluation.

Layout under the root (``$PATHOR1_HOME``, default ``./runs``)::

    <stage>/LATEST                      "run/step-NNNNNNNN" of the newest checkpoint of the stage
    <stage>/<run>/LATEST                "step-NNNNNNNN", the highest step of the run
    <stage>/<run>/step-NNNNNNNN/        payload (HF save_pretrained folder, open_clip files, ...) + manifest.json
    <stage>/<run>/.tmp-step-...         a checkpoint being written: hidden, never listed or resolved

A checkpoint exists once its folder holds ``manifest.json``. Writers build everything in a hidden staging
folder, write the manifest last, fsync, ``os.rename`` the folder into place (atomic on one file system) and
only then move the ``LATEST`` pointers with ``os.replace``. A crash at any point leaves either nothing
visible or a complete checkpoint. Pointer updates, renames and pruning hold an ``fcntl.flock`` on
``<root>/.lock`` so concurrent writers cannot interleave them.

References: ``sft:latest`` (the newest FINISHED entry of the stage: a run interrupted at step 50 of 600 never
becomes it), ``sft:latest-any`` (the newest entry, finished or not), ``sft:<run>`` (its newest step),
``sft:<run>/<step>`` (``12`` or ``step-00000012``), an id ``sft/<run>/step-00000012``, or a folder path (with or
without a manifest, e.g. a base model). No torch here: the registry only moves folders and JSON around.

Every manifest says whether its run was finished when it was written (``finished``: the run's planned end, not a
mid-run checkpoint or an interrupted run; ``is_finished`` also reads manifests written before the field). Paths
inside the registry root are stored relative to it (``${PATHOR1_HOME}/base/...``) and read back absolute, so a
copied or moved home keeps its lineage; older manifests with absolute paths still read.

CLI: ``python -m stages.registry list [--json] [--stage S]`` and ``python -m stages.registry show REF``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import operator
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

from corpora.files import write_text_atomic
from stages.config import to_dict

__all__ = [
    "CheckpointWriter",
    "Registry",
    "RegistryError",
    "fingerprint_files",
    "home",
    "new_run_name",
]

MANIFEST = "manifest.json"
POINTER = "LATEST"
_STEP_RE = re.compile(r"^step-(\d+)$")
_STAGING_RE = re.compile(r"^\.tmp-step-\d+-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# A Hugging Face hub id: ``name`` or ``owner/name`` (no scheme, no ``:``, not a dot path).
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_VERSIONED = ["torch", "transformers", "trl", "peft", "datasets", "accelerate", "open_clip_torch"]


class RegistryError(LookupError):
    """A reference does not name a checkpoint, or a write/prune request is invalid."""


class HomeError(RegistryError):
    """``$PATHOR1_HOME`` (or an output folder) cannot be written."""


def check_writable(folder: Path | None = None) -> Path:
    """``folder`` (default ``home()``; created if missing) if a file can be written in it, else HomeError with the
    fix. Checked before any work, so nothing (an evaluation's answers, a trained step) is computed only to be lost."""
    import tempfile

    folder = Path(folder) if folder is not None else home()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        fix = ("set PATHOR1_HOME to a folder you can write, e.g. PATHOR1_HOME=$HOME/pathor1-runs"
               if folder == home() else "choose an output folder you can write")
        raise HomeError(f"{folder} is not writable ({e.strerror or e}): {fix}") from None
    return folder


HOME_MARK = "${PATHOR1_HOME}"


def _paths_relative(obj, root: Path):
    """``obj`` (JSON-like) with every string that is a path inside ``root`` written as ``${PATHOR1_HOME}/...``."""
    prefix = str(root) + os.sep
    if isinstance(obj, str):
        return HOME_MARK + os.sep + obj[len(prefix):] if obj.startswith(prefix) else (HOME_MARK if obj == str(root) else obj)
    if isinstance(obj, dict):
        return {k: _paths_relative(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_paths_relative(v, root) for v in obj]
    return obj


def _paths_absolute(obj, root: Path):
    """The inverse of ``_paths_relative`` for the registry at ``root`` (wherever the home now lies)."""
    if isinstance(obj, str):
        return str(root) + obj[len(HOME_MARK):] if obj.startswith(HOME_MARK) else obj
    if isinstance(obj, dict):
        return {k: _paths_absolute(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_paths_absolute(v, root) for v in obj]
    return obj


def read_manifest(entry: str | Path) -> dict | None:
    """The manifest of an entry folder with its ``${PATHOR1_HOME}/...`` paths made absolute for the registry the
    entry lies in (``<root>/<stage>/<run>/step-N``, wherever that root is now); None for a folder without one. Read
    manifests only through here (or ``Registry.manifest``), never as raw JSON."""
    entry = Path(entry)
    if not (entry / MANIFEST).is_file():
        return None
    data = _read_json(entry / MANIFEST)
    return None if data is None else _paths_absolute(data, entry.absolute().parent.parent.parent)


def is_finished(manifest: dict) -> bool:
    """Whether an entry is the planned end of its run: the one rule every stage, the launcher and ``:latest`` use.

    Manifests say it (``finished``); for those written before that field: a Trainer stage's recorded
    ``planned_steps``, RL's configured steps, PathoCLIP's last phase (b); an entry with no plan at all (written
    by hand, a tool) is complete as it is."""
    if "finished" in manifest:
        return bool(manifest["finished"])
    extra, config = manifest.get("extra") or {}, manifest.get("config") or {}
    if extra.get("planned_steps"):
        return manifest["step"] >= extra["planned_steps"]
    planned = config.get("max_steps") or config.get("steps")
    if manifest.get("stage") == "rl" and planned:
        return manifest["step"] >= planned
    if manifest.get("kind") == "open_clip" and "phase" in extra:
        return extra["phase"] == "b"
    return True


def home() -> Path:
    """The registry root: ``$PATHOR1_HOME`` or ``./runs``."""
    return Path(os.environ.get("PATHOR1_HOME") or "runs").expanduser().absolute()


# The $PATHOR1_HOME layout: every folder pathor1 writes under home() besides the registry is named here, once.
# (corpora may not import stages: it names only its own ``demo_corpora/`` under the home it is given.)
def logs_dir(stage: str | None = None, run: str | None = None, root: Path | None = None) -> Path:
    """TensorBoard and trainer logs of one run: ``logs/<stage>/<run>`` (``logs`` itself without them)."""
    parts = [str(p) for p in (stage, run) if p is not None]
    return (root or home()).joinpath("logs", *parts)


def reports_dir(*parts: str, root: Path | None = None) -> Path:
    """Evaluations, tables, matrices and recipe reports: ``reports/...``."""
    return (root or home()).joinpath("reports", *parts)


def cache_dir(name: str) -> Path:
    """Caches that can be rebuilt (e.g. benchmark images decoded from parquet): ``cache/<name>``."""
    return home() / "cache" / name


def data_dir(*parts: str) -> Path:
    """Where public benchmark data is looked for by default: ``data/...``."""
    return home().joinpath("data", *parts)


def base_dir(name: str) -> Path:
    """Base models built locally (the tiny presets): ``base/<name>``."""
    return home() / "base" / name


_ISSUED_RUN_NAMES: set[str] = set()


def new_run_name(stage: str) -> str:
    """A fresh run name, sortable by time: ``sft-20250101-120000-3fa2c01b``.

    Never repeated within a process; across processes 32 random bits make a clash within the same second
    negligible (a 16-bit suffix collided in CI: 50 names in one second clash ~2 % of the time).
    """
    while True:
        name = f"{stage}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        if name not in _ISSUED_RUN_NAMES:
            _ISSUED_RUN_NAMES.add(name)
            return name


def is_hub_id(ref: str) -> bool:
    """``owner/name`` or ``name`` as the hub spells them: not a registry ref (``sft:latest``), id or dot path."""
    return bool(_HUB_ID_RE.match(ref)) and ".." not in ref


@dataclasses.dataclass(frozen=True)
class Ref:
    """A parsed registry reference ``stage:run/step``: run and step are "" when left out (= the newest)."""

    stage: str
    run: str = ""
    step: str = ""
    unfinished: bool = False  # ``stage:latest-any``: the newest entry even if its run is not finished


def parse_ref(text) -> Ref | None:
    """``sft:latest`` / ``sft:RUN`` / ``sft:RUN/STEP`` as a Ref; None for anything else (a folder, an id
    ``sft/RUN/step-N``, a hub id, a ``tiny:`` preset). The one parser of the ``stage:run/step`` syntax."""
    text = str(text)
    stage, colon, rest = text.partition(":")
    if not colon or not stage or stage == "tiny" or "/" in stage:
        return None
    run, _, step = rest.partition("/")
    if run == "latest-any":
        return Ref(stage, unfinished=True)
    return Ref(stage, "" if run == "latest" else run, "" if step in ("latest", "latest-any") else step)


def step_dir(step: int) -> str:
    return f"step-{int(step):08d}"


def fingerprint_files(paths) -> str:
    """``sha256:<hex>`` over the names, sizes and contents of files (folders are walked, sorted).

    Names are taken relative to each given path, so the same data copied elsewhere has the same print.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    digest = hashlib.sha256()
    for given in paths:
        given = Path(given)
        if not given.exists():
            raise FileNotFoundError(f"cannot fingerprint {given}: no such file or folder")
        files = sorted(p for p in given.rglob("*") if p.is_file()) if given.is_dir() else [given]
        for f in files:
            name = f.relative_to(given).as_posix() if given.is_dir() else f.name
            digest.update(f"{name}\0{f.stat().st_size}\0".encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def library_versions() -> dict:
    """Versions of the libraries a checkpoint depends on, read from package metadata (nothing imported)."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the pathor1 source tree, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _fsync_tree(folder: Path) -> None:
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        warnings.warn(f"skipping unreadable manifest {path}: {e}", stacklevel=3)
        return None


def _visible_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _stale_staging(run_dir: Path) -> list[Path]:
    """Staging folders left by writers on this host that are no longer running (killed mid-write), plus
    half-deleted folders of an interrupted prune."""
    stale = []
    for p in run_dir.glob(".*"):
        match = _STAGING_RE.match(p.name)
        if p.name.startswith(".del-step-"):
            stale.append(p)
        elif match and match["host"] == socket.gethostname() and not _alive(int(match["pid"])):
            stale.append(p)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class CheckpointWriter:
    """Context manager returned by ``Registry.writer``: write the payload into ``w.path``, fill ``w.metrics``
    and ``w.extra``; on a clean exit the checkpoint appears atomically and ``w.path`` is its final folder."""

    def __init__(self, registry: Registry, stage, run, step, parent, config, data, kind):
        for what, name in (("stage", stage), ("run", run)):
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise RegistryError(f"invalid {what} name {name!r}: use letters, digits, '_', '-', '.', '+'")
        try:
            step = operator.index(step)  # ints, numpy ints; not floats or strings
        except TypeError:
            step = -1
        if step < 0:
            raise RegistryError(f"step must be a non-negative int, got {step!r}")
        self.registry, self.stage, self.run, self.step, self.kind = registry, stage, run, step, kind
        self.final = registry.root / stage / run / step_dir(step)
        self.parent = registry._parent_record(parent)
        self.config = to_dict(config) if dataclasses.is_dataclass(config) else dict(config or {})
        self.data_fingerprint = data if isinstance(data, str) and data.startswith("sha256:") else (
            fingerprint_files(data) if data is not None else None)
        self.metrics: dict = {}
        self.extra: dict = {}
        self.finished = True  # set False for a mid-run checkpoint (see is_finished)
        self.path: Path | None = None

    @property
    def ref(self) -> str:
        return f"{self.stage}/{self.run}/{step_dir(self.step)}"

    def __enter__(self) -> CheckpointWriter:
        if self.final.exists():
            raise RegistryError(f"checkpoint {self.ref} already exists at {self.final}")
        run_dir = self.final.parent
        run_dir.mkdir(parents=True, exist_ok=True)
        # Host and pid in the name let prune() recognise folders of writers that died (see _stale_staging).
        name = f".tmp-{step_dir(self.step)}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = run_dir / name
        self.path.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return False
        try:
            self._commit()
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        return False

    def manifest(self) -> dict:
        return _paths_relative({
            "stage": self.stage, "run": self.run, "step": self.step, "finished": bool(self.finished),
            "parent": self.parent, "config": self.config, "data_fingerprint": self.data_fingerprint,
            "metrics": self.metrics, "versions": library_versions(), "git_commit": git_commit(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kind": self.kind,
            "extra": self.extra,
        }, self.registry.root)

    def _commit(self) -> None:
        _fsync_tree(self.path)
        # The manifest is what makes a folder a checkpoint, so it is written after everything else.
        write_text_atomic(self.path / MANIFEST, json.dumps(self.manifest(), indent=2, default=str) + "\n",
                          durable=True)
        _fsync_dir(self.path)
        with self.registry._lock():
            if self.final.exists():
                raise RegistryError(f"checkpoint {self.ref} was written by another process meanwhile")
            os.rename(self.path, self.final)
            _fsync_dir(self.final.parent)
            self.path = self.final
            self.registry._advance_pointers(self.stage, self.run, self.step)


class Registry:
    """Checkpoints under ``root`` (default ``home()``); see the module docstring for layout and refs."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser().absolute() if root is not None else home()

    # ------------------------------------------------------------------------------------------ writing

    def writer(self, stage: str, run: str, step: int, *, parent=None, config=None, data=None,
               kind: str = "hf-vlm") -> CheckpointWriter:
        """A new checkpoint ``stage/run/step-N``. ``parent``: a ref or folder (a hub id is kept verbatim);
        ``config``: dataclass or dict; ``data``: files/folders trained on (fingerprinted) or a fingerprint."""
        return CheckpointWriter(self, stage, run, step, parent, config, data, kind)

    @contextlib.contextmanager
    def _lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _advance_pointers(self, stage: str, run: str, step: int) -> None:
        # Called under the lock. A run's pointer only moves forward (resume wants its highest step even if a
        # slower writer of an earlier step finishes last); the stage pointer names the newest step of the run
        # written last.
        run_dir = self.root / stage / run
        current = self._pointed(run_dir)
        if current is None or int(current.name[5:]) <= step:
            current = run_dir / step_dir(step)
            write_text_atomic(run_dir / POINTER, current.name + "\n", durable=True)
        write_text_atomic(self.root / stage / POINTER, f"{run}/{current.name}\n", durable=True)

    def _parent_record(self, parent) -> str | None:
        """How a manifest names its parent: a registry id when it is an entry, else an absolute folder path,
        else the string as given (a hub id such as ``Qwen/Qwen2-VL-2B-Instruct`` or ``tiny:qwen2_vl``)."""
        if parent is None:
            return None
        try:
            path = self.resolve(parent)
        except RegistryError:
            ref = parse_ref(parent)
            if ref is not None and (self.root / ref.stage).is_dir():
                raise  # looks like one of our refs (the stage exists) but names nothing: a typo, not a hub id
            return str(parent)
        return self._id_of(path) or str(path)

    # ------------------------------------------------------------------------------------------ reading

    def _id_of(self, path: Path) -> str | None:
        try:
            rel = path.resolve().relative_to(self.root.resolve())
        except ValueError:
            return None
        parts = rel.parts
        if len(parts) == 3 and _STEP_RE.match(parts[2]) and (path / MANIFEST).is_file():
            return "/".join(parts)
        return None

    def _load(self, manifest_file: Path) -> dict | None:
        return read_manifest(manifest_file.parent)

    def _pointed(self, folder: Path) -> Path | None:
        """The checkpoint a LATEST file in ``folder`` names, if it still exists."""
        try:
            target = (folder / POINTER).read_text().strip()
        except OSError:
            return None
        path = folder / target
        return path if target and (path / MANIFEST).is_file() else None

    def _steps(self, stage: str, run: str) -> list[Path]:
        found = [p for p in _visible_dirs(self.root / stage / run) if _STEP_RE.match(p.name)]
        return sorted((p for p in found if (p / MANIFEST).is_file()), key=lambda p: int(p.name[5:]))

    def _runs(self, stage: str) -> list[str]:
        return [p.name for p in _visible_dirs(self.root / stage) if self._steps(stage, p.name)]

    def stages(self) -> list[str]:
        return [p.name for p in _visible_dirs(self.root) if self._runs(p.name)]

    def latest(self, stage: str, run: str | None = None) -> Path | None:
        """The newest checkpoint of a run (highest step) or of a stage (last written), or None."""
        if run is not None:
            pointed = self._pointed(self.root / stage / run)
            steps = self._steps(stage, run)
            if pointed is not None and (not steps or pointed == steps[-1]):
                return pointed
            return steps[-1] if steps else None  # pointer missing or stale (e.g. pruned): trust the folders
        pointed = self._pointed(self.root / stage)
        if pointed is not None:
            return pointed
        newest = [self._steps(stage, r)[-1] for r in self._runs(stage)]
        return max(newest, key=self._by_time, default=None)

    def _by_time(self, path: Path):
        # `created` has 1 s resolution: the manifest's own write time orders entries of the same second
        mtime = (path / MANIFEST).stat().st_mtime_ns
        return (self._load(path / MANIFEST) or {}).get("created", ""), mtime, int(path.name[5:])

    def latest_finished(self, stage: str, run: str | None = None) -> Path | None:
        """The newest entry whose run was finished when written (``is_finished``), of a run or of a stage."""
        finished = lambda p: is_finished(self._load(p / MANIFEST) or {})  # noqa: E731
        if run is not None:
            return next((p for p in reversed(self._steps(stage, run)) if finished(p)), None)
        pointed = self._pointed(self.root / stage)  # the entry written last, when it is finished
        if pointed is not None and finished(pointed):
            return pointed
        done = [p for r in self._runs(stage) for p in self._steps(stage, r) if finished(p)]
        return max(done, key=self._by_time, default=None)

    def resolve(self, ref) -> Path:
        """The folder a reference names (see the module docstring). Raises RegistryError."""
        text = str(ref)
        as_path = Path(text).expanduser()
        if as_path.is_dir():
            return as_path.absolute()
        if parse_ref(text) is not None:
            return self._resolve_ref(text)
        by_id = self.root / text
        if len(Path(text).parts) == 3 and (by_id / MANIFEST).is_file():
            return by_id
        raise RegistryError(
            f"no checkpoint or folder {text!r} (refs look like sft:latest, sft:RUN, sft:RUN/STEP, "
            f"sft/RUN/step-N or a folder path; registry {self.root}, stages present: {self._present()})"
        )

    def resolve_model(self, ref) -> str:
        """Any model reference, the one resolver every stage, recipe and evaluation uses: a folder or registry
        ref -> its folder; a hub id (``Qwen/Qwen2.5-VL-7B-Instruct``) that names neither -> the id unchanged, for
        the Auto classes to load from the hub cache. (``tiny:`` presets are built by ``stages.model``.)"""
        try:
            return str(self.resolve(ref))
        except RegistryError:
            if is_hub_id(str(ref)):
                return str(ref)
            raise

    def _present(self) -> str:
        return ", ".join(self.stages()) or "none"

    def _resolve_ref(self, ref: str) -> Path:
        parsed = parse_ref(ref)
        stage, run, step = parsed.stage, parsed.run, parsed.step
        if not self._runs(stage):
            raise RegistryError(f"no checkpoint for {ref!r} in {self.root} (stages present: {self._present()})")
        if run == "" and parsed.unfinished:
            return self.latest(stage)
        if run == "":
            done = self.latest_finished(stage)
            if done is None:
                newest = self._id_of(self.latest(stage))
                raise RegistryError(f"no finished {stage} run for {ref!r} in {self.root}: the newest, {newest}, "
                                    f"was interrupted; continue it (same command, resume=auto) or use "
                                    f"{stage}:latest-any to take it as it is")
            return done
        if not self._steps(stage, run):
            raise RegistryError(f"no run {run!r} for {ref!r} in {self.root / stage} "
                                f"(runs present: {', '.join(self._runs(stage))})")
        if step == "":
            return self.latest(stage, run)
        match = re.fullmatch(r"(?:step-)?(\d+)", step)
        path = self.root / stage / run / step_dir(int(match.group(1))) if match else None
        if path is None or not (path / MANIFEST).is_file():
            have = ", ".join(p.name for p in self._steps(stage, run))
            raise RegistryError(f"no step {step!r} for {ref!r} in {self.root / stage / run} (steps present: {have})")
        return path

    def manifest(self, ref) -> dict:
        path = self.resolve(ref)
        if not (path / MANIFEST).is_file():
            raise RegistryError(f"{path} has no {MANIFEST}: a plain folder, not a registry checkpoint")
        data = self._load(path / MANIFEST)
        if data is None:
            raise RegistryError(f"{path / MANIFEST} is not valid JSON")
        return data

    def entries(self, stage: str | None = None) -> list[dict]:
        """Every complete checkpoint (manifest + ``ref`` + ``path``), sorted by stage, run, step."""
        out = []
        for st in [stage] if stage else self.stages():
            for run in self._runs(st):
                for path in self._steps(st, run):
                    data = self._load(path / MANIFEST)
                    if data is not None:
                        out.append({**data, "ref": f"{st}/{run}/{path.name}", "path": str(path)})
        return out

    def lineage(self, ref) -> list[dict]:
        """The checkpoint and its ancestors, newest first. A parent without a manifest (a base model folder,
        a hub id) ends the chain as ``{"ref": None, "path": ..., "base": ...}``."""
        chain, seen = [], set()
        path = self.resolve(ref)  # the head must exist; only ancestors may be outside the registry
        while True:
            if path.resolve() in seen:
                break
            seen.add(path.resolve())
            if not (path / MANIFEST).is_file():
                chain.append({"ref": None, "path": str(path), "base": str(path)})
                break
            data = self.manifest(path)
            chain.append({**data, "ref": self._id_of(path) or str(path), "path": str(path)})
            parent = data.get("parent")
            if parent is None:
                break
            try:
                path = self.resolve(parent)
            except RegistryError:  # a hub id, or an entry / folder that is gone
                gone = len(Path(parent).parts) == 3 and _STEP_RE.match(Path(parent).name) or Path(parent).is_absolute()
                chain.append({"ref": None, "path": None, "base": parent, "missing": bool(gone)})
                break
        return chain

    # ------------------------------------------------------------------------------------------ pruning

    def prune(self, stage: str, run: str, keep_last: int) -> list[Path]:
        """Delete all but the newest ``keep_last`` steps of a run, except any step that some manifest in the
        registry names as its parent. Also removes staging folders of writers that died. Returns the deleted
        checkpoint folders."""
        if keep_last < 1:
            raise RegistryError(f"keep_last must be >= 1, got {keep_last}")
        with self._lock():
            for leftover in _stale_staging(self.root / stage / run):
                shutil.rmtree(leftover, ignore_errors=True)
            protected = {self._parent_path(e.get("parent")) for e in self.entries()}
            doomed = [p for p in self._steps(stage, run)[:-keep_last] if p.resolve() not in protected]
            for path in doomed:
                # Hide it first (one atomic rename) so nobody resolves a half-deleted checkpoint.
                hidden = path.parent / f".del-{path.name}-{uuid.uuid4().hex[:8]}"
                os.rename(path, hidden)
                shutil.rmtree(hidden, ignore_errors=True)
        return doomed

    def _parent_path(self, parent: str | None) -> Path | None:
        if not parent:
            return None
        for candidate in (self.root / parent, Path(parent)):
            if candidate.is_dir():
                return candidate.resolve()
        return None


# ---------------------------------------------------------------------------------------------------- CLI


def lineage_text(chain: list[dict]) -> str:
    """``rl/r/step-00000010 <- sft/r/step-00000004 <- base:/models/qwen``."""
    return " <- ".join(c["ref"] if c.get("ref") else f"{'missing' if c.get('missing') else 'base'}:{c['base']}"
                       for c in chain)


# The one metric `registry list` shows per entry: the first of these it has (curves and tables stay in `show`).
SUMMARY_METRICS = ("eval_loss", "train_loss", "reward", "zeroshot_accuracy", "loss_final", "accuracy")


def summary_metric(metrics: dict) -> str:
    for name in SUMMARY_METRICS:
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{name}={value:.4g}"
    return "-"


def _summary(entry: dict, interrupted: bool) -> str:
    state = "finished" if is_finished(entry) else ("INTERRUPTED" if interrupted else "mid-run")
    return (f"{entry['ref']:<44} {state:<11} {entry.get('kind', '?'):<9} {entry.get('created', '?'):<26} "
            f"{summary_metric(entry.get('metrics') or {})}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.registry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="registry folder (default: $PATHOR1_HOME or ./runs)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list every checkpoint with its lineage")
    p_list.add_argument("--stage", help="only this stage")
    p_list.add_argument("--json", action="store_true", help="print a JSON list of manifests")
    p_show = sub.add_parser("show", help="show one checkpoint: lineage and manifest")
    p_show.add_argument("ref", help="sft:latest, sft:RUN, sft:RUN/STEP, sft/RUN/step-N or a folder")
    p_show.add_argument("--json", action="store_true", help="print the manifest and lineage as JSON")
    args = parser.parse_args(argv)
    reg = Registry(args.root)
    try:
        if args.command == "list":
            entries = reg.entries(args.stage)
            for e in entries:
                e["lineage"] = lineage_text(reg.lineage(e["path"]))
            if args.json:
                print(json.dumps([{**e, "finished": is_finished(e)} for e in entries], indent=2))
            elif not entries:
                print(f"no checkpoints in {reg.root}")
            else:
                newest = {(e["stage"], e["run"]): e["step"] for e in entries}  # entries are sorted by step
                print(f"{'REF':<44} {'STATE':<11} {'KIND':<9} {'CREATED':<26} METRIC")
                for e in entries:
                    interrupted = newest[(e["stage"], e["run"])] == e["step"]  # the run's newest is not its end
                    print(_summary(e, interrupted) + f"\n    lineage: {e['lineage']}")
                if any(not is_finished(e) and newest[(e["stage"], e["run"])] == e["step"] for e in entries):
                    print("INTERRUPTED: the run stopped before its planned end; the same command (resume=auto) "
                          "continues it, and <stage>:latest skips it")
        else:
            chain = reg.lineage(args.ref)
            if chain[0].get("ref") is None:
                raise RegistryError(f"{args.ref} is not a registry checkpoint (no {MANIFEST} in {chain[0]['path']})")
            if args.json:
                print(json.dumps({**chain[0], "lineage": [c["ref"] or c["base"] for c in chain]}, indent=2))
            else:
                head = chain[0]
                print(f"{head['ref']}  ({head['path']})\nlineage: {lineage_text(chain)}")
                for key in ("kind", "created", "git_commit", "data_fingerprint", "metrics", "versions", "extra",
                            "config"):
                    print(f"{key}: {json.dumps(head.get(key))}")
    except RegistryError as e:
        print(f"python -m stages.registry: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `list --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit must not fail
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
