"""A corpus of hostile records: broken files, malicious paths, decompression bombs, malformed JSON / CSV / shards.

Every `Case` writes one small dataset root: two well-formed records followed by one hostile record (or one
hostile file). That lets a test check both policies at once: strict validation refuses the data and names
the hostile record's `file:line` and problem code; lenient validation keeps exactly the good records.
Cases with `code=""` are odd but legitimate input (CMYK, 16-bit, palette images...) that must be HANDLED:
accepted and converted, never refused.

    from tests.hostile.corpus import CASES
    path = case.write(tmp_path / case.name)     # -> the data file (or shard) to validate / train on
"""
from __future__ import annotations

import functools
import io
import json
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

GOOD_IMAGE = "good.png"
DROP = object()  # a field value meaning "remove this field from the record"
ONE_MB = 1_000_000


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # pairs | sft | qa
    code: str  # the expected corpora.validate problem code; "" = handled (accepted and converted)
    fragment: str  # expected inside the problem message
    write: Callable[[Path], Path]  # writes the case into an empty folder, returns the data path
    line: int = 3  # where the problem is reported (0: the file as a whole)
    usable: int = 2  # records lenient validation keeps

    def __str__(self) -> str:
        return self.name


# ----------------------------------------------------------------------------------------------- records
def record(kind: str, n: int, /, **changes) -> dict:
    """A well-formed record of `kind` with id `<kind>-<n>`; `changes` override fields (DROP removes one)."""
    base = {
        "pairs": {"caption": "Glandular tissue, H&E.", "label": "gland"},
        "qa": {"question": "Which tissue is shown?", "options": ["gland", "stroma", "fat", "muscle"], "answer": "A"},
        "sft": {"messages": [{"role": "user", "content": "Describe the tissue."},
                             {"role": "assistant", "content": "<think>round lumens</think><answer>gland</answer>"}]},
    }[kind]
    out = {"id": f"{kind}-{n}", "image": GOOD_IMAGE, **base}
    for key, value in changes.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _encode(line) -> bytes:
    if isinstance(line, bytes):
        return line
    return (line if isinstance(line, str) else json.dumps(line)).encode("utf-8")


def save_image(path: Path, mode: str = "RGB", size=(8, 8), fmt: str | None = None) -> Path:
    """A small image of `mode`: noise, so every codec has real data to decode."""
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8)
    image = Image.fromarray(pixels)
    image = image.convert(mode) if mode not in ("I;16", "I", "F") else image.convert("L").convert(mode)
    image.save(path, format=fmt)
    return path


