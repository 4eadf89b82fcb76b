"""``make gpu-check``: pretrain -> SFT -> RL on one GPU, offline, in a few minutes; prints ONE JSON line.

Made for a machine with one NVIDIA GPU and no internet that has torch, transformers, accelerate, peft, safetensors,
tokenizers, pandas, pyarrow but not the rest of pathor1's dependencies: ``make gpu-wheels`` (scripts/gpu_wheels.sh)
downloads those as wheels into ``.gpu-wheels/`` on a machine with a registry; this script installs the ones the
machine lacks into a private folder (``pip install --no-index --no-deps --target``), never into its Python.

Each stage runs as its own process (as the recipes run them) on a random-initialised Qwen2.5-VL of realistic
width built from config (~0.5 B parameters: a 24-layer 896-wide language model, an 8-block 1280-wide vision
tower), bf16, SDPA attention and gradient checkpointing: pretrain -> SFT -> RL, and SFT again under DeepSpeed
ZeRO-2 on one rank (``accelerate launch`` with a one-process DeepSpeed config; deepspeed and its small
dependencies are carried wheels too). A further process checks the RL shared-prefix forward under gradient
checkpointing (train mode, non-reentrant): per-token log-probs of one TRL batch shared vs unshared (TRL's own
forward) within bf16 tolerance (torch.testing's for bfloat16: rtol 1.6e-2, atol 1e-5), and the backward through
both. The JSON line holds, per stage: tokens/s, peak GPU memory, the first and last logged loss, the engine that
ran; the shared-prefix comparison; and whether every published registry entry loads with plain
``AutoModelForImageTextToText`` and generates.

    python scripts/gpu_check.py                          # the GPU check (< 5 min on one H200, by its step counts)
    python scripts/gpu_check.py --device cpu --tiny      # the same path on a CPU with the tiny preset (dry run)

Imports nothing of pathor1 at module level: the stage modules are imported only after the wheels are on the path.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# module -> distribution wheel that provides it; what pathor1's stages import beyond the GPU machine's packages.
CARRIED = {"trl": "trl", "datasets": "datasets", "dill": "dill", "multiprocess": "multiprocess",
           "xxhash": "xxhash", "jsonlines": "jsonlines", "attrs": "attrs", "fsspec": "fsspec",
           "pyarrow": "pyarrow",
           # the ZeRO-2 stage: deepspeed is an sdist on PyPI, so `make gpu-wheels` builds its (ops-free) wheel
           "deepspeed": "deepspeed", "hjson": "hjson", "cpuinfo": "py-cpuinfo", "msgpack": "msgpack",
           "ninja": "ninja", "einops": "einops", "pydantic": "pydantic", "pydantic_core": "pydantic-core",
           "annotated_types": "annotated-types", "typing_inspection": "typing-inspection",
           "typing_extensions": "typing-extensions"}
# datasets / TRL refuse older pyarrow / fsspec at import; pydantic 2.14 needs typing_extensions >= 4.16
MIN_VERSIONS = {"pyarrow": (21, 0), "fsspec": (2023, 1), "typing_extensions": (4, 16)}
BUILT = ("deepspeed",)  # sdist only on PyPI: `make gpu-wheels` builds its wheel (DS_BUILD_OPS=0, no compiled ops)
RUN = "gpu-check"
# ~0.5 B parameters: Qwen2.5-0.5B's language-model widths, a shortened Qwen2.5-VL vision tower.
REALISTIC_TEXT = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2)
REALISTIC_VISION = dict(depth=8, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=896,
                        fullatt_block_indexes=[3, 7], window_size=112)
MROPE_64 = [8, 12, 12]  # sums to head_dim / 2 = 896 / 14 / 2


def log(msg: str) -> None:
    print(f"[gpu-check] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ carried wheels


def _version_tuple(module: str) -> tuple[int, ...] | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(p) for p in version(module).split(".")[:2] if p.isdigit())
    except (PackageNotFoundError, ValueError):
        return None


def missing_modules() -> list[str]:
    """Carried modules this Python lacks (or has too old)."""
    out = []
    for module in CARRIED:
        if importlib.util.find_spec(module) is None:
            out.append(module)
        elif module in MIN_VERSIONS and (_version_tuple(module) or (0,)) < MIN_VERSIONS[module]:
            out.append(module)
    return out


def install_wheels(wheels: Path, target: Path) -> list[str]:
    """Install the carried wheels this Python lacks into ``target`` (offline) and put it first on the path."""
    need = missing_modules()
    if need:
        files = [f for m in need for f in sorted(wheels.glob(f"{CARRIED[m].replace('-', '_')}-*.whl"))]
        absent = [m for m in need if not list(wheels.glob(f"{CARRIED[m].replace('-', '_')}-*.whl"))]
        if absent:
            raise SystemExit(f"gpu-check: this Python lacks {absent} and {wheels} has no wheel for them: run "
                             f"`make gpu-wheels` on a machine with a package registry and copy {wheels} here")
        log(f"installing {len(files)} carried wheels into {target}: {', '.join(f.name for f in files)}")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                        "--find-links", str(wheels), "--target", str(target), *map(str, files)],
                       check=True, timeout=300)
    sys.path[:0] = [str(target), str(REPO)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(target), str(REPO), os.environ.get("PYTHONPATH", "")])
    return need


# ------------------------------------------------------------------------------------------ model and data


def build_model(out: Path, *, tiny: bool, image_size: int) -> tuple[Path, int]:
    """A random-initialised Qwen2.5-VL folder (config, safetensors, processor); returns (folder, parameters)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    from stages.model import build_tiny

    folder = build_tiny("qwen2_5_vl", out, image_size=image_size)  # tokenizer, processor, chat template
    if not tiny:  # the tiny preset's config rebuilt at realistic width (derived fields such as layer_types recomputed)
        tiny_config = AutoConfig.from_pretrained(folder).to_dict()
        text = {k: v for k, v in tiny_config["text_config"].items() if k not in ("layer_types", "head_dim")}
        text.update(REALISTIC_TEXT, rope_parameters={**text["rope_parameters"], "mrope_section": MROPE_64})
        vision = {**tiny_config["vision_config"], **REALISTIC_VISION}
        tokens = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                  "tie_word_embeddings")
        config = AutoConfig.for_model("qwen2_5_vl", text_config=text, vision_config=vision,
                                      **{k: tiny_config[k] for k in tokens if k in tiny_config})
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
        model.generation_config = GenerationConfig.from_pretrained(folder)  # the preset's end-of-turn / pad ids
        for f in folder.glob("model*.safetensors*"):
            f.unlink()
        model.save_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    return folder, sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ one stage (child)


