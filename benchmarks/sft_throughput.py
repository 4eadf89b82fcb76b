"""SFT throughput: pathor1's SFT stage (length-grouped batches) vs a plain TRL SFTTrainer, one process, one run.

Same tiny Qwen2.5-VL, same demo reasoning samples, same batch size, steps, seed and loss (assistant tokens
only). Both train loops are timed (each writes one checkpoint at the end); every batch is counted for real
(non-padding) tokens and padding. Last line: one JSON object; "speedup" = TRL time / pathor1 time.

    python benchmarks/sft_throughput.py --steps 12 --batch 8
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import stages.compat  # noqa: E402

stages.compat.install()


def parse(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/sft_throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per trainer")
    p.add_argument("--batch", type=int, default=8, help="per-device batch size")
    p.add_argument("--n-train", type=int, default=48, help="demo training images (2 SFT samples each)")
    return p.parse_args(argv)


class Counting:
    """Wraps a collator and counts the real and padded tokens of every batch it builds."""

    def __init__(self, collator):
        self.collator, self.real, self.total = collator, 0, 0

    def __call__(self, rows):
        batch = self.collator(rows)
        self.real += int(batch["attention_mask"].sum())
        self.total += batch["attention_mask"].numel()
        return batch

    def __getattr__(self, name):  # TRL inspects attributes of its collator
        return getattr(self.collator, name)


def timed(trainer) -> dict:
    counter = trainer.data_collator = Counting(trainer.data_collator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "tokens": counter.real, "padded_tokens": counter.total,
            "tokens_per_s": round(counter.real / seconds, 1), "padding_fraction": round(1 - counter.real / counter.total, 4)}


def ours(a, data: Path) -> dict:
    from stages.engine import prepare_stage
    from stages.sft import SFTConfig, training_rows

    cfg = SFTConfig(data=str(data), max_steps=a.steps, batch_size=a.batch, lr=1e-4, run="bench",
                    group_by_length=True, logging_steps=a.steps, seed=0)
    rows, path = training_rows(cfg)
    trainer, _ = prepare_stage(cfg, stage="sft", rows=rows, init="tiny:qwen2_5_vl", data_files=[path])
    return timed(trainer)


def baseline(a, data: Path, out: Path) -> dict:
    import torch
    from datasets import Image, List
    from trl import SFTConfig as TRLConfig, SFTTrainer

    from corpora.readers import load_sft
    from stages.model import ModelConfig, load_model

    model, processor = load_model(ModelConfig(name_or_path="tiny:qwen2_5_vl", freeze_vision=True))
    rows = load_sft(data, template="cot")
    rows = rows.remove_columns([c for c in rows.column_names if c not in ("images", "messages")])
    rows = rows.cast_column("images", List(Image()))  # TRL's dataset format: images decoded to PIL on access
    # TRL 1.16 refuses assistant-only loss on vision data below transformers 5.18 (the processor's assistant mask is
    # misaligned there; pathor1 aligns it by hand). The loss mask costs no compute, so the baseline trains on the
    # whole sequence there: the same tokens through the same forward / backward.
    import transformers
    from packaging.version import Version

    assistant_only = Version(transformers.__version__) >= Version("5.18")
    args = TRLConfig(output_dir=str(out), max_steps=a.steps, per_device_train_batch_size=a.batch, learning_rate=1e-4,
                     assistant_only_loss=assistant_only, logging_steps=a.steps, save_strategy="steps", save_steps=a.steps,
                     report_to=[], seed=0, bf16=torch.cuda.is_available(), dataloader_pin_memory=torch.cuda.is_available(),
                     gradient_checkpointing=False)  # TRL defaults to checkpointing; our stage does not
    return timed(SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=processor))


def main(argv=None) -> int:
    a = parse(argv)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PATHOR1_HOME"] = str(Path(tmp) / "home")
        from corpora.demo import build_demo

        demo = build_demo(Path(tmp) / "demo", n_train=a.n_train, n_eval=4, image_size=56)
        trl = baseline(a, demo.sft, Path(tmp) / "trl")
        pathor1 = ours(a, demo.sft)
    for name, r in (("TRL SFTTrainer", trl), ("pathor1 sft", pathor1)):
        print(f"{name:15s} {r['seconds']:7.2f} s  {r['tokens_per_s']:8.1f} tokens/s  padding {r['padding_fraction']:.1%}")
    print(json.dumps({"benchmark": "sft_throughput", "steps": a.steps, "batch": a.batch, "pathor1": pathor1,
                      "trl": trl, "speedup": round(trl["seconds"] / pathor1["seconds"], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
