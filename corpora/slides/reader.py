"""Opening a whole-slide image with OpenSlide and reading it at a physical resolution (µm/px).

OpenSlide does the format work (Aperio SVS, Hamamatsu NDPI, MIRAX, Leica SCN, Ventana, generic tiled TIFF...);
this module adds what OpenSlide lacks: a resolution that is always known or refused (vendor µm/px, else the
TIFF resolution tags OpenSlide turns into ``openslide.mpp-x``, else the objective power), reading a region at a
requested µm/px (best level, then resize), and one-line errors that name the file.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

# A 20x objective scans at about 0.5 µm/px, 40x at about 0.25 (Aperio, Hamamatsu, Leica): µm/px ~= 10 / power.
# Only used when a slide records no µm/px and the caller allows the fallback.
MICRONS_AT_1X = 10.0
# A requested µm/px this close to a level's counts as that level (0.499 vs 0.5): no resize of a 0.2% difference.
MPP_TOLERANCE = 0.01
MPP_FALLBACKS = ("objective", "refuse")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm")


class SlideError(ValueError):
    """A slide that cannot be used; the message is one line naming the file (CLI: exit 2)."""


@dataclass(frozen=True)
class SlideInfo:
    path: str
    width: int
    height: int
    levels: int
    downsamples: list[float]
    level_dimensions: list[list[int]]
    mpp: float | None  # µm per level-0 pixel (x; y is recorded separately when it differs)
    mpp_y: float | None
    mpp_source: str  # "vendor" | "tiff-resolution" | "objective-power" | "none"
    objective_power: float | None
    vendor: str
    associated: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _float(props, key) -> float | None:
    try:
        value = float(props[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _mpp_source(props) -> str:
    """Where OpenSlide's ``openslide.mpp-x`` came from: a vendor field (aperio.MPP, hamamatsu..., mirax...)
    or, for generic TIFF, the XResolution tag (OpenSlide converts it only for a centimetre/inch unit)."""
    vendor = props.get("openslide.vendor", "")
    if vendor == "generic-tiff" or ("tiff.XResolution" in props and not any(
            k.startswith(f"{vendor}.") and "mpp" in k.lower() for k in props)):
        return "tiff-resolution"
    return "vendor"


class Slide:
    """An open slide: ``info``, ``read_region`` (level-0 coordinates, any level), ``read_region_mpp`` (at a
    µm/px), ``thumbnail``, ``associated``, ``tissue_mask``, ``tiles``. Use as a context manager or ``close()``."""

    def __init__(self, handle, info: SlideInfo):
        self._osr, self.info = handle, info
        self.path = Path(info.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._osr.close()

    # ---- reading --------------------------------------------------------------------------------------------
    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> Image.Image:
        """RGB pixels of ``size`` (w, h) at ``level`` whose top-left is level-0 pixel (x, y); outside the slide
        (and OpenSlide's transparent gaps) is white, the colour of glass."""
        import openslide

        try:
            region = self._osr.read_region((int(x), int(y)), int(level), (int(size[0]), int(size[1])))
        except openslide.OpenSlideError as e:
            raise SlideError(f"{self.path}: expected readable pixels at level {level} ({x},{y}), "
                             f"found a corrupt slide ({e}); re-export or re-scan it") from None
        return _rgb_on_white(region)

    def best_level(self, mpp: float) -> int:
        """The coarsest level whose pixels are still at least as fine as ``mpp`` (read there, then shrink)."""
        factor = self.level0_per_pixel(mpp)
        best = 0
        for level, ds in enumerate(self.info.downsamples):
            if ds <= factor * (1 + MPP_TOLERANCE):
                best = level
        return best

    def level0_per_pixel(self, mpp: float) -> float:
        """Level-0 pixels per output pixel at ``mpp``; refuses a µm/px finer than the scan (no upsampling)."""
        base = self.mpp_or_raise()
        if mpp <= 0 or not math.isfinite(mpp):
            raise SlideError(f"{self.path}: expected a positive µm/px, found {mpp}; pass e.g. --mpp 0.5 (a stage: slides.mpp=0.5)")
        if mpp < base * (1 - MPP_TOLERANCE):
            raise SlideError(f"{self.path}: expected a µm/px of at least the scan's {base:g}, found {mpp:g} "
                             f"(would upsample); pass --mpp {base:g} or coarser (a stage: slides.mpp={base:g})")
        return 1.0 if abs(mpp - base) <= base * MPP_TOLERANCE else mpp / base

    def read_region_mpp(self, x: int, y: int, mpp: float, size: int | tuple[int, int]) -> Image.Image:
        """An RGB image of ``size`` output pixels at ``mpp`` µm/px whose top-left is level-0 pixel (x, y):
        read at the best level, then resized (never upsampled beyond that level's own pixels)."""
        w, h = (size, size) if isinstance(size, int) else size
        factor = self.level0_per_pixel(mpp)
        level = self.best_level(mpp)
        ds = self.info.downsamples[level]
        read_w, read_h = max(1, round(w * factor / ds)), max(1, round(h * factor / ds))
        region = self.read_region(x, y, level, (read_w, read_h))
        if (read_w, read_h) == (w, h):
            return region
        # reducing_gap: a box reduction first, then Lanczos (what PIL.thumbnail and DeepZoom do): same look, faster
        return region.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=2.0)

    def thumbnail(self, max_size: int = 1024) -> Image.Image:
        """The whole slide as RGB, longest side ``max_size`` (OpenSlide reads its coarsest fitting level)."""
        import openslide

        try:
            return _rgb_on_white(self._osr.get_thumbnail((max_size, max_size)))
        except openslide.OpenSlideError as e:
            raise SlideError(f"{self.path}: expected a readable slide, found a corrupt one ({e}); "
                             "re-export or re-scan it") from None

    def associated(self, name: str) -> Image.Image:
        """An associated image (``thumbnail``, ``label``, ``macro``... see ``info.associated``) as RGB."""
        if name not in self.info.associated:
            raise SlideError(f"{self.path}: expected an associated image named {name!r}, found "
                             f"{self.info.associated or 'none'}")
        return _rgb_on_white(self._osr.associated_images[name])

    # ---- tissue (corpora.slides.tissue); the tile grid is corpora.slides.tiling.plan_tiles(slide, ...), which
    # builds on this module
    def tissue_mask(self, thumb_size: int = 1024):
        from corpora.slides.tissue import TissueMask

        return TissueMask.of_slide(self, thumb_size)

    def mpp_or_raise(self) -> float:
        if self.info.mpp is None:
            raise SlideError(f"{self.path}: expected a resolution (µm/px or objective power), found none; "
                             "it records no objective power either, so no --mpp-fallback (slides.mpp_fallback) "
                             "helps; re-export it with resolution tags")
        return self.info.mpp