def stage_child(stage: str, argv: list[str], result: Path) -> None:
    """Run one stage in this process and write its measurements to ``result``."""
    import torch
    from transformers import Trainer

    from stages.config import load_config
    from stages.engine import ChatCollator

    tokens = {"n": 0}
    collate, train = ChatCollator.__call__, Trainer.train
    histories = []

    def counting_collate(self, rows):  # pretrain / SFT: every token of every batch the model sees
        batch = collate(self, rows)
        tokens["n"] += int(batch["attention_mask"].sum())
        return batch

    def recording_train(self, *args, **kwargs):
        out = train(self, *args, **kwargs)
        histories.append(list(self.state.log_history))
        return out

    ChatCollator.__call__, Trainer.train = counting_collate, recording_train  # observe only
    if stage == "rl":
        from stages.rl import RLConfig
        from stages.rl import run as run_stage
        cfg = load_config(RLConfig, argv)
    else:
        module = __import__(f"stages.{stage}", fromlist=["run"])
        cfg = load_config(getattr(module, "PretrainConfig" if stage == "pretrain" else "SFTConfig"), argv)
        run_stage = module.run
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    folder = run_stage(cfg)
    seconds = time.perf_counter() - start
    history = histories[-1] if histories else []
    losses = [h["loss"] for h in history if "loss" in h]
    rewards = [h["reward"] for h in history if "reward" in h]  # RL: the mean reward of each step
    runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), seconds)
    if stage == "rl":  # TRL counts prompt + completion tokens (cumulative)
        tokens["n"] = int(max((h.get("num_tokens", 0) for h in history), default=0))
    result.write_text(json.dumps({
        "entry": str(folder), "steps": sum(1 for h in history if "loss" in h),
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        **({"reward_first": rewards[0], "reward_last": rewards[-1]} if rewards else {}),
        "tokens": tokens["n"], "train_seconds": round(runtime, 2), "stage_seconds": round(seconds, 2),
        "tokens_per_s": round(tokens["n"] / runtime, 1) if runtime else None,
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }))


def run_stage_process(stage: str, argv: list[str], work: Path, timeout: int, *, name: str | None = None,
                      launcher: list[str] = ()) -> dict:
    """One stage in its own process (under ``launcher``, e.g. accelerate launch); its measurements."""
    name = name or stage
    result = work / f"{name}.json"
    command = [*(launcher or [sys.executable]), __file__, "--stage-child", stage, "--result", str(result), "--",
               *argv]
    log(f"{name}: {' '.join(command[1:8])} ...")
    with open(work / f"{name}.log", "w") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=os.environ)
    if proc.returncode != 0:
        tail = (work / f"{name}.log").read_text()[-3000:]
        raise RuntimeError(f"stage {name} exited {proc.returncode}; log {work / f'{name}.log'}:\n{tail}")
    out = json.loads(result.read_text())
    manifest = json.loads((Path(out["entry"]) / "manifest.json").read_text())
    out["engine"] = (manifest.get("extra") or {}).get("training", {}).get("engine")
    return out


def zero2_launcher(work: Path) -> list[str]:
    """``accelerate launch`` with DeepSpeed ZeRO-2 on one process (the repository's DeepSpeed JSON)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = work / "zero2_one_rank.yaml"
    config.write_text("\n".join([
        "compute_environment: LOCAL_MACHINE", "distributed_type: DEEPSPEED",
        f"deepspeed_config: {{deepspeed_config_file: {REPO / 'recipes/configs/accelerate/ds_zero2_cpu.json'}, "
        "zero3_init_flag: false}",
        "num_machines: 1", "num_processes: 1", "machine_rank: 0", "main_process_ip: 127.0.0.1",
        f"main_process_port: {port}", "rdzv_backend: static", "same_network: true", "use_cpu: false", ""]))
    # no mixed_precision here: accelerate refuses it beside a DeepSpeed JSON, whose bf16 "auto" follows the
    # stage's TrainingArguments (bf16 on CUDA: model.dtype=bfloat16)
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]


# ------------------------------------------------------------------------------------------ shared prefix (child)
BF16_TOLERANCE = dict(rtol=1.6e-2, atol=1e-5)  # torch.testing.assert_close's defaults for bfloat16


def prefix_child(model_dir: str, rl_data: str, result: Path, device: str, completion_tokens: int) -> None:
    """Per-token log-probs of one TRL batch, shared-prefix forward vs TRL's own, both under (non-reentrant)
    gradient checkpointing in train mode, then a backward through each; written to ``result``."""
    import torch

    from corpora.readers import load_qa
    from stages.model import ModelConfig, load_model
    from stages.rl import prefix_cache
    from stages.rl.config import RLConfig
    from stages.rl.trainer import PathoGRPOTrainer
    from stages.rl.training import grpo_args, pad_prompts_left, prompt_dataset

    prompts, G = 4, 4
    dtype = "bfloat16" if device == "cuda" else "float32"
    model, processor = load_model(ModelConfig(name_or_path=model_dir, dtype=dtype, attn_implementation="sdpa"))
    pad_prompts_left(processor)
    dataset = prompt_dataset(load_qa(rl_data).select(range(prompts)), "cot")
    # DAPO (the GPU configs' algorithm) with truncated completions kept: a random model rarely ends its answer
    # within the budget, and masked-out completions would leave no token to compare
    cfg = RLConfig(algorithm="dapo", init="unused", num_generations=G, batch_size=prompts,
                   max_completion_length=completion_tokens, max_steps=1, lr=1e-6, rewards=["format"],
                   reward_weights=[1.0], model={"dtype": dtype}, mask_truncated_completions=False,
                   dynamic_sampling=False).resolved()
    trainer = PathoGRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                               args=grpo_args(cfg, result.parent / "prefix-out"), train_dataset=dataset,
                               processing_class=processor)
    trainer.model.eval()
    batch = trainer._generate_and_score_completions([dataset[i] for i in range(prompts) for _ in range(G)])
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    keep, completion_mask = batch["completion_ids"].size(1), batch["completion_mask"].bool()
    extra = {k: batch[k] for k in ("pixel_values", "image_grid_thw", "num_images", "mm_token_type_ids") if k in batch}
    trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer.model.train()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    out = {}
    for share in (True, False):
        trainer.share_prefix = share
        before = trainer.prefix_stats.shared_forwards
        trainer.model.zero_grad(set_to_none=True)
        logps = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep, **extra)[0]
        (logps * completion_mask).sum().backward()  # the checkpointed layers recompute here
        grads = torch.cat([p.grad.float().flatten() for p in trainer.model.parameters() if p.grad is not None])
        out[share] = (logps.detach().float(), grads, trainer.prefix_stats.shared_forwards > before)
    (shared, g_shared, ran), (plain, g_plain, _) = out[True], out[False]
    diff = (shared - plain).abs()[completion_mask]
    close = torch.isclose(shared, plain, **BF16_TOLERANCE)[completion_mask]
    result.write_text(json.dumps({
        "shared_forward_ran": bool(ran), "checkpointed_layers": len(prefix_cache.checkpointed_layers(
            trainer.accelerator.unwrap_model(trainer.model))),
        "completion_tokens": int(completion_mask.sum()), "logp_max_abs_diff": round(float(diff.max()), 5),
        "logp_mean_abs_diff": round(float(diff.mean()), 6), "within_bf16_tolerance": bool(close.all()),
        "tolerance": BF16_TOLERANCE,
        "grad_cosine": round(float(torch.nn.functional.cosine_similarity(g_shared, g_plain, dim=0)), 6),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }))


def run_prefix_process(model_dir: Path, rl_data: Path, work: Path, device: str, completion_tokens: int,
                       timeout: int) -> dict:
    result = work / "shared_prefix.json"
    command = [sys.executable, __file__, "--prefix-child", str(model_dir), "--result", str(result),
               "--device", device, "--", str(rl_data), str(completion_tokens)]
    log("shared prefix under gradient checkpointing: shared vs unshared log-probs")
    with open(work / "shared_prefix.log", "w") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=os.environ)
    if proc.returncode != 0:
        tail = (work / "shared_prefix.log").read_text()[-3000:]
        raise RuntimeError(f"the shared-prefix check exited {proc.returncode}:\n{tail}")
    return json.loads(result.read_text())


def loads(folder: str, device: str, image: Path) -> bool:
    """The published folder loads with plain transformers classes and generates from an image."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype).to(device).eval()
        processor = AutoProcessor.from_pretrained(folder)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=[text], images=[Image.open(image).convert("RGB")], return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        ok = out.shape[1] > inputs["input_ids"].shape[1]
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        return bool(ok)
    except Exception as e:  # reported in the JSON line, not raised: the other entries are still checked
        log(f"loading {folder} failed: {type(e).__name__}: {e}")
        return False


