"""Batched greedy generation must give exactly the batch-size-1 predictions (left padding, attention mask and
Qwen-VL's mrope position ids all have to be right for that)."""
import pytest

from evaluation.generate import generate, load_model


def mixed_samples(tmp_path, make_images):
    # Different question lengths, option counts, image sizes (-> image-token counts) and 1 or 2 images, so
    # every batch needs real left padding.
    imgs = make_images(tmp_path / "imgs", [(56, 56), (112, 84), (64, 120), (100, 100), (56, 90), (80, 64)])
    return [
        {"id": str(i), "images": imgs[i:i + 1 + i % 2], "question": "Which tissue is shown" + " here" * (3 * i) + "?",
         "options": ["Lymphoma", "Adenocarcinoma", "Normal", "Sarcoma"][: 2 + i % 3], "answer": "A", "kind": "mcq"}
        for i in range(6)
    ]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_batched_equals_batch_size_one(tmp_path, tiny_model_dir, make_images, family):
    model, processor = load_model(tiny_model_dir(family), device="cpu")
    samples = mixed_samples(tmp_path, make_images)
    one = generate(model, processor, samples, batch_size=1, max_new_tokens=10, progress=False)
    batched = generate(model, processor, samples, batch_size=4, max_new_tokens=10, progress=False)
    assert [c.text for c in batched] == [c.text for c in one]
    assert [c.n_tokens for c in batched] == [c.n_tokens for c in one]
    assert all(1 <= c.n_tokens <= 10 for c in one)
    assert len({c.text for c in one}) > 1  # the prompts really differ, so equality above is not vacuous
    # ... and the check can fail: the same batches right-padded generate after pad tokens.
    processor.tokenizer.padding_side = "right"
    wrong = generate(model, processor, samples, batch_size=4, max_new_tokens=10, progress=False)
    assert [c.text for c in wrong] != [c.text for c in one]