def jsonl(kind: str, bad, setup: Callable[[Path], None] | None = None) -> Callable[[Path], Path]:
    """Writer: two good records of `kind`, then `bad` (a dict, a raw text line or raw bytes) on line 3."""

    def write(root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        save_image(root / GOOD_IMAGE)
        if setup is not None:
            setup(root)
        lines = [_encode(record(kind, 1)), _encode(record(kind, 2)), _encode(bad)]
        path = root / "data.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        return path

    return write


def csv_file(bad_row: bytes, header: bytes = b"image_path,caption") -> Callable[[Path], Path]:
    """Writer: a Patho-R1-style pairs CSV, header + two good rows, then `bad_row` on line 4."""

    def write(root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        save_image(root / GOOD_IMAGE)
        path = root / "data.csv"
        path.write_bytes(b"\n".join([header, b"good.png,Glandular tissue", b"good.png,Loose stroma", bad_row]) + b"\n")
        return path

    return write


def raw_file(name: str, content: bytes) -> Callable[[Path], Path]:
    """Writer: a whole data file with exactly `content`."""

    def write(root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
        return root / name

    return write


def with_image(kind: str, name: str, make: Callable[[Path], None], **changes) -> Callable[[Path], Path]:
    """Writer: two good records, then one whose image is the file `name` that `make` writes."""
    return jsonl(kind, record(kind, 3, image=name, **changes), setup=lambda root: make(root / name))


# ----------------------------------------------------------------------------------------------- images
def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, idat: bytes, extra: bytes = b"") -> bytes:
    """A 1-bit greyscale PNG written chunk by chunk: the header may claim any size the data does not back."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@functools.cache
def _bomb_bytes(side: int) -> bytes:
    row = b"\0" * (1 + side // 8)
    return png_bytes(side, side, zlib.compress(row * side, 9))


def bomb_png(path: Path, side: int = 20_000) -> None:
    """A real decompression bomb: side x side pixels of zeros (~50 MB decoded) in ~50 kB on disk."""
    path.write_bytes(_bomb_bytes(side))


def lying_png(width: int, height: int) -> Callable[[Path], None]:
    """A header that claims width x height over a few bytes of pixel data."""
    return lambda path: path.write_bytes(png_bytes(width, height, zlib.compress(b"\0" * 64)))


@functools.cache
def _text_bomb_bytes() -> bytes:
    comment = _chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * 50_000_000, 9))
    return png_bytes(8, 8, zlib.compress(b"\0\0" * 8), extra=comment)


def text_bomb_png(path: Path) -> None:
    """A valid 8x8 PNG whose compressed comment chunk inflates to 50 MB."""
    path.write_bytes(_text_bomb_bytes())


def truncated(fmt: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        buffer = io.BytesIO()
        save_image(buffer, size=(64, 64), fmt=fmt)
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    return make


def _outside_image(root: Path) -> Path:
    """A perfectly good image next to (not inside) the dataset root."""
    return save_image(root.parent / f"{root.name}-outside.png")


def _symlink_out(path: Path) -> None:
    os.symlink(_outside_image(path.parent), path)


def _symlink_loop(path: Path) -> None:
    os.symlink(path.name + ".b", path)
    os.symlink(path.name, path.with_name(path.name + ".b"))


# ----------------------------------------------------------------------------------------------- shards
def shard(members: dict[str, bytes]) -> Callable[[Path], Path]:
    """Writer: a WebDataset shard with a good sample `000000000` and the hostile `members` after it."""

    def write(root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        save_image(buffer, fmt="PNG")
        files = {"000000000.png": buffer.getvalue(), "000000000.txt": b"Glandular tissue",
                 "000000000.json": b'{"id": "good"}', **members}
        path = root / "shard-000000.tar"
        with tarfile.open(path, "w") as tar:
            for name, payload in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        return path

    return write


# ----------------------------------------------------------------------------------------------- the corpus
_BIG = "x" * ONE_MB
_USER = {"role": "user", "content": "Describe the tissue."}


def _abs_outside(root: Path) -> None:
    _outside_image(root)


CASES: list[Case] = [
    # --- images (pairs unless noted) ---
    Case("corrupt-bytes-named-png", "pairs", "unreadable-image", "cannot decode image",
         with_image("pairs", "bad.png", lambda p: p.write_bytes(os.urandom(256)))),
    Case("truncated-png", "pairs", "truncated-image", "image is truncated", with_image("pairs", "bad.png", truncated("PNG"))),
    Case("truncated-jpeg", "qa", "truncated-image", "image is truncated", with_image("qa", "bad.jpg", truncated("JPEG"))),
    Case("zero-byte-image", "sft", "empty-image", "0 bytes", with_image("sft", "bad.png", lambda p: p.write_bytes(b""))),
    Case("decompression-bomb-png", "pairs", "image-too-large", "decompression bomb", with_image("pairs", "bomb.png", bomb_png)),
    Case("decompression-bomb-in-sft", "sft", "image-too-large", "400000000 pixels", with_image("sft", "bomb.png", bomb_png)),
    Case("header-claims-30000x30000", "pairs", "image-too-large", "900000000 pixels",
         with_image("pairs", "liar.png", lying_png(30_000, 30_000))),
    Case("absurd-width-2-to-the-31", "qa", "image-too-large", "2147483647 pixels",
         with_image("qa", "wide.png", lying_png(2**31 - 1, 1))),
    Case("png-text-chunk-bomb", "pairs", "unreadable-image", "MAX_TEXT_CHUNK", with_image("pairs", "text.png", text_bomb_png)),
    Case("image-path-is-a-folder", "pairs", "missing-image", "is a folder",
         with_image("pairs", "folder.png", lambda p: p.mkdir())),
    Case("image-missing", "qa", "missing-image", "image not found", jsonl("qa", record("qa", 3, image="nowhere.png"))),
    # --- paths that escape the dataset root ---
    Case("path-traversal", "pairs", "path-escapes-root", "outside the dataset root",
         jsonl("pairs", record("pairs", 3, image="../../../../etc/passwd"))),
    Case("path-traversal-qa", "qa", "path-escapes-root", "'../../etc/passwd'",
         jsonl("qa", record("qa", 3, image="../../etc/passwd"))),
    Case("absolute-path-etc-passwd", "sft", "path-escapes-root", "'/etc/passwd'",
         jsonl("sft", record("sft", 3, image="/etc/passwd"))),
    Case("absolute-path-to-image-outside-root", "pairs", "path-escapes-root", "outside the dataset root",
         lambda root: jsonl("pairs", record("pairs", 3, image=str(root.parent / f"{root.name}-outside.png")),
                            setup=_abs_outside)(root)),
    Case("symlink-out-of-root", "pairs", "path-escapes-root", "'link.png' resolves outside",
         with_image("pairs", "link.png", _symlink_out)),
    Case("symlink-out-of-root-qa", "qa", "path-escapes-root", "'link.png' resolves outside",
         with_image("qa", "link.png", _symlink_out)),
    Case("symlink-loop", "pairs", "bad-image-path", "cannot be resolved", with_image("pairs", "loop.png", _symlink_loop)),
    Case("nul-byte-in-image-path", "pairs", "bad-image-path", "cannot be resolved",
         jsonl("pairs", record("pairs", 3, image="good\u0000.png"))),
    Case("second-image-escapes", "qa", "path-escapes-root", "resolves outside",
         jsonl("qa", record("qa", 3, image=DROP, images=[GOOD_IMAGE, "../secret.png"]))),
    Case("images-as-int", "pairs", "bad-image-path", "non-empty string, got 7", jsonl("pairs", record("pairs", 3, image=7))),
    Case("images-as-dict", "sft", "bad-image-path", "non-empty string", jsonl("sft", record("sft", 3, image={"path": "good.png"}))),
    Case("images-empty-list", "qa", "missing-field", "record has no image", jsonl("qa", record("qa", 3, image=[]))),
    # --- malformed JSON lines ---
    Case("malformed-json-line", "pairs", "malformed-line", "invalid JSON", jsonl("pairs", '{"id": "p-3", "image": "good.png",')),
    Case("json-scalar-line", "qa", "malformed-line", "expected a JSON object, got int", jsonl("qa", "42")),
    Case("json-array-line", "sft", "malformed-line", "expected a JSON object, got list", jsonl("sft", '["good.png", "x"]')),
    Case("non-utf8-bytes", "pairs", "malformed-line", "not valid UTF-8",
         jsonl("pairs", b'{"id": "p-3", "image": "good.png", "caption": "\xff\xfe\xc3"}')),
    Case("non-utf8-bytes-sft", "sft", "malformed-line", "not valid UTF-8", jsonl("sft", b"\x89PNG\x1a\x00\x00\xffbinary")),
    Case("raw-nul-byte-in-line", "qa", "malformed-line", "invalid JSON",
         jsonl("qa", b'{"id": "q-3", "image": "good.png", "question": "a\x00b", "answer": "A"}')),
    Case("nested-100000-deep", "pairs", "malformed-line", "nested too deeply", jsonl("pairs", '{"id": ' + "[" * 100_000)),
    Case("extremely-long-garbage-line", "pairs", "malformed-line", "invalid JSON", jsonl("pairs", "{" + "a" * 5 * ONE_MB)),
    # --- missing fields, wrong types ---
    Case("missing-caption", "pairs", "missing-field", "missing field 'caption'", jsonl("pairs", record("pairs", 3, caption=DROP))),
    Case("missing-image-field", "pairs", "missing-field", "missing field 'images'", jsonl("pairs", record("pairs", 3, image=DROP))),
    Case("caption-as-list", "pairs", "bad-field", "'caption' must be a string, got list",
         jsonl("pairs", record("pairs", 3, caption=["a", "b"]))),
    Case("missing-question", "qa", "missing-field", "missing field 'question'", jsonl("qa", record("qa", 3, question=DROP))),
    Case("question-as-dict", "qa", "bad-field", "'question' must be a string", jsonl("qa", record("qa", 3, question={"q": 1}))),
    Case("missing-answer", "qa", "missing-field", "missing field 'answer'", jsonl("qa", record("qa", 3, answer=DROP))),
    Case("options-as-string", "qa", "bad-options", "options must be a list", jsonl("qa", record("qa", 3, options="gland,stroma"))),
    Case("options-with-numbers", "qa", "bad-options", "options must be a list", jsonl("qa", record("qa", 3, options=[1, 2]))),
    Case("option-keys-skip-a-letter", "qa", "bad-options", "A, B, C... in order",
         jsonl("qa", record("qa", 3, options={"A": "gland", "C": "fat"}))),
    Case("unknown-question-kind", "qa", "bad-kind", "got 'essay'", jsonl("qa", record("qa", 3, kind="essay"))),
    # --- answers ---
    Case("answer-letter-E-of-4", "qa", "answer-not-in-options", "answer 'E' is not one of the options",
         jsonl("qa", record("qa", 3, answer="E"))),
    Case("answer-text-not-an-option", "qa", "answer-not-in-options", "answer 'bone'", jsonl("qa", record("qa", 3, answer="bone"))),
    Case("yesno-answer-maybe", "qa", "answer-not-in-options", "got 'maybe'",
         jsonl("qa", record("qa", 3, options=[], kind="yesno", answer="maybe"))),
    Case("sft-from-qa-answer-E", "sft", "answer-not-in-options", "answer 'E'",
         jsonl("sft", record("qa", 3, answer="E"))),
    # --- captions and texts ---
    Case("empty-caption", "pairs", "empty-caption", "caption is empty", jsonl("pairs", record("pairs", 3, caption=""))),
    Case("whitespace-only-caption", "pairs", "empty-caption", "caption is empty",
         jsonl("pairs", record("pairs", 3, caption=" \t\n "))),
    Case("one-megabyte-caption", "pairs", "text-too-long", "1000000 characters",
         jsonl("pairs", record("pairs", 3, caption=_BIG))),
    Case("nul-in-caption", "pairs", "bad-field", "NUL character", jsonl("pairs", record("pairs", 3, caption="gland\u0000"))),
    Case("empty-question", "qa", "empty-question", "question is empty", jsonl("qa", record("qa", 3, question="   "))),
    Case("one-megabyte-question", "qa", "text-too-long", "'question' is 1000000", jsonl("qa", record("qa", 3, question=_BIG))),
    Case("one-megabyte-option", "qa", "text-too-long", "'option'",
         jsonl("qa", record("qa", 3, options=["gland", _BIG]))),
    Case("duplicate-id", "pairs", "duplicate-id", "id 'pairs-1' already used at", jsonl("pairs", record("pairs", 1))),
    Case("duplicate-id-qa", "qa", "duplicate-id", "id 'qa-2' already used at", jsonl("qa", record("qa", 2))),
    # --- chat messages (sft) ---
    Case("empty-messages", "sft", "bad-messages", "non-empty list", jsonl("sft", record("sft", 3, messages=[]))),
    Case("messages-as-string", "sft", "bad-messages", "non-empty list", jsonl("sft", record("sft", 3, messages="hello"))),
    Case("assistant-turn-missing", "sft", "bad-messages", "last message must be a non-empty assistant turn",
         jsonl("sft", record("sft", 3, messages=[_USER]))),
    Case("assistant-turn-empty", "sft", "bad-messages", "non-empty assistant turn",
         jsonl("sft", record("sft", 3, messages=[_USER, {"role": "assistant", "content": "  "}]))),
    Case("message-without-content", "sft", "bad-messages", "needs 'role' and 'content'",
         jsonl("sft", record("sft", 3, messages=[_USER, {"role": "assistant"}]))),
    Case("message-content-none", "sft", "bad-messages", "must be a string or a list of parts",
         jsonl("sft", record("sft", 3, messages=[_USER, {"role": "assistant", "content": None}]))),
    Case("unknown-role", "sft", "bad-messages", "unknown role 'bot'",  # a 'tool' turn makes a trace (corpora.traces)
         jsonl("sft", record("sft", 3, messages=[_USER, {"role": "bot", "content": "x"}]))),
    Case("one-megabyte-assistant-turn", "sft", "text-too-long", "1000000 characters",
         jsonl("sft", record("sft", 3, messages=[_USER, {"role": "assistant", "content": _BIG}]))),
    Case("nul-in-assistant-turn", "sft", "bad-field", "NUL character",
         jsonl("sft", record("sft", 3, messages=[_USER, {"role": "assistant", "content": "a\u0000b"}]))),
    # --- CSV ---
    Case("csv-unbalanced-quote", "pairs", "malformed-line", "unbalanced or stray quote",
         csv_file(b'good.png,"Glandular tissue\ngood.png,this row is swallowed by the open quote'), line=4),
    Case("csv-extra-column", "pairs", "malformed-line", "expected 2 columns", csv_file(b"good.png,a,b"), line=4),
    Case("csv-missing-column", "pairs", "malformed-line", "expected 2 columns", csv_file(b"good.png"), line=4),
    Case("csv-non-utf8", "pairs", "malformed-line", "not valid UTF-8", csv_file(b"good.png,caf\xe9 latin-1"), line=4),
    Case("csv-nul-in-caption", "pairs", "bad-field", "NUL character", csv_file(b"good.png,gl\x00and"), line=4),
    Case("csv-wrong-header", "pairs", "missing-field", "missing field 'caption'",
         csv_file(b"good.png,x", header=b"image_path,descr"), line=2, usable=0),
    Case("csv-header-only", "pairs", "no-records", "no records found", raw_file("data.csv", b"image_path,caption\n"),
         line=0, usable=0),
    # --- whole files ---
    Case("empty-jsonl", "qa", "no-records", "no records found", raw_file("data.jsonl", b""), line=0, usable=0),
    Case("whitespace-only-jsonl", "sft", "no-records", "no records found", raw_file("data.jsonl", b"\n \n\t\n"),
         line=0, usable=0),
    Case("json-array-of-strings", "qa", "malformed-line", "item 1 is not a JSON object",
         raw_file("data.json", b'["a", "b"]'), line=1, usable=0),
    Case("not-a-tar-shard", "pairs", "malformed-line", "unreadable shard", raw_file("shard-000000.tar", b"not a tar" * 100),
         line=1, usable=0),
    Case("shard-json-path-traversal", "pairs", "path-escapes-root", "'../../../etc/passwd'",
         shard({"000000001.txt": b"caption", "000000001.json": b'{"images": ["../../../etc/passwd"]}'}), line=2, usable=1),
    Case("shard-non-utf8-caption", "pairs", "malformed-line", "not valid UTF-8",
         shard({"000000001.png": b"", "000000001.txt": b"\xff\xfe"}), line=2, usable=1),
    Case("shard-malformed-json", "pairs", "malformed-line", "invalid JSON",
         shard({"000000001.txt": b"caption", "000000001.json": b"{oops"}), line=2, usable=1),
]

# Odd but legitimate images: validation accepts them and training converts them to RGB.
HANDLED_MODES = {"cmyk.jpg": "CMYK", "la.png": "LA", "palette.png": "P", "sixteen-bit.png": "I;16",
                 "one-bit.png": "1", "rgba.png": "RGBA", "grey.png": "L", "int32.tif": "I", "float.tif": "F"}
HANDLED: list[Case] = [
    Case(f"mode-{mode}", "pairs", "", "", with_image("pairs", name, lambda p, m=mode: save_image(p, m)), usable=3)
    for name, mode in HANDLED_MODES.items()
] + [
    Case("jpeg-named-png", "qa", "", "", with_image("qa", "really-a-jpeg.png", lambda p: save_image(p, fmt="JPEG")), usable=3),
    Case("utf8-bom", "pairs", "", "", lambda root: _with_bom(jsonl("pairs", record("pairs", 3))(root)), usable=3),
    Case("csv-quoted-newline", "pairs", "", "", csv_file(b'good.png,"two\nlines"'), usable=3),
    Case("absolute-path-inside-root", "sft", "", "",
         lambda root: jsonl("sft", record("sft", 3, image=str(root.resolve() / GOOD_IMAGE)))(root), usable=3),
]


def _with_bom(path: Path) -> Path:
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    return path


def digest(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (symlinks as their target name): compared before and after, nothing changes."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p)] = os.readlink(p).encode()
        elif p.is_file():
            out[str(p)] = p.read_bytes()
    return out