# ------------------------------------------------------------------------------------------ the check


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cuda (the check) or cpu (dry run)")
    p.add_argument("--tiny", action="store_true", help="the tiny 2-layer preset instead of the ~0.5 B model")
    p.add_argument("--wheels", type=Path, default=REPO / ".gpu-wheels", help="folder of `make gpu-wheels`")
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a fresh one under /tmp)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps of pretrain and SFT (default 30; tiny 3)")
    p.add_argument("--rl-steps", type=int, default=None, help="RL steps (default 8; tiny 1)")
    p.add_argument("--stage-timeout", type=int, default=240, help="seconds a stage process may run")
    p.add_argument("--zero2-steps", type=int, default=None, help="SFT steps under DeepSpeed ZeRO-2 (default 10; tiny 2)")
    p.add_argument("--stage-child", help=argparse.SUPPRESS)
    p.add_argument("--prefix-child", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.stage_child:
        stage_child(args.stage_child, [a for a in rest if a != "--"], args.result)
        return 0
    if args.prefix_child:
        rl_data, completion_tokens = [a for a in rest if a != "--"]
        prefix_child(args.prefix_child, rl_data, args.result, args.device, int(completion_tokens))
        return 0

    t0 = time.perf_counter()
    work = args.work or Path(f"/tmp/pathor1-gpu-check-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    carried = install_wheels(args.wheels, work / "site")
    os.environ.update(PATHOR1_HOME=str(work / "home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the children must not see a GPU either
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed prints its CPU fallback on stdout
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu-check: torch sees no CUDA device (use --device cpu --tiny for the dry run)")
    from corpora.demo import build_demo

    image_size = 112 if args.tiny else 224
    # step counts sized for < 5 min on one H200 in all (process starts and model loads included)
    steps = args.steps or (3 if args.tiny else 20)
    rl_steps = args.rl_steps or (1 if args.tiny else 6)
    zero2_steps = args.zero2_steps or (2 if args.tiny else 10)
    corpus = build_demo(work / "corpus", n_train=32 if args.tiny else 128, n_eval=8, image_size=image_size).root
    model_dir, params = build_model(work / "model", tiny=args.tiny, image_size=image_size)
    log(f"model: {params / 1e6:.0f} M parameters at {model_dir}")
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    common = [f"run={RUN}", f"model.dtype={dtype}", "model.attn_implementation=sdpa", "gradient_checkpointing=true",
              "logging_steps=1", "train=all"]
    stages = {}
    init = str(model_dir)
    for stage, extra in (("pretrain", [f"max_steps={steps}", "batch_size=8", "lr=1e-4", "warmup_ratio=0.1",
                                       "eval_fraction=0", f"data={corpus / 'pairs.jsonl'}"]),
                         ("sft", [f"max_steps={steps}", "batch_size=8", "lr=5e-5", "warmup_ratio=0.1",
                                  f"data={corpus / 'sft.jsonl'}"]),
                         ("rl", [f"max_steps={rl_steps}", "algorithm=grpo", "num_generations=4", "batch_size=4",
                                 f"max_completion_length={16 if args.tiny else 64}", "lr=1e-6", "log_completions=0",
                                 f"data={corpus / 'rl.jsonl'}"])):
        stages[stage] = run_stage_process(stage, [*common, f"init={init}", *extra], work, args.stage_timeout)
        m = json.loads((Path(stages[stage]["entry"]) / "manifest.json").read_text())
        init = f"{m['stage']}/{m['run']}/step-{m['step']:08d}"  # the next stage gets the registry reference
        log(f"{stage}: {stages[stage]}")
    # SFT again from the pretrained entry, as its own run, under DeepSpeed ZeRO-2 on one rank
    pretrained = stages["pretrain"]["entry"].split("/")[-3:]
    stages["sft_zero2"] = run_stage_process(
        "sft", [*common[1:], "run=gpu-check-zero2", f"init={'/'.join(pretrained)}", f"max_steps={zero2_steps}",
                "batch_size=8", "lr=5e-5", "warmup_ratio=0.1", f"data={corpus / 'sft.jsonl'}"],
        work, args.stage_timeout, name="sft_zero2", launcher=zero2_launcher(work))
    log(f"sft_zero2: {stages['sft_zero2']}")
    shared_prefix = run_prefix_process(model_dir, corpus / "rl.jsonl", work, args.device,
                                       16 if args.tiny else 64, args.stage_timeout)
    log(f"shared prefix: {shared_prefix}")
    image = next((corpus / "images").rglob("*.png"), None) or next(corpus.rglob("*.png"))
    device = "cuda" if args.device == "cuda" else "cpu"
    entries_load = {stage: loads(s["entry"], device, image) for stage, s in stages.items()}
    result = {
        "check": "gpu-check", "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "model": "tiny qwen2_5_vl" if args.tiny else "qwen2_5_vl ~0.5B (random init)", "parameters": params,
        "dtype": dtype, "attention": "sdpa", "gradient_checkpointing": True,
        "versions": {m: _version(m) for m in ("torch", "transformers", "accelerate", "peft", "trl", "datasets")},
        "carried_wheels": carried,
        "stages": {k: {f: v[f] for f in ("engine", "tokens_per_s", "peak_gpu_mem_gib", "peak_rss_gib", "loss_first",
                                          "loss_last", "reward_first", "reward_last", "steps", "train_seconds", "entry")
                       if f in v}
                   for k, v in stages.items()},
        "shared_prefix": shared_prefix, "entries_load": entries_load,
        "ok": all(entries_load.values()) and stages["sft_zero2"]["engine"] == "deepspeed-zero2"
        and shared_prefix["shared_forward_ran"] and shared_prefix["within_bf16_tolerance"],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
