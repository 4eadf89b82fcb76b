"""Shared fixtures for evaluation tests: tiny random VLM folders and small images, built offline."""
import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Build each tiny family once per session (a few seconds each) and hand out its folder."""
    from stages.model import build_tiny

    cache = {}

    def get(family="qwen2_5_vl"):
        if family not in cache:
            cache[family] = build_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return cache[family]

    return get


@pytest.fixture
def make_images():
    return _make_images


def _make_images(folder, sizes, seed=0):
    """Random-noise PNGs of the given (height, width) sizes: different sizes give different image-token counts."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths
