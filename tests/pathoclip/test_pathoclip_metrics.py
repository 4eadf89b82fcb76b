"""Metric functions checked on hand-built cases whose answers are known."""
import json

import numpy as np
import pytest
import torch

from pathoclip.metrics import linear_probe, read_prompts, retrieval_recalls


def test_recalls_differ_by_direction_on_a_hand_built_case():
    # images x texts. Column view: each text's highest image is its own (t2i R@1 = 1).
    # Row view: image 0 prefers text 1 (0.9 > 0.5), image 1 prefers text 1 (its own) -> i2t R@1 = 0.5.
    sim = torch.tensor([[0.5, 0.9],
                        [0.1, 1.0]])
    r = retrieval_recalls(sim, ks=(1, 2))
    assert r["image_to_text"] == {"R@1": 0.5, "R@2": 1.0}
    assert r["text_to_image"] == {"R@1": 1.0, "R@2": 1.0}


def test_recalls_from_embeddings_with_known_ranks():
    # 4 orthogonal image directions; text j is image j's direction rotated towards image (j+1)%4 for j odd,
    # so texts 1 and 3 are closer to the NEXT image: t2i R@1 = 0.5, and both directions reach 1.0 by R@2.
    images = torch.eye(4)
    texts = torch.eye(4).clone()
    texts[1] = torch.tensor([0.0, 0.6, 0.8, 0.0])
    texts[3] = torch.tensor([0.8, 0.0, 0.0, 0.6])
    r = retrieval_recalls(images @ texts.T, ks=(1, 2, 5))
    assert r["text_to_image"]["R@1"] == 0.5
    # every image still ranks its own text first (image 2: own 1.0 > text 1's 0.8; image 0: 1.0 > 0.8)
    assert r["image_to_text"]["R@1"] == 1.0
    assert r["text_to_image"]["R@2"] == 1.0 and r["image_to_text"]["R@5"] == 1.0


def test_recalls_with_several_captions_per_image():
    # two captions of image 0 and one of image 1; image 0's best text is its second caption -> still a hit
    sim = torch.tensor([[0.2, 0.9, 0.5],
                        [0.8, 0.1, 0.7]])
    r = retrieval_recalls(sim, text_to_image=[0, 0, 1], ks=(1,))
    assert r["image_to_text"]["R@1"] == 0.5  # image 1 prefers caption 0 (of image 0)
    # caption 0 finds image 1 first (0.8 > 0.2); captions 1 and 2 find their own image first
    assert r["text_to_image"]["R@1"] == pytest.approx(2 / 3)


def test_recalls_reject_bad_owner_index():
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_recalls(torch.zeros(2, 2), text_to_image=[0, 5])


def test_linear_probe_separates_clusters_and_random_labels_stay_near_chance():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 4
    labels = np.repeat(np.arange(4), 30)
    features = centres[labels] + rng.normal(size=(120, 16))
    good = linear_probe(features, labels, shots=(2, 8), seeds=(0, 1))
    assert good["2-shot"]["mean"] > 0.9 and good["8-shot"]["mean"] > 0.95
    noise = linear_probe(rng.normal(size=(120, 16)), labels, shots=(8,), seeds=(0, 1, 2))
    assert noise["8-shot"]["mean"] < 0.45  # chance is 0.25
    assert linear_probe(features, labels, shots=(30,))["30-shot"] == {"skipped": "a class has only 30 images"}


def test_read_prompts_reports_bad_templates(tmp_path):
    p = tmp_path / "prompts.json"
    p.write_text(json.dumps({"0": {"classnames": {"a": ["x"]}, "templates": ["a photo"]}}))
    with pytest.raises(ValueError, match="has no CLASSNAME placeholder"):
        read_prompts(p)
    p.write_text('{"0": ')
    with pytest.raises(ValueError, match=r"prompts.json:1: not valid JSON"):
        read_prompts(p)
    p.write_text(json.dumps({"0": {"classnames": {"a": "x", "b": ["y", "z"]}, "templates": ["CLASSNAME."]}}))
    assert read_prompts(p)[0]["classnames"] == {"a": ["x"], "b": ["y", "z"]}
