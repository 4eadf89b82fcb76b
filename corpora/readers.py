"""Readers: any supported source -> an HF `datasets.Dataset` with the sample schema (Arrow-cached,
keyed by the data's fingerprint), or an `IterableDataset` with `streaming=True`; and a writer that
turns a dataset into WebDataset shards (open_clip_train's input format).

A record that cannot be read raises `DataError` naming `file:line`; run `corpora.validate` first for
a full report of every problem at once.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from corpora.records import NORMALIZERS, DataError, RecordError, canonical_kind
from corpora.sources import fingerprint, iter_raw


def features(kind: str):
    """The Arrow schema of `kind`. `datasets` is imported here, not at module level: readers that only
    stream records (`iter_samples`, pathoclip's CSV) should not pay ~1 s of import for it."""
    import datasets

    string = datasets.Value("string")
    strings = datasets.List(string)
    return datasets.Features({
        "pairs": {"id": string, "images": strings, "caption": string, "label": string},
        "sft": {"id": string, "images": strings, "messages": datasets.List({"role": string, "content": string}),
                "trace": string},  # a tool-calling trace as JSON (corpora.traces), "" for a plain chat
        "qa": {"id": string, "images": strings, "question": string, "options": strings, "answer": string,
               "kind": string, "solution": string, "subset": string, "reasoning": string},
    }[kind])


def iter_samples(path, kind: str, template: str = "cot", root=None, skip=(), slides=None):
    """Normalised samples of `kind` from `path`, in file order; the first bad record raises DataError.
    `slides` (corpora.slides.SlideSampling): how records naming a `slide` become images (None: its defaults).

    `skip` holds `(file, line)` locations to leave out: the bad records a lenient validation reported
    (`corpora.validate.Report.bad_locations`), so training reads only the records validation accepted."""
    kind = canonical_kind(kind)
    extra = {"template": template, "slides": slides} if kind == "sft" else {"slides": slides}
    skip = {(str(f), int(n)) for f, n in skip}
    for record in iter_raw(path, root):
        if (str(record.file), record.line) in skip:
            continue
        where = f"{record.file}:{record.line}"
        if record.error is not None:
            raise DataError(f"{where}: {record.error.code}: {record.error.message}")
        try:
            yield NORMALIZERS[kind](record.data, record.root, f"{Path(record.file).stem}-{record.line}", **extra)
        except RecordError as e:
            raise DataError(f"{where}: {e.code}: {e.message}") from None


def _generate(path: str, kind: str, template: str, root: str | None, data_fingerprint: str, skip=(), slides=None):
    # `data_fingerprint` is unused here but part of the generator kwargs, so the Arrow cache is keyed
    # by the data's content stamp and a changed file is read again (`skip` and the slide sampling are part of
    # the key too: other tiles are other samples).
    from corpora.slides.sampling import SlideSampling

    yield from iter_samples(path, kind, template, root, skip, SlideSampling(**slides) if slides else None)


def load(path, kind: str, *, streaming: bool = False, template: str = "cot", root=None, skip=(), slides=None):
    """Samples of `kind` (pairs, sft, qa; rl and eval are qa) from `path` as a datasets object.

    Relative image paths resolve against `root` (default: the data file's folder, or the nearest
    ancestor holding a `demo.json` / `.dataset-root` marker) and may not escape it."""
    import datasets

    kind = canonical_kind(kind)
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path}")
    kwargs = {"path": str(path), "kind": kind, "template": template,
              "root": None if root is None else str(Path(root).resolve()), "data_fingerprint": fingerprint(path),
              "skip": sorted((str(f), int(n)) for f, n in skip), "slides": slides.to_dict() if slides else None}
    if streaming:
        return datasets.IterableDataset.from_generator(_generate, features=features(kind), gen_kwargs=kwargs)
    try:
        return datasets.Dataset.from_generator(_generate, features=features(kind), gen_kwargs=kwargs)
    except datasets.exceptions.DatasetGenerationError as e:
        # datasets wraps whatever the generator raised; callers want our file:line message, not the wrapper
        if isinstance(e.__cause__, (DataError, FileNotFoundError, ValueError)):
            raise e.__cause__ from None
        raise


def load_pairs(path, *, streaming: bool = False, root=None, skip=(), slides=None):
    """Image-caption pairs: id, images, caption, label."""
    return load(path, "pairs", streaming=streaming, root=root, skip=skip, slides=slides)


def load_sft(path, *, template: str = "cot", streaming: bool = False, root=None, skip=(), slides=None):
    """Chat samples: id, images, messages; QA records are rendered through prompt `template`."""
    return load(path, "sft", streaming=streaming, template=template, root=root, skip=skip, slides=slides)


def load_qa(path, *, streaming: bool = False, root=None, skip=(), slides=None):
    """Questions with ground truth (RL and evaluation): id, images, question, options, answer, kind, ..."""
    return load(path, "qa", streaming=streaming, root=root, skip=skip, slides=slides)


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644  # fixed metadata: reproducible shards
    tar.addfile(info, io.BytesIO(payload))


def write_webdataset(dataset, out_dir, shard_size: int = 1000) -> list[Path]:
    """Write `dataset` as WebDataset shards `out_dir/shard-000000.tar`, ...; returns the shard paths.

    Per sample: the image bytes as `{key}.<ext>` (further images `{key}.<i>.<ext>`), the caption as
    `{key}.txt` (pairs) and every other column in `{key}.json`. Keys are running numbers because
    WebDataset splits names at the first dot; the sample id lives in the JSON.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards, tar = [], None
    for index, sample in enumerate(dataset):
        if index % shard_size == 0:
            if tar is not None:
                tar.close()
            shards.append(out_dir / f"shard-{len(shards):06d}.tar")
            tar = tarfile.open(shards[-1], "w", format=tarfile.USTAR_FORMAT)
        key = f"{index:09d}"
        for i, image in enumerate(sample["images"]):
            suffix = Path(image).suffix.lower().lstrip(".") or "png"
            _add(tar, f"{key}.{suffix}" if i == 0 else f"{key}.{i}.{suffix}", Path(image).read_bytes())
        if "caption" in sample:
            _add(tar, f"{key}.txt", sample["caption"].encode("utf-8"))
        meta = {k: v for k, v in sample.items() if k not in ("images", "caption")}
        _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    if tar is not None:
        tar.close()
    return shards
