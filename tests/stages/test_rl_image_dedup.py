"""Each distinct prompt image preprocessed once per generation step: the same batch as the real processor."""
import numpy as np
import pytest
import torch
from PIL import Image

from stages.model import ModelConfig, build_tiny, load_model
from stages.rl.image_dedup import dedup_images

PROMPT = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return load_model(ModelConfig(name_or_path=str(build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("t")))))[1]


def images():
    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 255, (84, 112, 3), dtype=np.uint8))
    b = Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8))
    # per row, as TRL hands them: copies (equal content, distinct objects), one row with two images
    return [[a.copy()], [a.copy(), b.copy()], [b.copy()], [a.copy()]], [PROMPT + "x", 2 * PROMPT + "y", PROMPT, PROMPT + "z"]


def test_same_batch_with_each_image_preprocessed_once(processor):
    batch, texts = images()
    expected = processor(images=batch, text=texts, padding=True, return_tensors="pt")
    real = processor.image_processor
    with dedup_images(processor) as stand_in:
        first = processor(images=batch, text=texts, padding=True, return_tensors="pt")
        again = processor(images=images()[0], text=texts, padding=True, return_tensors="pt")  # e.g. the forwards' call
        assert (stand_in.images_seen, stand_in.images_processed) == (10, 2)
        assert processor.image_processor.merge_size == real.merge_size  # everything else is the real one's
    assert processor.image_processor is real
    for out in (first, again):
        assert set(out) == set(expected)
        for key in expected:
            assert torch.equal(out[key], expected[key]), key


def test_other_inputs_and_errors_go_to_the_real_processor(processor):
    arrays = [np.zeros((56, 56, 3), dtype=np.uint8)] * 2  # not PIL: passed through untouched
    expected = processor.image_processor(arrays, return_tensors="pt")
    with pytest.raises(RuntimeError), dedup_images(processor) as stand_in:
        got = processor.image_processor(arrays, return_tensors="pt")
        assert stand_in.images_processed == 0
        torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], rtol=0, atol=0)
        raise RuntimeError("the processor is restored even when the step fails")
    assert type(processor.image_processor).__name__ != "_DedupImageProcessor"
