"""A slide-viewing environment: the tools a model (or a person in a notebook) uses to read a whole slide by
navigating it -- an overview, a list of tissue regions, and views of any region at a chosen µm/px -- with a budget
of views per question and a log of every view.

It is an ordinary object::

    viewer = SlideViewer(budget=4, size=224)
    viewer.reset(slide="case.svs")          # the observation text: slide size, µm/px, budget
    viewer.overview                         # the thumbnail (PIL), what the model sees first
    print(viewer.tissue_regions())          # "region 1: x=5120 y=3072 ..." (level-0 pixel centres)
    view = viewer.zoom(5120, 3072, 0.5)     # a View: .image (PIL, 224x224 at 0.5 µm/px), .record; shows in Jupyter
    viewer.views                            # [ViewRecord(...)] of this question, in order

and the same object is TRL's environment (``GRPOTrainer(environment_factory=SlideViewer)``): TRL calls
``reset(**row)`` once per rollout with the dataset row (its ``slide`` column names the slide) and exposes every
public method as a tool, reading the tool schema from the signature and the docstring. ``zoom`` returns a list of
content blocks (an image and a line of text), the form TRL 1.16's tool loop passes back to a VLM as a tool message
with an image. Everything else a user may want (``views``, ``overview``, ``record``) is a property or attribute, so
it never turns into a tool. Coordinates are level-0 pixels of the slide (those of ``corpora.slides`` tiles), given
as the centre of the view.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from corpora.slides.reader import SlideError, open_slide

# Views coarser than this show so little that a budget spent on them is wasted; the thumbnail covers it.
DEFAULT_MAX_MPP = 16.0
DEFAULT_BUDGET = 4
DEFAULT_VIEW_SIZE = 224
DEFAULT_REGIONS = 8


@dataclass
class ViewerSettings:
    """The viewer's limits, shared by RL (``stages.rl.tools.ToolsConfig`` adds to it) and evaluation."""

    budget: int = field(default=DEFAULT_BUDGET, metadata={"help": "Views (zoom calls that return an image) per "
                                                                  "question; more are refused."})
    view_size: int = field(default=DEFAULT_VIEW_SIZE, metadata={"help": "Side of each view in pixels."})
    max_mpp: float = field(default=DEFAULT_MAX_MPP, metadata={"help": "Coarsest µm/px a view may ask for."})
    overview_size: int = field(default=448, metadata={"help": "Longest side of the slide overview, the prompt's "
                                                              "image."})
    max_turns: int | None = field(default=None, metadata={"help": "Tool-calling turns per answer; None = budget + 1 "
                                                                  "(the views and one tissue_regions call)."})

    def __post_init__(self):
        if self.budget < 0 or self.view_size < 8 or self.max_mpp <= 0 or self.overview_size < 8:
            raise ValueError(f"expected budget >= 0, view_size >= 8, max_mpp > 0, overview_size >= 8; found "
                             f"{self.budget}, {self.view_size}, {self.max_mpp}, {self.overview_size}")
        if self.max_turns is not None and self.max_turns < 1:
            raise ValueError(f"expected max_turns >= 1 (or None), found {self.max_turns}")

    def turns(self) -> int:
        return self.max_turns if self.max_turns is not None else self.budget + 1

    def viewer(self, log_path=None) -> "SlideViewer":
        return SlideViewer(budget=self.budget, size=self.view_size, max_mpp=self.max_mpp,
                           overview_size=self.overview_size, log_path=log_path)


class ViewError(ValueError):
    """A view the viewer refuses (outside the slide, a µm/px out of range, the budget spent); the message is one
    line a model can act on. TRL turns a raised exception into the tool result ``{"error": message}``."""


@dataclass(frozen=True)
class ViewRecord:
    """One view: its index in the question (1-based), centre (x, y) in level-0 pixels, µm/px, side in output
    pixels, the level it was read from, and the field of view in µm."""

    index: int
    x: int
    y: int
    mpp: float
    size: int
    level: int
    field_um: float
    slide: str = ""
    question: str = ""

    def to_json(self) -> dict:
        return asdict(self)


class View(list):
    """What ``zoom`` returns: TRL's multimodal tool result (``[{"type": "image", ...}, {"type": "text", ...}]``,
    a list, so TRL passes it through as content blocks) that also carries ``.image`` and ``.record`` and shows its
    image in a notebook."""

    def __init__(self, image, text: str, record: ViewRecord):
        super().__init__([{"type": "image", "image": image}, {"type": "text", "text": text}])
        self.image, self.text, self.record = image, text, record

    def _repr_png_(self):
        import io

        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        return buf.getvalue()


@dataclass(frozen=True)
class Region:
    """A connected piece of tissue on the thumbnail mask: its centre and bounding box in level-0 pixels."""

    index: int
    x: int
    y: int
    left: int
    top: int
    width: int
    height: int
    area_mm2: float


