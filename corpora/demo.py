"""The built-in demo corpus: seeded pathology-like images and, from the same latent truth, captions,
CoT SFT samples, RL/eval MCQ and yes/no questions, a zero-shot ImageFolder and retrieval pairs.

Built so that a tiny VLM can learn it on CPU in minutes while a text-only guess stays at chance:
classes are balanced and every question family has a fixed option set in a fixed order, so the
answer letter is decided by the image alone. Train and eval never share an image.

    python -m corpora.demo OUT [--seed 0] [--n-train 400] [--n-eval 400] [--image-size 112]
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import jsonlines
import numpy as np
from PIL import Image

from corpora.files import build_folder_once
from corpora.synthetic import STYLES, TISSUES, render

CLASSES = list(TISSUES)  # folder names, in label order
DISPLAY = {"normal": "normal colonic mucosa", "adenocarcinoma": "adenocarcinoma", "lymphoma": "lymphoma",
           "stroma": "fibrous stroma"}
SYNONYMS = {
    "normal": ["normal colonic mucosa", "benign colonic mucosa", "normal glandular tissue"],
    "adenocarcinoma": ["adenocarcinoma", "colorectal adenocarcinoma", "malignant glandular tumour"],
    "lymphoma": ["lymphoma", "lymphoid infiltrate", "sheets of lymphocytes"],
    "stroma": ["fibrous stroma", "connective tissue", "collagenous stroma"],
}
SUBSETS = list(STYLES)
# The size the demo recipe trains on: 16 image tokens with the tiny preset; at 56 px (4 tokens) the tiny VLM
# never learnt to read the class. Tests pass smaller sizes explicitly.
DEMO_IMAGE_SIZE = 112
DEMO_N_TRAIN = 400
# Held-out images of the demo recipe: at 400 a 5-point gain with a 3:1 fixed/broken ratio is inside the paired
# CI's reach (at 160 it takes ~6 points).
DEMO_N_EVAL = 400
STAIN = {"he": "H&E-stained section", "ihc": "immunohistochemistry (DAB) section", "cytology": "cytology smear"}
NUCLEI = {"normal": "sparse small round nuclei", "adenocarcinoma": "dense large pleomorphic nuclei",
          "lymphoma": "very dense small round nuclei", "stroma": "sparse elongated spindle nuclei"}
ARCHITECTURE = {"normal": "regular round glands with open lumens", "adenocarcinoma": "crowded irregular glands",
                "lymphoma": "diffuse sheets of cells without glands", "stroma": "streaming fibres without glands"}
DAB_FINDING = {"normal": "few brown DAB-positive nuclei", "adenocarcinoma": "most nuclei brown and DAB-positive",
               "lymphoma": "most nuclei brown and DAB-positive", "stroma": "few brown DAB-positive nuclei"}

# MCQ families: a question, a fixed option list (fixed order) and the option each class answers.
MCQ_FAMILIES = {
    "diagnosis": ("What is the most likely diagnosis?", [DISPLAY[c] for c in CLASSES],
                  {c: DISPLAY[c] for c in CLASSES}),
    "density": ("How densely packed are the nuclei?", ["sparse", "moderate", "dense", "very dense"],
                {"stroma": "sparse", "normal": "moderate", "adenocarcinoma": "dense", "lymphoma": "very dense"}),
    "architecture": ("Which architectural pattern is present?",
                     ["streaming spindle cells", "regular round glands", "diffuse sheets of small round cells",
                      "crowded irregular glands"],
                     {"stroma": "streaming spindle cells", "normal": "regular round glands",
                      "lymphoma": "diffuse sheets of small round cells", "adenocarcinoma": "crowded irregular glands"}),
    "nuclei": ("What are the size and shape of the nuclei?",
               ["small and round", "large and pleomorphic", "elongated and spindle-shaped", "medium and uniform"],
               {"lymphoma": "small and round", "adenocarcinoma": "large and pleomorphic",
                "stroma": "elongated and spindle-shaped", "normal": "medium and uniform"}),
}
# Yes/no families: each answers yes for exactly half of the classes (balanced).
YESNO_FAMILIES = {
    "glands": ("Are glands present?", {"normal", "adenocarcinoma"}),
    "malignant": ("Is this lesion malignant?", {"adenocarcinoma", "lymphoma"}),
    "round_nuclei": ("Are the nuclei small and round?", {"normal", "lymphoma"}),
}
ZEROSHOT_TEMPLATES = ["a histopathology image of CLASSNAME.", "a microscopy image showing CLASSNAME.",
                      "CLASSNAME, seen under the microscope."]


@dataclass(frozen=True)
class DemoCorpus:
    """Paths of a built demo corpus (the fixed layout of docs/ARCHITECTURE.md)."""

    root: Path
    images: Path
    pairs: Path
    pairs_csv: Path
    sft: Path
    rl: Path
    eval_mcq: Path
    eval_yesno: Path
    zeroshot: Path
    zeroshot_prompts: Path
    retrieval: Path
    meta: Path

    @classmethod
    def at(cls, root) -> "DemoCorpus":
        root = Path(root).resolve()
        return cls(root, root / "images", root / "pairs.jsonl", root / "pairs.csv", root / "sft.jsonl",
                   root / "rl.jsonl", root / "eval" / "mcq.jsonl", root / "eval" / "yesno.jsonl",
                   root / "eval" / "zeroshot", root / "eval" / "zeroshot_prompts.json",
                   root / "eval" / "retrieval.jsonl", root / "demo.json")


def _findings(tissue: str, subset: str) -> str:
    """The visible findings of an image, style included, as the captions cite them."""
    text = f"This {STAIN[subset]} shows {NUCLEI[tissue]} and {ARCHITECTURE[tissue]}."
    if subset == "ihc":
        text += f" There are {DAB_FINDING[tissue]}."
    return text


def _decisive_findings(tissue: str) -> str:
    """The SFT reasoning: the findings that decide the class, first, then the diagnosis they point to.

    Short on purpose: the imaging style (which a tiny model picks up first, from colour alone) decides no
    answer, so it is left out; every remaining token is one the image decides.
    """
    return f"{NUCLEI[tissue].capitalize()}, {ARCHITECTURE[tissue]}: {DISPLAY[tissue]}."


def _caption(rng: np.random.Generator, tissue: str, subset: str) -> str:
    name = SYNONYMS[tissue][int(rng.integers(len(SYNONYMS[tissue])))]
    return [f"{STAIN[subset].capitalize()} of {name}: {ARCHITECTURE[tissue]}, {NUCLEI[tissue]}.",
            f"{name.capitalize()} ({STAIN[subset]}) with {NUCLEI[tissue]} and {ARCHITECTURE[tissue]}.",
            f"{_findings(tissue, subset)} Consistent with {name}."][int(rng.integers(3))]


def mcq_sample(image_id: str, image: str, tissue: str, subset: str, family: str) -> dict:
    question, options, truth = MCQ_FAMILIES[family]
    letter = "ABCD"[options.index(truth[tissue])]
    return {"id": f"{image_id}-{family}", "images": [image], "question": question, "options": options,
            "answer": letter, "kind": "mcq", "solution": f"<answer> {letter} </answer>", "subset": subset,
            "reasoning": f"{_decisive_findings(tissue)} So the answer is {truth[tissue]}."}


def yesno_sample(image_id: str, image: str, tissue: str, subset: str, family: str) -> dict:
    question, yes_classes = YESNO_FAMILIES[family]
    answer = "yes" if tissue in yes_classes else "no"
    return {"id": f"{image_id}-{family}", "images": [image], "question": question, "options": [],
            "answer": answer, "kind": "yesno", "solution": f"<answer> {answer} </answer>", "subset": subset,
            "reasoning": f"{_decisive_findings(tissue)} So the answer is {answer}."}


def _plan(rng: np.random.Generator, n: int, subsets: list[str]) -> list[tuple[str, str, str, str]]:
    """Balanced (tissue, subset, mcq family, yes/no family) per image, shuffled: every class, style and
    family appears equally often, so no answer letter is more frequent than another."""
    s = len(subsets)  # mixed radix over blocks of 4 images (one per class): style fastest, then families
    cells = [(CLASSES[i % 4], subsets[(i // 4) % s], list(MCQ_FAMILIES)[(i // 4 // s) % 4],
              list(YESNO_FAMILIES)[(i // 4 // s) % 3]) for i in range(n)]
    return [cells[i] for i in rng.permutation(n)]


def _write_image(array: np.ndarray, path: Path) -> None:
    # Fixed encoder settings and no metadata: the same seed gives byte-identical files.
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=6)


def _build_split(out: Path, split: str, n: int, seed: int, image_size: int, subsets: list[str]):
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    rows = []
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    for i, (tissue, subset, family, yn_family) in enumerate(_plan(rng, n, subsets)):
        image_id = f"{split}-{i:05d}"
        image_rng = np.random.default_rng([seed, 2 if split == "train" else 3, i])
        relative = f"images/{split}/{image_id}.png"
        _write_image(render(image_rng, tissue, subset, image_size), out / relative)
        rows.append(dict(id=image_id, image=relative, tissue=tissue, subset=subset, family=family,
                         yesno_family=yn_family, caption=_caption(image_rng, tissue, subset)))
    return rows


def _write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with jsonlines.open(path, "w", sort_keys=True) as writer:
        writer.write_all(records)


def build_demo(out_dir, seed: int = 0, *, n_train: int = DEMO_N_TRAIN, n_eval: int = DEMO_N_EVAL,
               image_size: int = DEMO_IMAGE_SIZE,
               subsets=tuple(SUBSETS), overwrite: bool = False) -> DemoCorpus:
    """Write the demo corpus to `out_dir` (deterministic in all arguments) and return its paths.

    An existing corpus built with the same arguments is reused (its demo.json, written last, marks it
    complete); a different or half-written one is rebuilt.
    """
    corpus = DemoCorpus.at(out_dir)
    subsets = list(subsets)
    unknown = sorted(set(subsets) - set(SUBSETS))
    if unknown or not subsets:
        raise ValueError(f"unknown subsets {unknown}; choose from {SUBSETS}")
    if min(n_train, n_eval) < 4 or image_size < 14:
        raise ValueError(f"need n_train, n_eval >= 4 and image_size >= 14; got {n_train}, {n_eval}, {image_size}")
    meta = {"seed": seed, "sizes": {"n_train": n_train, "n_eval": n_eval, "image_size": image_size},
            "classes": CLASSES, "class_names": DISPLAY, "subsets": subsets,
            "mcq_families": list(MCQ_FAMILIES), "yesno_families": list(YESNO_FAMILIES), "format": 1}
    if corpus.meta.exists() and not overwrite and json.loads(corpus.meta.read_text()) == meta:
        return corpus
    root = corpus.root
    for stale in ("images", "eval", "demo.json"):  # never mix files of two different builds
        target = root / stale
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)

    train = _build_split(root, "train", n_train, seed, image_size, subsets)
    held_out = _build_split(root, "eval", n_eval, seed, image_size, subsets)

    pairs = [{"id": r["id"], "images": [r["image"]], "caption": r["caption"], "label": r["tissue"]} for r in train]
    _write_jsonl(corpus.pairs, pairs)
    with open(corpus.pairs_csv, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_path", "caption", "label"])
        writer.writerows([p["images"][0], p["caption"], p["label"]] for p in pairs)
    families = list(MCQ_FAMILIES)

    def family(r, shift):  # the image's own family, rotated: each stage asks an image other questions
        return families[(families.index(r["family"]) + shift) % len(families)]

    # SFT asks every training image two MCQ families (more supervision per image than one MCQ and one
    # yes/no: the held-out test is MCQ), RL a third: same images, new questions.
    _write_jsonl(corpus.sft, [s for r in train for s in (
        mcq_sample(r["id"], r["image"], r["tissue"], r["subset"], r["family"]),
        mcq_sample(r["id"], r["image"], r["tissue"], r["subset"], family(r, 2)))])
    _write_jsonl(corpus.rl, [mcq_sample(r["id"], r["image"], r["tissue"], r["subset"], family(r, 1)) for r in train])
    _write_jsonl(corpus.eval_mcq, [mcq_sample(r["id"], r["image"], r["tissue"], r["subset"], r["family"])
                                   for r in held_out])
    _write_jsonl(corpus.eval_yesno, [yesno_sample(r["id"], r["image"], r["tissue"], r["subset"], r["yesno_family"])
                                     for r in held_out])
    _write_jsonl(corpus.retrieval, [{"id": r["id"], "images": [r["image"]], "caption": r["caption"],
                                     "label": r["tissue"]} for r in held_out])
    for r in held_out:
        (corpus.zeroshot / r["tissue"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / r["image"], corpus.zeroshot / r["tissue"] / f"{r['id']}.png")
    prompts = {"0": {"classnames": {c: SYNONYMS[c] for c in CLASSES}, "templates": ZEROSHOT_TEMPLATES}}
    corpus.zeroshot_prompts.write_text(json.dumps(prompts, indent=2, sort_keys=True) + "\n")
    corpus.meta.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return corpus


def demo_corpus(home, seed: int = 0, *, n_train: int = DEMO_N_TRAIN, n_eval: int = DEMO_N_EVAL,
                image_size: int = DEMO_IMAGE_SIZE) -> DemoCorpus:
    """The demo corpus: the one place every command (stages, recipes, pathoclip, evaluation) gets it from.

    Built once into ``home/demo_corpora/<key of the arguments>`` and renamed into place atomically, so concurrent
    runs never see half a corpus and two sizes never overwrite each other.
    """
    key = f"n{n_train}-e{n_eval}-s{image_size}-seed{seed}"
    root = build_folder_once(Path(home) / "demo_corpora" / key,
                             lambda out: build_demo(out, seed, n_train=n_train, n_eval=n_eval, image_size=image_size),
                             marker="demo.json")
    return DemoCorpus.at(root)


def demo_corpus_of(path) -> DemoCorpus | None:
    """The demo corpus that file or folder ``path`` belongs to (a ``demo.json`` beside it or up to two folders
    above: ``rl.jsonl``, ``eval/mcq.jsonl``), or None."""
    path = Path(path)
    for folder in [path, *path.parents][:3]:
        if (folder / "demo.json").is_file():
            return DemoCorpus.at(folder)
    return None


def text_only_baseline(train_records, eval_records) -> float:
    """Accuracy of a blind guesser on `eval_records`: for each question text (plus its options) it answers
    the most frequent training answer of that question (global majority for unseen questions).
    The demo keeps this at chance: answers depend on the image, never on the words."""
    def key(r):
        return (r["question"], tuple(r.get("options") or ()))

    per_question, overall = defaultdict(Counter), Counter()
    for r in train_records:
        per_question[key(r)][r["answer"]] += 1
        overall[r["answer"]] += 1
    eval_records = list(eval_records)
    if not eval_records:
        raise ValueError("text_only_baseline: no eval records")
    hits = 0
    for r in eval_records:
        counts = per_question.get(key(r)) or overall
        # ties broken by the answer string so the baseline is deterministic
        guess = max(sorted(counts), key=counts.__getitem__)
        hits += guess == r["answer"]
    return hits / len(eval_records)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corpora.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=DEMO_N_TRAIN, help="training images")
    parser.add_argument("--n-eval", type=int, default=DEMO_N_EVAL, help="held-out images; default: the demo recipe's")
    parser.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE,
                        help="pixels per side (Qwen-VL patches are 14 px); default: the demo recipe's size")
    parser.add_argument("--subsets", nargs="+", default=SUBSETS, choices=SUBSETS, help="imaging styles")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if an identical corpus exists")
    args = parser.parse_args(argv)
    corpus = build_demo(args.out, args.seed, n_train=args.n_train, n_eval=args.n_eval,
                        image_size=args.image_size, subsets=args.subsets, overwrite=args.overwrite)
    with jsonlines.open(corpus.rl) as train, jsonlines.open(corpus.eval_mcq) as held_out:
        blind = text_only_baseline(train, held_out)
    print(f"demo corpus at {corpus.root}: {args.n_train} train / {args.n_eval} eval images, "
          f"text-only MCQ baseline {blind:.3f} (chance 0.25)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
