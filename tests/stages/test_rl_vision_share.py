"""Group-shared vision encoding: same log-probs and gradients as encoding every completion's copy."""
import copy

import pytest
import torch

from stages.model import build_tiny
from stages.rl.vision_share import plan_unique, share_vision_encoding, sharing_stats, unshare_vision_encoding

GRID = [1, 8, 8]  # 64 patches -> 16 image tokens per image


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import AutoModelForImageTextToText

    folder = build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny"))
    return AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()


def _batch(model, order):
    """Sequences [start, image tokens, text] whose images follow `order` (repeats = one group's completions)."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    distinct = torch.randn(max(order) + 1, 64, 3 * 2 * 14 * 14, generator=g)
    n_tokens = 16
    rows = []
    for i, _ in enumerate(order):
        text = torch.randint(10, 200, (6,), generator=torch.Generator().manual_seed(100 + i))
        rows.append(torch.cat([torch.tensor([cfg.vision_start_token_id]), torch.full((n_tokens,), cfg.image_token_id),
                               torch.tensor([cfg.vision_end_token_id]), text]))
    return dict(input_ids=torch.stack(rows), attention_mask=torch.ones(len(order), rows[0].numel(), dtype=torch.long),
                pixel_values=torch.cat([distinct[k] for k in order]), image_grid_thw=torch.tensor([GRID] * len(order)))


def _logps_and_grads(model, batch):
    model.zero_grad()
    logits = model(**batch).logits[:, :-1]
    logps = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    logps.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), grads


def test_plan_unique_finds_repeats_in_any_order():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    pixels = torch.cat([a, b, a, a, b])
    reps, owner = plan_unique(pixels, torch.tensor([[1, 2, 2]] * 5))
    assert reps == [0, 1] and owner == [0, 1, 0, 0, 1]
    near = a.clone()
    near[0, 0] += 1e-3  # a different image, however close, is encoded on its own
    assert plan_unique(torch.cat([a, near]), torch.tensor([[1, 2, 2]] * 2))[0] == [0, 1]


def test_shared_logps_and_gradients_equal_unshared(model):
    order = [0, 1, 0, 2, 1, 0, 2, 2]  # 3 prompts x (some of) their completions, shuffled as TRL does
    batch = _batch(model, order)
    ref_logps, ref_grads = _logps_and_grads(model, batch)
    shared = copy.deepcopy(model)
    assert share_vision_encoding(shared)
    logps, grads = _logps_and_grads(shared, batch)
    assert sharing_stats(shared) == {"images_seen": 8, "images_encoded": 3}
    torch.testing.assert_close(logps, ref_logps, rtol=1e-5, atol=1e-5)
    assert set(grads) == set(ref_grads)
    vision = [n for n in grads if ".visual." in n]
    assert vision, "the vision tower must receive gradients"
    for name in grads:
        # relative to the tensor's scale: fp32 sums the G copies' gradients in a different order (~1e-6)
        scale = ref_grads[name].abs().max().clamp(min=1e-12)
        assert (grads[name] - ref_grads[name]).abs().max() / scale < 1e-4, name


def test_frozen_tower_reuses_encodings_across_forwards(model):
    shared = copy.deepcopy(model)
    for p in shared.model.visual.parameters():
        p.requires_grad_(False)
    share_vision_encoding(shared)
    batch = _batch(model, [0, 0, 1, 1])
    with torch.no_grad():
        expected = model(**batch).logits
        first = shared(**batch).logits
        second = shared(**batch).logits  # e.g. the next of num_iterations: nothing new to encode
    assert sharing_stats(shared) == {"images_seen": 8, "images_encoded": 2}
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-5)


def test_deepcopy_rebinds_and_unshare_restores(model):
    shared = copy.deepcopy(model)
    share_vision_encoding(shared)
    twin = copy.deepcopy(shared)
    assert twin.model.visual.forward.__self__ is twin.model.visual
    unshare_vision_encoding(twin)
    assert sharing_stats(twin) == {} and "forward" not in vars(twin.model.visual)