def tissue_regions_of(slide, *, limit: int = DEFAULT_REGIONS, thumb_size: int = 1024) -> list[Region]:
    """The ``limit`` largest connected tissue pieces of ``slide`` (largest first), from its tissue mask."""
    from skimage.measure import label, regionprops

    mask = slide.tissue_mask(thumb_size)
    props = sorted(regionprops(label(mask.mask)), key=lambda p: (-p.area, p.bbox))[:limit]
    mpp = slide.info.mpp or 0.0
    regions = []
    for i, p in enumerate(props, 1):
        r0, c0, r1, c1 = p.bbox
        cy, cx = p.centroid
        area_px0 = p.area * mask.scale_x * mask.scale_y
        regions.append(Region(index=i, x=int(round((cx + 0.5) * mask.scale_x)), y=int(round((cy + 0.5) * mask.scale_y)),
                              left=int(c0 * mask.scale_x), top=int(r0 * mask.scale_y),
                              width=int(math.ceil((c1 - c0) * mask.scale_x)),
                              height=int(math.ceil((r1 - r0) * mask.scale_y)),
                              area_mm2=round(area_px0 * mpp * mpp / 1e6, 4)))
    return regions


class SlideViewer:
    """The slide-viewing environment (see the module docstring). One instance serves one question at a time:
    ``reset`` opens the question's slide and clears the views."""

    def __init__(self, slide=None, *, budget: int = DEFAULT_BUDGET, size: int = DEFAULT_VIEW_SIZE,
                 max_mpp: float = DEFAULT_MAX_MPP, regions: int = DEFAULT_REGIONS, overview_size: int = 448,
                 mpp_fallback: str = "objective", log_path=None):
        if budget < 0 or size < 8 or max_mpp <= 0:
            raise ValueError(f"expected budget >= 0, size >= 8, max_mpp > 0; found {budget}, {size}, {max_mpp}")
        self.budget, self.size, self.max_mpp, self.n_regions = int(budget), int(size), float(max_mpp), int(regions)
        self.overview_size, self.mpp_fallback = int(overview_size), mpp_fallback
        self.log_path = Path(log_path) if log_path else None
        self.views: list[ViewRecord] = []
        self.refused: list[str] = []  # messages of the views refused in this question (not counted as views)
        self.region_calls = 0
        self.question = ""
        self._slide = None
        self._regions: list[Region] | None = None
        if slide is not None:
            self.reset(slide=slide)

    # ------------------------------------------------------------------------------------------- episode
    def reset(self, slide=None, id=None, **row) -> str | None:  # noqa: A002 - TRL passes the row's `id` column
        """Start a question on ``slide`` (a path; TRL passes the dataset row, whose ``slide`` column names it).
        Returns the observation TRL appends to the question: the slide's size, µm/px and the view budget."""
        self.views, self.refused, self.region_calls, self._regions = [], [], 0, None
        self.question = "" if id is None else str(id)
        if slide is None:
            self._close()
            return None
        slide = str(slide)
        if self._slide is None or str(self._slide.path) != slide:
            self._close()
            self._slide = open_slide(slide, mpp_fallback=self.mpp_fallback)
        info = self._slide.info
        # short: every token of it is in every prompt (a small model's tokenizer spends ~1.5 characters a token)
        return (f"\nSlide {info.width} x {info.height} px at {info.mpp:g} µm/px. You may view up to {self.budget} "
                f"regions: zoom(x, y, mpp) shows {self.size} x {self.size} px around level-0 pixel (x, y), "
                f"mpp {info.mpp:g} to {self.max_mpp:g}.")

    # Not named close(): every public method of an environment becomes a tool the model could call.
    def _close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close()

    # ------------------------------------------------------------------------------------------- tools
    def zoom(self, x: int, y: int, mpp: float) -> list:
        """View a square region of the slide at a chosen magnification.

        Args:
            x: Centre x, level-0 pixels.
            y: Centre y, level-0 pixels.
            mpp: Microns per pixel: 0.25 is 40x, 2 is 5x.
        """
        slide = self._require_slide()
        try:
            x, y, mpp = int(round(float(x))), int(round(float(y))), float(mpp)
        except (TypeError, ValueError):
            return self._refuse(f"expected numbers for x, y and mpp, found x={x!r}, y={y!r}, mpp={mpp!r}")
        info = slide.info
        if len(self.views) >= self.budget:
            return self._refuse(f"the budget of {self.budget} views is spent; answer from what you have seen")
        if not (0 <= x < info.width and 0 <= y < info.height):
            return self._refuse(f"expected a centre inside the slide (0 <= x < {info.width}, 0 <= y < "
                                f"{info.height}), found ({x}, {y})")
        if not math.isfinite(mpp) or mpp > self.max_mpp or mpp < info.mpp * 0.99:
            return self._refuse(f"expected mpp between {info.mpp:g} and {self.max_mpp:g}, found {mpp:g}")
        half0 = self.size * slide.level0_per_pixel(mpp) / 2
        try:
            image = slide.read_region_mpp(int(round(x - half0)), int(round(y - half0)), mpp, self.size)
        except SlideError as e:
            return self._refuse(str(e))
        record = ViewRecord(index=len(self.views) + 1, x=x, y=y, mpp=round(mpp, 6), size=self.size,
                            level=slide.best_level(mpp), field_um=round(self.size * mpp, 3),
                            slide=str(slide.path), question=self.question)
        self.views.append(record)
        self._log({"event": "view", **record.to_json()})
        text = (f"view {record.index}/{self.budget}: centre ({x}, {y}) at {mpp:g} µm/px, "
                f"{record.field_um:g} µm wide")
        return View(image, text, record)

    def tissue_regions(self) -> str:
        """List the tissue pieces, largest first, with centres in level-0 pixels."""
        slide = self._require_slide()
        self.region_calls += 1
        if self._regions is None:
            self._regions = tissue_regions_of(slide, limit=self.n_regions)
        self._log({"event": "regions", "slide": str(slide.path), "question": self.question,
                   "regions": len(self._regions)})
        if not self._regions:
            return "no tissue found on the slide"
        return "\n".join(f"region {r.index}: x={r.x} y={r.y} (box {r.left},{r.top} {r.width}x{r.height} px, "
                         f"{r.area_mm2:g} mm2)" for r in self._regions)

    # ------------------------------------------------------------------------------------------- for people
    @property
    def overview(self):
        """The whole slide as a thumbnail (longest side ``overview_size``), the image a question starts from."""
        return self._require_slide().thumbnail(self.overview_size)

    @property
    def regions(self) -> list[Region]:
        """The tissue regions as objects (``tissue_regions()`` is their text for a model)."""
        if self._regions is None:
            self._regions = tissue_regions_of(self._require_slide(), limit=self.n_regions)
        return list(self._regions)

    @property
    def record(self) -> dict:
        """This question's navigation: the slide, every view, refusals and region listings (for logs and traces)."""
        return {"question": self.question, "slide": str(self._slide.path) if self._slide else None,
                "views": [v.to_json() for v in self.views], "refused": list(self.refused),
                "region_calls": self.region_calls}

    # ------------------------------------------------------------------------------------------- internals
    def _require_slide(self):
        if self._slide is None:
            raise ViewError("no slide is open: call reset(slide=PATH) first")
        return self._slide

    def _refuse(self, message: str):
        self.refused.append(message)
        self._log({"event": "refused", "slide": str(self._slide.path) if self._slide else None,
                   "question": self.question, "message": message})
        raise ViewError(message)

    def _log(self, entry: dict) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as f:  # one short line per event: appends stay whole
            f.write(json.dumps(entry) + "\n")


