"""Load any checkpoint folder with the plain Auto classes and run batched greedy generation on QA records.

Batching decoder-only VLMs needs LEFT padding (every prompt ends where generation starts) and the attention
mask passed through; Qwen-VL's 3-D (mrope) position ids are then computed by transformers from
``input_ids`` + ``mm_token_type_ids`` + ``attention_mask``, which is why we hand ``generate`` every processor
output unchanged. ``tests/evaluation/test_generate.py`` checks batched == batch-size-1 predictions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path



@dataclass
class Completion:
    text: str
    n_tokens: int  # generated tokens up to and including the first end-of-sequence token


def pick_device(device: str | None = None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: str | Path, *, device: str | None = None, dtype: str = "auto"):
    """(model, processor) from a folder via AutoModelForImageTextToText / AutoProcessor; no remote code."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = pick_device(device)
    if dtype == "auto":  # bf16 where it is fast (CUDA), fp32 on CPU where bf16 matmuls are slow
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    processor = AutoProcessor.from_pretrained(str(path))
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=getattr(torch, dtype))
    model.to(device).eval()
    return model, processor


def chat_prompt(processor, sample: dict, template: str) -> str:
    """The user turn rendered by the shared prompt template, images first, through the model's chat template."""
    from corpora.chat import user_content
    from corpora.prompts import render_prompt

    text = render_prompt(template, sample["question"], sample.get("options") or [])
    messages = [{"role": "user", "content": user_content(text, len(sample["images"]))}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def eos_ids(model, processor) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if processor.tokenizer.eos_token_id is not None:
        ids.add(processor.tokenizer.eos_token_id)
    return ids


def load_images(paths: list[str]):
    from evaluation.images import open_rgb

    return [open_rgb(p) for p in paths]


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Decoding:
    """How answers are generated; recorded with every score (decoding changes benchmark scores by points)."""
    max_new_tokens: int = _f(256, "Generation budget per answer (tokens).")
    samples: int = _f(1, "Answers per question: 1 = greedy; above 1 they are sampled (pass@k, majority@k).")
    temperature: float = _f(1.0, "Sampling temperature (samples > 1).")
    top_p: float = _f(1.0, "Nucleus sampling (samples > 1).")
    top_k: int = _f(0, "Top-k sampling, 0 = off (samples > 1).")
    seed: int = _f(0, "Sampling seed.")

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.samples > 1 and self.temperature <= 0:
            raise ValueError(f"sampling {self.samples} answers needs temperature > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.samples == 1

    def record(self) -> dict:
        if self.greedy:
            return {"mode": "greedy", "max_new_tokens": self.max_new_tokens}
        return {"mode": "sample", "samples": self.samples, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "seed": self.seed, "max_new_tokens": self.max_new_tokens}


def generate(model, processor, samples: list[dict], *, template: str = "cot", batch_size: int = 8,
             max_new_tokens: int = 256, progress: bool = True) -> list[Completion]:
    """Greedy completions for ``samples`` (QA records), in input order."""
    runs = generate_many(model, processor, samples, Decoding(max_new_tokens=max_new_tokens), template=template,
                         batch_size=batch_size, progress=progress)
    return [r[0] for r in runs]


def generate_many(model, processor, samples: list[dict], decoding: Decoding, *, template: str = "cot",
                  batch_size: int = 8, progress: bool = True) -> list[list[Completion]]:
    """``decoding.samples`` completions per sample (greedy when 1), in input order."""
    import torch

    prompts = [chat_prompt(processor, s, template) for s in samples]
    # Similar lengths share a batch, so little compute goes to padding; results are put back in input order.
    order = sorted(range(len(samples)), key=lambda i: (len(prompts[i]), len(samples[i]["images"])))
    eos = eos_ids(model, processor)
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = next(iter(eos), 0)
    k = decoding.samples
    if decoding.greedy:
        knobs = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        knobs = dict(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p,
                     top_k=decoding.top_k or None, num_return_sequences=k)
        torch.manual_seed(decoding.seed)
    from tqdm.auto import tqdm

    results: list[list[Completion] | None] = [None] * len(samples)
    bar = tqdm(total=len(samples), desc="generate", unit="sample", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        images = [im for i in idx for im in load_images(samples[i]["images"])]
        inputs = processor(text=[prompts[i] for i in idx], images=images or None, padding=True,
                           return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=decoding.max_new_tokens, pad_token_id=pad_id, **knobs)
        new_tokens = out[:, inputs["input_ids"].shape[1]:].tolist()  # k consecutive rows per prompt
        for j, i in enumerate(idx):
            results[i] = [_completion(processor, toks, eos) for toks in new_tokens[j * k:(j + 1) * k]]
        bar.update(len(idx))
    bar.close()
    return results  # type: ignore[return-value]


def _completion(processor, toks: list[int], eos: set[int]) -> Completion:
    stop = next((j for j, t in enumerate(toks) if t in eos), None)
    toks = toks if stop is None else toks[: stop + 1]
    return Completion(text=processor.tokenizer.decode(toks, skip_special_tokens=True), n_tokens=len(toks))
