"""Model factory: load any Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint with its processor, or build a tiny one.

Everything goes through the transformers Auto classes and dispatches on the checkpoint's ``config.json``
(``model_type``), never on the path's spelling. Options (dtype, attention, tower freezing, LoRA, QLoRA) are
fields of :class:`ModelConfig`; ``load_model(cfg)`` returns ``(model, processor)`` ready for a trainer.

The tiny preset (``tiny:<family>`` or :func:`build_tiny`) is a randomly initialised 2-layer model per
family with a small byte-level BPE tokenizer trained offline, so the whole pipeline runs on a CPU in minutes.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from corpora.files import build_folder_once
from stages.registry import Registry, base_dir

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
LLM_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_DTYPES = ("auto", "float32", "bfloat16", "float16")
_ATTENTION = ("auto", "eager", "sdpa", "flash_attention_2")
_QUANTIZATION = ("none", "4bit", "8bit")
# Towers are found by parameter name; peft only prefixes names ("base_model.model."), so this survives wrapping.
_TOWER_PATTERNS = (
    ("projector", re.compile(r"(^|\.)visual\.(merger|deepstack_merger_list)\.")),
    ("vision", re.compile(r"(^|\.)visual\.")),
    ("llm", re.compile(r"(^|\.)(language_model|lm_head)(\.|$)")),
)


@dataclass
class LoraConfig:
    enabled: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the full weights."})
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (lora_alpha)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    target_modules: list[str] = field(
        default_factory=list,
        metadata={"help": "Names of the linear layers to adapt (last name part, e.g. q_proj); "
                          "empty = every linear layer of the language model (and of the vision tower if included)."},
    )
    include_vision: bool = field(default=False, metadata={"help": "Also put adapters on the vision tower and projector."})

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha < 1:
            raise ValueError(f"lora.alpha must be >= 1, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class ModelConfig:
    name_or_path: str = field(
        default="tiny:qwen2_5_vl",
        metadata={"help": "tiny:qwen2_vl|qwen2_5_vl|qwen3_vl, a registry ref (sft:latest), a folder, or a hub id."},
    )
    dtype: str = field(default="auto", metadata={"help": "auto|float32|bfloat16|float16 (auto: bf16 on CUDA, fp32 on CPU)."})
    attn_implementation: str = field(
        default="auto",
        metadata={"help": "auto|eager|sdpa|flash_attention_2 (auto: flash_attention_2 on CUDA if installed, else sdpa)."},
    )
    freeze_vision: bool = field(default=False, metadata={"help": "Freeze the vision encoder (not the projector)."})
    freeze_projector: bool = field(default=False, metadata={"help": "Freeze the vision-to-language projector (merger)."})
    freeze_llm: bool = field(default=False, metadata={"help": "Freeze the language model, embeddings and lm_head."})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA adapters (peft)."})
    quantization: str = field(
        default="none",
        metadata={"help": "none|4bit|8bit: bitsandbytes weights for the language model (QLoRA with lora.enabled)."},
    )
    min_pixels: int | None = field(default=None, metadata={"help": "Override the processor's minimum image pixels."})
    max_pixels: int | None = field(default=None, metadata={"help": "Override the processor's maximum image pixels."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the checkpoint."})

    def __post_init__(self):
        if isinstance(self.lora, dict):  # from YAML / from_dict
            self.lora = LoraConfig(**self.lora)
        for name, allowed in (("dtype", _DTYPES), ("attn_implementation", _ATTENTION), ("quantization", _QUANTIZATION)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {'|'.join(allowed)}, got {getattr(self, name)!r}")
        if not self.name_or_path:
            raise ValueError("name_or_path must not be empty")
        if self.name_or_path.startswith("tiny:") and self.name_or_path[5:] not in FAMILIES:
            raise ValueError(f"unknown tiny family {self.name_or_path[5:]!r}; choose one of {', '.join(FAMILIES)}")
        if self.quantization != "none" and not self.lora.enabled:
            raise ValueError(f"quantization={self.quantization} needs lora.enabled=true: quantised weights cannot be trained")
        if self.quantization != "none" and self.freeze_llm:
            raise ValueError("quantization with freeze_llm=true leaves nothing to train in the language model")
        for name in ("min_pixels", "max_pixels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


# ----------------------------------------------------------------------------------------------- tiny preset
# Dimensions are multiples of 64 so bitsandbytes 4-bit layers work on CPU (in_features % 64 == 0).
_TINY_TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096)
_TINY_HEAD_DIM = 32  # hidden / heads; every mrope_section below sums to head_dim / 2 = 16
_TINY = {
    "qwen2_vl": dict(
        text=dict(rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 6, 6])),
        vision=dict(depth=2, embed_dim=64, hidden_size=128, num_heads=4, mlp_ratio=2, patch_size=14),
        patch_size=14, video_processor="Qwen2VLVideoProcessor", processor="Qwen2VLProcessor",
        template="qwen2_5_vl.jinja",  # Qwen2-VL ships a byte-identical template
    ),
    "qwen2_5_vl": dict(
        text=dict(rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 6, 6])),
        vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                    patch_size=14, window_size=112, fullatt_block_indexes=[1]),
        patch_size=14, video_processor="Qwen2VLVideoProcessor", processor="Qwen2_5_VLProcessor",
        template="qwen2_5_vl.jinja",
    ),
    "qwen3_vl": dict(  # the real Qwen3-VL uses 16-pixel patches and interleaved mrope
        text=dict(head_dim=_TINY_HEAD_DIM,
                  rope_parameters=dict(rope_type="default", rope_theta=5e6, mrope_section=[6, 5, 5],
                                       mrope_interleaved=True)),
        vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                    patch_size=16, num_position_embeddings=256, deepstack_visual_indexes=[0]),
        patch_size=16, video_processor="Qwen3VLVideoProcessor", processor="Qwen3VLProcessor",
        template="qwen3_vl.jinja", image_mean=[0.5, 0.5, 0.5],
    ),
}
# Qwen's special tokens; they follow the BPE vocabulary (ids 1024+) so the ids stay contiguous.
_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                   "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                   "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
# Plain added tokens: one id each, and they survive decode(skip_special_tokens=True) -- rewards parse them.
_TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>")
_BPE_VOCAB = 1024
_PRESET_VERSION = 1  # bump when the preset changes so cached tiny folders are rebuilt
_CORPUS = Path(__file__).with_name("tiny_corpus.txt")


def _train_tokenizer(vocab_size: int = _BPE_VOCAB):
    """Byte-level BPE trained on the built-in corpus, wrapped in transformers' own Qwen2Tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer

    # Re-use Qwen2Tokenizer's pre-tokenizer (Qwen's split regex + byte level) so training matches use.
    qwen_pre_tokenizer = Qwen2Tokenizer().backend_tokenizer.pre_tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = qwen_pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS.read_text().splitlines(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                                                        for m in model["merges"]],
                         eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                         model_max_length=32768)
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True) for t in _SPECIAL_TOKENS
                                                          if t not in ("<|im_end|>", "<|endoftext|>")]})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in _TAG_TOKENS])
    return tok