# ----------------------------------------------------------------------------------------------- slide questions
def slide_questions(path, *, overview_size: int = 448, mpp_fallback: str = "objective", root=None) -> list[dict]:
    """The QA records of ``path`` whose ``slide`` names a whole slide (CSV: ``slide_path``), as rows for the viewer:
    the QA columns (corpora.records.normalize_qa), ``slide`` (the resolved path, what ``SlideViewer.reset`` opens)
    and ``images`` = [the slide's overview] (PIL), the image the question starts from. A record without a slide,
    or a slide OpenSlide cannot read, raises ``corpora.records.DataError`` naming ``file:line``."""
    from corpora.records import DataError, RecordError, normalize_qa, resolve_image
    from corpora.sources import iter_raw

    rows, overviews = [], {}
    for raw in iter_raw(path, root):
        where = f"{raw.file}:{raw.line}"
        if raw.error is not None:
            raise DataError(f"{where}: {raw.error.code}: {raw.error.message}")
        data = raw.data
        slide = data.get("slide") or data.get("slide_path")
        try:
            if not slide:
                raise RecordError("missing-field", "expected a 'slide' (CSV: slide_path) naming a whole-slide image "
                                                   "for the slide viewer, found none; add it or drop tools.env")
            slide = resolve_image(raw.root, slide)
            row = normalize_qa({k: v for k, v in data.items() if k not in ("slide", "slide_path", "images", "image")},
                               raw.root, f"{Path(raw.file).stem}-{raw.line}", images=[])
            if slide not in overviews:
                with open_slide(slide, mpp_fallback=mpp_fallback) as s:
                    s.mpp_or_raise()  # the viewer states and zooms in µm/px: a slide without one fails here, not mid-run
                    overviews[slide] = s.thumbnail(overview_size)
        except RecordError as e:
            raise DataError(f"{where}: {e.code}: {e.message}") from None
        except SlideError as e:
            raise DataError(f"{where}: unreadable-slide: {e}") from None
        rows.append({**row, "slide": slide, "images": [overviews[slide]]})
    if not rows:
        raise DataError(f"{path}: expected slide questions, found no records")
    return rows
