"""Write the browser folder: ``index.html`` + ``browse.js`` + ``browse.css`` (ours, no libraries), ``data.js`` (the
run's data as one JS assignment: browsers refuse ``fetch`` of JSON from ``file://``), ``images/`` and ``thumbs/``.

Images are copied into the folder (so it can be zipped and shared) under a name derived from their source path;
an image of at most ``inline_max`` bytes is inlined into ``data.js`` as a data URI instead. Formats a browser cannot
show (TIFF, ...) are converted to PNG with Pillow.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ASSETS = Path(__file__).with_name("assets")
ASSET_FILES = ("index.html", "browse.js", "browse.css")
THUMB_PX = 160
INLINE_MAX = 2048  # bytes: below this a reference costs more than the image
BROWSER_FORMATS = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                   ".webp": "image/webp", ".bmp": "image/bmp"}


class _Images:
    """Source image path -> ``{"t": thumbnail URL, "f": full-size URL}`` (relative to the folder), made once."""

    def __init__(self, out: Path, inline_max: int):
        self.out, self.inline_max, self.done = out, inline_max, {}
        self.copied = self.inlined = self.missing = 0

    def __call__(self, source: str) -> dict:
        if source not in self.done:
            self.done[source] = self._make(Path(source))
        return self.done[source]

    def _make(self, src: Path) -> dict:
        if not src.is_file():
            self.missing += 1
            return {"missing": src.name}
        suffix = src.suffix.lower()
        if suffix in BROWSER_FORMATS and src.stat().st_size <= self.inline_max:
            self.inlined += 1
            uri = f"data:{BROWSER_FORMATS[suffix]};base64,{base64.b64encode(src.read_bytes()).decode()}"
            return {"t": uri, "f": uri}
        from PIL import Image

        stem = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:16]
        full = Path("images") / (stem + (suffix if suffix in BROWSER_FORMATS else ".png"))
        thumb = Path("thumbs") / f"{stem}.jpg"
        try:
            with Image.open(src) as im:
                if not (self.out / full).is_file():
                    (self.out / full).parent.mkdir(parents=True, exist_ok=True)
                    if suffix in BROWSER_FORMATS:
                        shutil.copyfile(src, self.out / full)
                    else:
                        im.save(self.out / full)
                if not (self.out / thumb).is_file():
                    (self.out / thumb).parent.mkdir(parents=True, exist_ok=True)
                    small = im.convert("RGB")
                    small.thumbnail((THUMB_PX, THUMB_PX))
                    small.save(self.out / thumb, quality=85)
        except OSError:  # not an image Pillow can read: say so on the page instead of failing the report
            self.missing += 1
            return {"missing": src.name}
        self.copied += 1
        return {"t": thumb.as_posix(), "f": full.as_posix()}


def _slide_thumbnail(slide: str | None, scratch: Path) -> str | None:
    """The whole-slide thumbnail when the tile cache kept none: read from the slide (OpenSlide, once per slide);
    None when the slide is gone or unreadable (the page then draws the regions without it)."""
    if not slide or not Path(slide).is_file():
        return None
    target = scratch / f"{hashlib.sha1(str(Path(slide).resolve()).encode()).hexdigest()[:16]}.png"
    if not target.is_file():
        from corpora.slides import SlideError, open_slide

        try:
            with open_slide(slide) as handle:
                handle.thumbnail(1024).save(target)
        except (SlideError, OSError):
            return None
    return str(target)


def write_browser(data: dict, out: str | Path, *, inline_max: int = INLINE_MAX) -> Path:
    """Write the folder for ``data`` (``evaluation.browse.data.gather``); returns ``out/index.html``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = _Images(out, inline_max)
    with tempfile.TemporaryDirectory() as scratch:  # thumbnails read from slides, copied in by _Images
        for q in data["questions"]:
            q["images"] = [images(p) for p in q["images"]]
            if q.get("slide"):
                thumbnail = q["slide"]["thumbnail"] or _slide_thumbnail(q["slide"].get("source"), Path(scratch))
                q["slide"]["image"] = images(thumbnail) if thumbnail else {"missing": "slide thumbnail"}
    data = {**data, "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "image_counts": {"copied": images.copied, "inlined": images.inlined, "missing": images.missing}}
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    tmp = out / "data.js.tmp"
    tmp.write_text(f"window.PATHOR1_BROWSE = {payload};\n", encoding="utf-8")
    tmp.replace(out / "data.js")
    for name in ASSET_FILES:
        shutil.copyfile(ASSETS / name, out / name)
    return out / "index.html"