def _rgb_on_white(image: Image.Image) -> Image.Image:
    if image.mode != "RGBA":
        return image.convert("RGB")
    if image.getextrema()[3][0] == 255:  # fully opaque: nothing to composite
        return image.convert("RGB")
    white = Image.new("RGB", image.size, (255, 255, 255))
    white.paste(image, mask=image.getchannel("A"))
    return white


def open_slide(path, *, mpp_fallback: str = "objective") -> Slide:
    """Open ``path`` with OpenSlide; ``mpp_fallback``: ``objective`` (µm/px = 10 / objective power when the slide
    records no µm/px) or ``refuse`` (raise). Raises SlideError (one line naming the file) for a missing,
    unsupported, unreadable or truncated slide, or one without a resolution under ``refuse``."""
    import openslide

    if mpp_fallback not in MPP_FALLBACKS:
        raise ValueError(f"mpp_fallback must be one of {MPP_FALLBACKS}, got {mpp_fallback!r}")
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: expected a slide file, found nothing; check the path")
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except Exception as e:  # noqa: BLE001 - OpenSlide raises several types for a file it cannot parse
        raise SlideError(f"{path}: expected a slide, found an unreadable file ({e}); re-export it") from None
    if vendor is None:
        raise SlideError(f"{path}: expected a slide format OpenSlide reads (SVS, NDPI, MRXS, SCN, tiled TIFF...), "
                         f"found {_unrecognised(path)}")
    try:
        handle = openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError) as e:
        raise SlideError(f"{path}: expected a readable {vendor} slide, found a broken one ({e}); "
                         "re-export or re-scan it") from None
    try:
        info = _info(path, handle, mpp_fallback)
        _probe(path, handle)
    except Exception:
        handle.close()
        raise
    return Slide(handle, info)


def _unrecognised(path: Path) -> str:
    """What a file OpenSlide does not recognise probably is: the one line says which fix applies."""
    if path.is_dir():
        return "a folder; name the slide file (MRXS: the .mrxs beside its folder)"
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes); copy the slide again"
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] in (b"II", b"MM") or path.suffix.lower() in SLIDE_SUFFIXES:  # a TIFF-based scan cut short
        return f"a {path.suffix or 'file'} of {size} bytes it cannot parse (truncated, or a TIFF that is not tiled); " \
               "copy the slide again, or convert it to tiled pyramidal TIFF"
    return f"{path.suffix or 'no extension'}, which it does not recognise; convert it to tiled pyramidal TIFF"


def _info(path: Path, handle, mpp_fallback: str) -> SlideInfo:
    props = handle.properties
    mpp, mpp_y = _float(props, "openslide.mpp-x"), _float(props, "openslide.mpp-y")
    power = _float(props, "openslide.objective-power")
    source = _mpp_source(props) if mpp else "none"
    if mpp is None and power is not None and mpp_fallback == "objective":
        mpp, mpp_y, source = MICRONS_AT_1X / power, MICRONS_AT_1X / power, "objective-power"
    if mpp is None and mpp_fallback == "refuse" and power is None:
        raise SlideError(f"{path}: expected a µm/px (vendor field or TIFF resolution tags), found none, nor an "
                         "objective power to fall back on; re-export it with resolution tags")
    if mpp is None and mpp_fallback == "refuse":
        raise SlideError(f"{path}: expected a µm/px (vendor field or TIFF resolution tags), found none; "
                         "use --mpp-fallback objective (a stage: slides.mpp_fallback=objective) to take 10 / objective "
                         "power, or re-export with resolution tags")
    width, height = handle.dimensions
    return SlideInfo(
        path=str(path.resolve()), width=int(width), height=int(height), levels=int(handle.level_count),
        downsamples=[float(d) for d in handle.level_downsamples],
        level_dimensions=[[int(w), int(h)] for w, h in handle.level_dimensions],
        mpp=mpp, mpp_y=mpp_y if mpp_y != mpp else None, mpp_source=source, objective_power=power,
        vendor=props.get("openslide.vendor", ""), associated=sorted(handle.associated_images))


def _probe(path: Path, handle) -> None:
    """Decode one pixel of the coarsest level: OpenSlide opens a file with corrupt tile data (openslide-python's
    unreadable.svs) and fails only on the first read, which would otherwise happen mid-tiling."""
    import openslide

    level = handle.level_count - 1
    w, h = handle.level_dimensions[level]
    ds = handle.level_downsamples[level]
    try:
        handle.read_region((int(w // 2 * ds), int(h // 2 * ds)), level, (1, 1))
    except openslide.OpenSlideError as e:
        raise SlideError(f"{path}: expected readable pixels, found corrupt tile data ({e}); re-export or re-scan "
                         "it") from None
