"""Preprocess each distinct prompt image once per generation step, not G times (and not twice).

Why: TRL's generation step hands the processor every row's images -- each prompt's image G times -- once to
build the generation inputs and once more for the log-prob forwards. Profiled on `benchmarks/rl_step.py`
(CPU, 256 image tokens, G = 8), that image preprocessing was the largest cost of our step once the model's
prompt work was shared (~1 s of ~2 s).

How: `dedup_images(processor)` is a context manager that swaps `processor.image_processor` for a stand-in
for the duration of one generation step (a checkpoint never sees it). The stand-in preprocesses the distinct
images (by content: mode, size and a 128-bit hash of the pixels) once, caches the per-image results for the
step and assembles the batch in the original order. Each image is preprocessed independently by the Qwen-VL
image processors, so the assembled batch equals the one computed image by image (tested with torch.equal).
Anything but PIL images in, or anything but `pixel_values` + `image_grid_thw` out, goes to the real processor.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch

_FIELDS = {"pixel_values", "image_grid_thw"}


def _key(image) -> tuple:
    return image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest()


class _DedupImageProcessor:
    """Stands in for an image processor: the same call, each distinct image preprocessed once."""

    def __init__(self, real):
        self._real = real
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.images_seen = 0
        self.images_processed = 0

    def __getattr__(self, name):  # everything but the call (merge_size, patch_size, ...) is the real one's
        return getattr(self._real, name)

    def __call__(self, images=None, *args, **kwargs):
        from PIL import Image
        from transformers import BatchFeature
        from transformers.image_utils import make_flat_list_of_images

        flat = make_flat_list_of_images(images) if images is not None else []
        if args or not flat or not all(isinstance(im, Image.Image) for im in flat):
            return self._real(images, *args, **kwargs)
        settings = repr(sorted(kwargs.items()))  # the same image under other settings is another result
        keys = [(settings, *_key(im)) for im in flat]
        todo = {}
        for key, im in zip(keys, flat):
            if key not in self._cache:
                todo.setdefault(key, im)
        if todo:
            out = self._real(list(todo.values()), **kwargs)
            pixels, grids = out.get("pixel_values"), out.get("image_grid_thw")
            if set(out.keys()) != _FIELDS or not isinstance(pixels, torch.Tensor):
                return self._real(images, *args, **kwargs)
            for key, chunk, grid in zip(todo, pixels.split(grids.prod(-1).tolist()), grids):
                self._cache[key] = (chunk, grid)
            self.images_processed += len(todo)
        self.images_seen += len(flat)
        parts = [self._cache[k] for k in keys]
        return BatchFeature({"pixel_values": torch.cat([p for p, _ in parts]),
                             "image_grid_thw": torch.stack([g for _, g in parts])})


@contextmanager
def dedup_images(processor):
    """Within the block, `processor.image_processor` preprocesses each distinct image once (yields the stand-in,
    or None when the processor has no image processor, or under a transformers release stages/adapters.py does
    not list for the swap)."""
    from stages import adapters

    real = getattr(processor, "image_processor", None)
    if real is None or isinstance(real, _DedupImageProcessor) or \
            not adapters.check("transformers.ProcessorMixin.image_processor"):
        yield None
        return
    processor.image_processor = stand_in = _DedupImageProcessor(real)
    try:
        yield stand_in
    finally:
        processor.image_processor = real
