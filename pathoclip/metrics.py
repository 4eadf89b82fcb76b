"""Embedding-level metrics for an open_clip model: zero-shot, few-shot linear probe, retrieval recalls.

Pure functions of (model, preprocess, tokenizer, data). The evaluation suite reaches them through
``python -m pathoclip.evaluate`` (JSON out), so the code lives once, here.

Retrieval is reported in BOTH directions, separately: image->text and text->image recalls differ whenever
several captions share an image or similarities are asymmetric, and picking one silently hides that.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
RECALL_KS = (1, 5, 10, 20)
CLASSNAME = "CLASSNAME"


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_images(model, preprocess, paths: Sequence[str], *, batch_size: int = 64, progress: bool = False):
    """L2-normalised image embeddings, float32 on CPU, one row per path (in order)."""
    device, rows = _device_of(model), []
    batches = range(0, len(paths), batch_size)
    for start in tqdm(batches, desc="images", disable=not progress):
        pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[start:start + batch_size]])
        rows.append(F.normalize(model.encode_image(pixels.to(device)).float(), dim=-1).cpu())
    return torch.cat(rows) if rows else torch.empty(0)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], *, batch_size: int = 256, progress: bool = False):
    """L2-normalised text embeddings, float32 on CPU, one row per text (in order)."""
    device, rows = _device_of(model), []
    batches = range(0, len(texts), batch_size)
    for start in tqdm(batches, desc="texts", disable=not progress):
        tokens = tokenizer(list(texts[start:start + batch_size])).to(device)
        rows.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(rows) if rows else torch.empty(0)


# ------------------------------------------------------------------------------------------- zero-shot


def read_prompts(path) -> list[dict]:
    """Prompt sets from ``{"0": {"classnames": {folder: [synonyms...]}, "templates": ["... CLASSNAME ..."]}}``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected an object of prompt sets, e.g. {{\"0\": {{...}}}}")
    sets = []
    for key, entry in raw.items():
        names, templates = entry.get("classnames"), entry.get("templates")
        if not isinstance(names, dict) or not names:
            raise ValueError(f"{path}: prompt set {key!r} needs 'classnames': {{folder: [synonyms...]}}")
        if not isinstance(templates, list) or not templates:
            raise ValueError(f"{path}: prompt set {key!r} needs a non-empty 'templates' list")
        bad = [t for t in templates if CLASSNAME not in t]
        if bad:
            raise ValueError(f"{path}: prompt set {key!r}: template {bad[0]!r} has no {CLASSNAME} placeholder")
        names = {folder: [syn] if isinstance(syn, str) else list(syn) for folder, syn in names.items()}
        sets.append({"name": str(key), "classnames": names, "templates": templates})
    return sets


def image_folder(root) -> tuple[list[str], np.ndarray, list[str]]:
    """(paths, integer labels, class folder names sorted) of an ImageFolder ``root/<class>/*.png``."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(f) for f in files]
        labels += [index] * len(files)
    if not paths:
        raise ValueError(f"{root}: no images found in class sub-folders (expected {root}/<class>/*.png)")
    return paths, np.asarray(labels), classes


def class_embeddings(model, tokenizer, classnames: dict[str, list[str]], templates: list[str], classes: list[str]):
    """One row per class: the normalised mean of its (synonym x template) text embeddings."""
    rows = []
    for folder in classes:
        texts = [t.replace(CLASSNAME, syn) for syn in classnames[folder] for t in templates]
        rows.append(F.normalize(encode_texts(model, tokenizer, texts).mean(0), dim=-1))
    return torch.stack(rows)


def zero_shot(model, preprocess, tokenizer, folder, prompts_path, *, image_features=None) -> dict:
    """Top-1 accuracy of nearest-class-prompt classification on an ImageFolder, per prompt set and mean."""
    paths, labels, classes = image_folder(folder)
    features = encode_images(model, preprocess, paths) if image_features is None else image_features
    per_set = {}
    for prompt_set in read_prompts(prompts_path):
        missing = [c for c in classes if c not in prompt_set["classnames"]]
        if missing:
            raise ValueError(f"{prompts_path}: prompt set {prompt_set['name']!r} has no classnames for "
                             f"folders {missing} of {folder}")
        weights = class_embeddings(model, tokenizer, prompt_set["classnames"], prompt_set["templates"], classes)
        predicted = (features @ weights.T).argmax(-1).numpy()
        per_set[prompt_set["name"]] = float((predicted == labels).mean())
    return {"accuracy": float(np.mean(list(per_set.values()))), "per_prompt_set": per_set,
            "chance": 1.0 / len(classes), "n_images": len(paths), "n_classes": len(classes)}


# --------------------------------------------------------------------------------------- linear probe


def linear_probe(features, labels, *, shots: Sequence[int] = (2, 8, 16), seeds: Sequence[int] = (0, 1, 2),
                 test_features=None, test_labels=None) -> dict:
    """Few-shot logistic-regression probe on frozen features: k examples per class, mean/std over seeds.

    Without a separate test set, the images not drawn as shots are the test set. A k that leaves a class
    without a test image (or without k training images) is reported as skipped, never silently shrunk.
    """
    from sklearn.linear_model import LogisticRegression

    features, labels = np.asarray(features, dtype=np.float32), np.asarray(labels)
    classes = np.unique(labels)
    result = {}
    for k in shots:
        smallest = min(int((labels == c).sum()) for c in classes)
        if smallest < k + (1 if test_features is None else 0):
            result[f"{k}-shot"] = {"skipped": f"a class has only {smallest} images"}
            continue
        scores = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            train = np.concatenate([rng.choice(np.flatnonzero(labels == c), k, replace=False) for c in classes])
            if test_features is None:
                test = np.setdiff1d(np.arange(len(labels)), train)
                x_test, y_test = features[test], labels[test]
            else:
                x_test, y_test = np.asarray(test_features, dtype=np.float32), np.asarray(test_labels)
            probe = LogisticRegression(max_iter=1000, random_state=seed).fit(features[train], labels[train])
            scores.append(float((probe.predict(x_test) == y_test).mean()))
        result[f"{k}-shot"] = {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "per_seed": scores}
    return result


def few_shot(model, preprocess, folder, **kwargs) -> dict:
    """``linear_probe`` on the embeddings of an ImageFolder (shots drawn per class, the rest tested)."""
    paths, labels, _ = image_folder(folder)
    return linear_probe(encode_images(model, preprocess, paths).numpy(), labels, **kwargs)


# ------------------------------------------------------------------------------------------ retrieval


def retrieval_recalls(similarity, text_to_image: Sequence[int] | None = None, ks: Sequence[int] = RECALL_KS) -> dict:
    """Recall@k in both directions from an (images x texts) similarity matrix.

    ``text_to_image[j]`` is the row of text j's image (default: pair i <-> i). image->text counts a hit when
    ANY caption of the image is in its top k; text->image when the text's image is in its top k.
    """
    sim = torch.as_tensor(similarity, dtype=torch.float32)
    n_images, n_texts = sim.shape
    owner = torch.arange(n_texts) if text_to_image is None else torch.as_tensor(text_to_image)
    if owner.shape != (n_texts,) or owner.min() < 0 or owner.max() >= n_images:
        raise ValueError(f"text_to_image must give an image row (0..{n_images - 1}) for each of {n_texts} texts")
    is_match = owner[None, :] == torch.arange(n_images)[:, None]  # images x texts
    i2t_order = sim.argsort(dim=1, descending=True)
    t2i_order = sim.argsort(dim=0, descending=True)
    # rank of the best-ranked correct caption per image / of the correct image per text
    i2t_rank = torch.where(is_match.gather(1, i2t_order), torch.arange(n_texts), n_texts).min(1).values
    t2i_rank = (t2i_order == owner[None, :]).float().argmax(0)
    recall = lambda ranks, k: float((ranks < k).double().mean())  # noqa: E731
    return {"image_to_text": {f"R@{k}": recall(i2t_rank, k) for k in ks},
            "text_to_image": {f"R@{k}": recall(t2i_rank, k) for k in ks},
            "n_images": n_images, "n_texts": n_texts}


def retrieval(model, preprocess, tokenizer, image_paths: Sequence[str], captions: Sequence[str], **kwargs) -> dict:
    """Recalls for aligned lists (caption j belongs to image_paths[j]); repeated images count once."""
    unique = list(dict.fromkeys(image_paths))
    row = {p: i for i, p in enumerate(unique)}
    images = encode_images(model, preprocess, unique)
    texts = encode_texts(model, tokenizer, captions)
    return retrieval_recalls(images @ texts.T, [row[p] for p in image_paths], **kwargs)
