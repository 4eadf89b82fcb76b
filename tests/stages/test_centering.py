"""center_image_features: image tokens stay centred in the saved weights (plain Qwen-VL, Auto classes), the
optimiser no longer sees the shared direction, and LoRA is refused."""
import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from corpora.demo import build_demo
from recipes import pretrain as pretrain_recipe
from stages.centering import FOLD_RATE, ImageFeatureCentering, projector_output_layer
from stages.config import ConfigError, load_config
from stages.model import resolve_model_path
from stages.sft import SFTConfig

FAST = ["batch_size=4", "lr=1e-3", "warmup_ratio=0", "max_steps=24", "train=all", "validate=strict"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"), n_train=8, n_eval=4, image_size=56)


def run(argv, capsys):
    from pathlib import Path

    assert pretrain_recipe.main(argv) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def image_tokens(model, processor, demo) -> torch.Tensor:
    paths = [demo.root / json.loads(line)["images"][0] for line in open(demo.pairs)]
    enc = processor.image_processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    feats = model.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"])
    return torch.cat(list(getattr(feats, "pooler_output", feats)))


@torch.no_grad()
def mean_norm(folder, demo) -> float:
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()  # the plain HF class, no pathor1 code
    return float(image_tokens(model, AutoProcessor.from_pretrained(folder), demo).mean(0).norm())


def test_saved_weights_produce_centred_image_tokens(demo, capsys):
    plain = run([f"data={demo.pairs}", "run=plain", *FAST], capsys)
    centred = run([f"data={demo.pairs}", "run=centred", "center_image_features=true", *FAST], capsys)
    start = mean_norm(resolve_model_path("tiny:qwen2_5_vl"), demo)
    drift, kept = mean_norm(plain, demo), mean_norm(centred, demo)
    # plain training grows the shared component; centred training keeps folding it away
    assert drift > 2 * start and kept < 0.5 * drift, (start, drift, kept)


def test_training_forward_is_centred_and_blind_to_the_shared_direction(demo):
    folder = resolve_model_path("tiny:qwen2_5_vl")
    model = AutoModelForImageTextToText.from_pretrained(folder).train()
    processor = AutoProcessor.from_pretrained(folder)
    callback = ImageFeatureCentering(model)
    tokens = image_tokens(model, processor, demo)
    assert tokens.mean(0).abs().max() < 1e-5  # centred over the batch in training
    shared = torch.randn(tokens.shape[-1])
    (tokens * shared).sum().backward()  # a loss that only moves every token along one shared direction
    # ...gives the projector bias no gradient (uncentred it would be n_tokens * shared, here ~100 per entry)
    assert projector_output_layer(model).bias.grad.abs().max() < 1e-3
    model.eval()
    with torch.no_grad():
        before = image_tokens(model, processor, demo).mean(0)
    callback.on_step_end(None, None, None)  # folds FOLD_RATE of the step's mean into the bias
    with torch.no_grad():
        after = image_tokens(model, processor, demo).mean(0)
    torch.testing.assert_close(after, (1 - FOLD_RATE) * before, rtol=0, atol=1e-5)


def test_centering_refuses_lora():
    with pytest.raises(ConfigError, match="lora"):
        load_config(SFTConfig, ["center_image_features=true", "model.lora.enabled=true"])


def test_length_buckets_keep_records_a_few_tokens_apart_in_mixed_batches():
    """The pitfall stages/centering.py names: exact length grouping sorts records whose lengths differ by one token
    (here: by class) into batches of one class; buckets of 512 put both classes in the same shuffled batches."""
    from datasets import Dataset

    from stages.engine import SeededLengthSampler, add_lengths
    from stages.sft import SFTConfig

    processor = AutoProcessor.from_pretrained(resolve_model_path("tiny:qwen3_vl"))
    texts = {0: "x=256", 1: "x=1280"}  # the second one token (or more) longer
    labels = [i % 2 for i in range(64)]
    rows = Dataset.from_list([{"images": [], "messages": [{"role": "user", "content": "where?"},
                                                          {"role": "assistant", "content": texts[c]}]} for c in labels])

    def batches(bucket):
        lengths = add_lengths(rows, processor, bucket)["length"]
        order = list(SeededLengthSampler(8, lengths, seed=0))
        return lengths, [{labels[i] for i in order[k:k + 8]} for k in range(0, len(order), 8)]

    lengths, exact = batches(1)
    assert len(set(lengths)) == 2 and all(len(classes) == 1 for classes in exact)  # one class per batch
    lengths, bucketed = batches(512)
    assert set(lengths) == {512} and sum(len(classes) == 2 for classes in bucketed) >= 6  # mixed batches
    with pytest.raises(ValueError, match="length_bucket must be >= 1"):
        load_config(SFTConfig, ["length_bucket=0"])