def _tiny_config(family: str, tok):
    from transformers import AutoConfig

    spec = _TINY[family]
    ids = {t: tok.convert_tokens_to_ids(t) for t in _SPECIAL_TOKENS}
    vocab = -(-len(tok) // 64) * 64  # round up to a multiple of 64
    text = dict(_TINY_TEXT, **spec["text"], vocab_size=vocab, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    return AutoConfig.for_model(
        family, text_config=text, vision_config=dict(spec["vision"], spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _tiny_processor(family: str, tok, image_size: int):
    import transformers
    from transformers import Qwen2VLImageProcessor

    spec = _TINY[family]
    factor = spec["patch_size"] * 2  # one merged image token covers factor x factor pixels
    # min: a 2x2 grid of merged tokens (a 56x56 image -> 4 tokens); max: about image_size x image_size pixels.
    size = {"shortest_edge": (2 * factor) ** 2, "longest_edge": max(image_size, 2 * factor) ** 2}
    norm = {"image_mean": spec["image_mean"], "image_std": spec["image_mean"]} if "image_mean" in spec else {}
    common = dict(size=size, patch_size=spec["patch_size"], temporal_patch_size=2, merge_size=2, **norm)
    # TRL ships Qwen's original chat templates (and recognises them to swap in its training variants).
    trl_dir = importlib.util.find_spec("trl").submodule_search_locations[0]
    template_file = Path(trl_dir) / "chat_templates" / spec["template"]
    return getattr(transformers, spec["processor"])(
        image_processor=Qwen2VLImageProcessor(**common),
        tokenizer=tok,
        video_processor=getattr(transformers, spec["video_processor"])(**common),
        chat_template=template_file.read_text(),
    )


def _tiny_settings(family: str, seed: int, image_size: int) -> dict:
    corpus = hashlib.sha256(_CORPUS.read_bytes()).hexdigest()[:12]
    # The architecture itself is part of the key: editing a preset must never silently reuse an old cached build.
    spec = json.dumps({"text": _TINY_TEXT, "family": _TINY[family]}, sort_keys=True, default=str)
    return dict(family=family, seed=seed, image_size=image_size, version=_PRESET_VERSION, corpus=corpus,
                spec=hashlib.sha256(spec.encode()).hexdigest()[:12])


def build_tiny(family: str, out_dir, *, seed: int = 0, image_size: int = 112) -> Path:
    """Write a random-initialised tiny ``family`` model + processor as a plain HF folder at ``out_dir``.

    ``image_size`` caps the processor: images are resized to at most about ``image_size``² pixels (112 -> at
    most 16 image tokens), and a 56x56 image becomes a 2x2 grid = 4 image tokens. The folder loads with plain
    ``AutoModelForImageTextToText`` + ``AutoProcessor``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(FAMILIES)}")
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    out_dir = Path(out_dir)
    tok = _train_tokenizer()
    config = _tiny_config(family, tok)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.text_config.eos_token_id, config.text_config.pad_token_id],
        pad_token_id=config.text_config.pad_token_id, bos_token_id=config.text_config.bos_token_id,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # safetensors by default in transformers 5
    _tiny_processor(family, tok, image_size).save_pretrained(out_dir)
    (out_dir / "tiny_preset.json").write_text(json.dumps(_tiny_settings(family, seed, image_size), indent=2))
    return out_dir


def _cached_tiny(family: str, seed: int = 0, image_size: int = 112) -> Path:
    """``tiny:<family>``: built once into $PATHOR1_HOME/base/tiny-<family>-<hash of its settings>/."""
    settings = _tiny_settings(family, seed, image_size)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return build_folder_once(base_dir(f"tiny-{family}-{digest}"),
                             lambda staging: build_tiny(family, staging, seed=seed, image_size=image_size),
                             marker="config.json")


# ----------------------------------------------------------------------------------------------- vision tokens
# Tokens a completion must never contain (RL and opd rollouts and the distillation teacher suppress them): a sampled
# <|image_pad|> (or a vision start/end) makes the policy forward count more image tokens than the prompt has images,
# and Qwen-VL's rope-index code fails on it.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def vision_token_ids(processor) -> list[int]:
    """The ids of the ``VISION_TOKENS`` the processor's vocabulary has, ascending."""
    return [i for i, _ in _vision_tokens(processor)]


def vision_tokens(processor) -> list[str]:
    """The same tokens as strings, in the order of their ids (vLLM's sampling takes strings)."""
    return [t for _, t in _vision_tokens(processor)]


def _vision_tokens(processor) -> list[tuple[int, str]]:
    vocab = getattr(processor, "tokenizer", processor).get_vocab()
    return sorted((vocab[t], t) for t in VISION_TOKENS if t in vocab)



# ----------------------------------------------------------------------------------------------- loading
def resolve_model_path(name_or_path: str) -> str:
    """``tiny:<family>`` -> the cached tiny folder; anything else through ``Registry.resolve_model`` (the one
    resolver): a folder or registry ref (``sft:latest``, ``sft/RUN/step-N``) -> its folder, a hub id -> the id;
    a ref that names nothing raises a clear RegistryError."""
    if name_or_path.startswith("tiny:"):
        return str(_cached_tiny(_tiny_family(name_or_path)))
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    return Registry().resolve_model(name_or_path)


def _tiny_family(ref: str) -> str:
    family = ref[len("tiny:"):]
    if family not in FAMILIES:
        from stages.config import ConfigError

        raise ConfigError(f"unknown tiny family {family!r} in {ref!r}; choose one of "
                          f"{', '.join('tiny:' + f for f in FAMILIES)}")
    return family


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_model_ref(ref: str, field: str = "init") -> None:
    """Refuse a model reference that names nothing, building and loading nothing (so a CLI answers in a second,
    before its data or any model loads): an unknown tiny family, a folder that is not a model, a registry ref
    without an entry, or -- with the hub offline (pathor1's default) -- a hub id not in the local hub cache.
    Online, a hub id is left for transformers to look up."""
    from stages.config import ConfigError
    from stages.registry import RegistryError

    if not ref:
        raise ConfigError(f"{field} is empty; fix: {field}=REF (a registry ref such as sft:latest, a model folder, "
                          f"tiny:qwen2_5_vl or a hub id)")
    if ref.startswith("tiny:"):
        try:
            _tiny_family(ref)
        except ValueError as e:
            raise type(e)(f"{field}={ref}: {e}") from None
        return
    try:
        path = resolve_model_path(ref)
    except RegistryError as e:
        raise RegistryError(f"{field}={ref}: {e}") from None
    if Path(path).is_dir():
        try:
            _check_folder(path)
        except FileNotFoundError as e:
            raise ConfigError(f"{field}={ref}: {e}") from None
    elif _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise RegistryError(
                f"{field}={ref}: no folder, registry entry or tiny preset of that name, and no hub model {ref!r} "
                f"in the local hub cache (HF_HUB_OFFLINE=1); fix: {field}=sft:latest (or another registry ref), a "
                f"model folder, tiny:qwen2_5_vl, or download it first (HF_HUB_OFFLINE=0)")


def _check_folder(path: str) -> None:
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a Hugging Face model folder: it has no config.json "
            f"(expected save_pretrained output: config.json, *.safetensors, processor files)")


def _resolve_dtype(name: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def _resolve_attention(name: str, dtype) -> str:
    import torch

    if name != "auto":
        return name
    # flash-attn kernels exist only for half precision on CUDA.
    half = dtype in (torch.bfloat16, torch.float16)
    if half and torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _quantization_config(cfg: ModelConfig, dtype):
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    # Only the language model is quantised; transformers 5 matches skip names from the module path start.
    skip = ["model.visual", "lm_head"]
    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=skip)


def quantized_device_map(cfg: ModelConfig) -> dict | None:
    """QLoRA on GPUs: bitsandbytes quantises onto the device the weights are loaded to, and the model is loaded
    before the Trainer picks each rank's GPU, so every rank names its own (LOCAL_RANK) or they all land on cuda:0."""
    import torch

    if cfg.quantization == "none" or not torch.cuda.is_available():
        return None
    return {"": f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"}


def tower_of(param_name: str) -> str:
    """Which tower a parameter belongs to: vision, projector, llm, or other."""
    for tower, pattern in _TOWER_PATTERNS:
        if pattern.search(param_name):
            return tower
    return "other"


def trainable_parameter_report(model) -> dict:
    """``{tower: {"trainable": n, "total": n}}`` for vision / projector / llm / other, plus ``"all"``."""
    report = {t: {"trainable": 0, "total": 0} for t in ("vision", "projector", "llm", "other", "all")}
    for name, p in model.named_parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # 4-bit packs two values a byte
        for tower in (tower_of(name), "all"):
            report[tower]["total"] += n
            report[tower]["trainable"] += n if p.requires_grad else 0
    return report


def _freeze(model, cfg: ModelConfig) -> None:
    frozen = {t for t, flag in (("vision", cfg.freeze_vision), ("projector", cfg.freeze_projector),
                                ("llm", cfg.freeze_llm)) if flag}
    for name, p in model.named_parameters():
        if tower_of(name) in frozen:
            p.requires_grad_(False)


def _lora_targets(model, lora: LoraConfig) -> list[str]:
    """Full names of the linear layers to adapt (explicit names: no regex guessing inside peft)."""
    import torch

    towers = {"llm", "vision", "projector"} if lora.include_vision else {"llm"}
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        if tower_of(name + ".") not in towers:
            continue
        if lora.target_modules and name.rsplit(".", 1)[-1] not in lora.target_modules:
            continue
        targets.append(name)
    if not targets:
        raise ValueError(f"lora.target_modules={lora.target_modules} matched no linear layer "
                         f"(include_vision={lora.include_vision})")
    return targets


def _projector_modules(model) -> list[str]:
    """Full names of the projector's top modules (``model.visual.merger``, Qwen3-VL's deepstack mergers)."""
    return [name for name, _ in model.named_modules() if re.search(r"(^|\.)visual\.(merger|deepstack_merger_list)$", name)]


def load_model(cfg: ModelConfig):
    """Load ``cfg.name_or_path`` as ``(model, processor)`` with the dtype, attention, freezing and adapters asked for."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = resolve_model_path(cfg.name_or_path)
    _check_folder(path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if config.model_type not in FAMILIES:
        raise ValueError(f"{path}: model_type {config.model_type!r} is not supported; "
                         f"pathor1 trains {', '.join(FAMILIES)}")
    dtype = _resolve_dtype(cfg.dtype)
    model = AutoModelForImageTextToText.from_pretrained(
        path, config=config, dtype=dtype, attn_implementation=_resolve_attention(cfg.attn_implementation, dtype),
        quantization_config=_quantization_config(cfg, dtype), trust_remote_code=cfg.trust_remote_code,
        device_map=quantized_device_map(cfg),
    )
    pixels = {k: v for k, v in (("min_pixels", cfg.min_pixels), ("max_pixels", cfg.max_pixels)) if v is not None}
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, **pixels)
    if cfg.quantization != "none":
        from peft import prepare_model_for_kbit_training

        # Gradient checkpointing stays the trainer's choice (TrainingArguments.gradient_checkpointing).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.lora.enabled:
        from peft import LoraConfig as PeftLoraConfig, get_peft_model

        # peft freezes every base weight; the projector is small and is what stage 1 exists to align, so
        # unless it gets adapters itself it trains in full as a peft "module to save" (kept in the adapter
        # file, so resume restores it, and merged into the saved weights).
        full = [] if cfg.freeze_projector or cfg.lora.include_vision else _projector_modules(model)
        model = get_peft_model(model, PeftLoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=_lora_targets(model, cfg.lora), modules_to_save=full or None, task_type="CAUSAL_LM"))
    _freeze(model, cfg)
    return model, processor
