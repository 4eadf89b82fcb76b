"""Model factory: tiny presets of every family round-trip through the plain Auto classes and train;
freeze flags, LoRA and 4-bit QLoRA touch exactly the parameters they should; paths resolve and dispatch
on config.json, never on the folder's name."""
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from stages import model as factory
from stages.model import FAMILIES, LoraConfig, ModelConfig, build_tiny, load_model, resolve_model_path
from stages.model import trainable_parameter_report
from stages.registry import Registry, home

CLASS_OF = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
            "qwen3_vl": "Qwen3VLForConditionalGeneration"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {f: build_tiny(f, root / f) for f in FAMILIES}


def tissue_image(size=(56, 56)):
    # A real IHC colon tissue image shipped inside scikit-image, resized to what the test needs.
    from skimage.data import immunohistochemistry

    return Image.fromarray(immunohistochemistry()).resize(size)


def chat_batch(processor, *, answer=True, image=None):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Tumor? A. yes B. no"}]}]
    if answer:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "<think> atypia </think><answer> A </answer>"}]})
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=not answer)
    return processor(text=[text], images=[image or tissue_image()], return_tensors="pt")


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_reloads_with_auto_classes_and_trains(tiny, family):
    model = AutoModelForImageTextToText.from_pretrained(tiny[family])
    processor = AutoProcessor.from_pretrained(tiny[family])
    assert type(model).__name__ == CLASS_OF[family]
    assert sorted(p.name for p in tiny[family].glob("*.safetensors")) == ["model.safetensors"]
    assert not list(tiny[family].glob("*.bin"))

    batch = chat_batch(processor)
    # A 56x56 image is a 2x2 grid of merged patches: exactly 4 image tokens.
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 4
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0:
            grads[factory.tower_of(name)] = True
    assert grads.keys() >= {"vision", "projector", "llm"}

    prompt = chat_batch(processor, answer=False)
    generated = model.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_tokenizer_ids_match_config_and_tags_are_compact(tiny, family):
    processor = AutoProcessor.from_pretrained(tiny[family])
    tok, config = processor.tokenizer, AutoModelForImageTextToText.from_pretrained(tiny[family]).config
    assert tok.convert_tokens_to_ids("<|image_pad|>") == config.image_token_id
    assert tok.convert_tokens_to_ids("<|video_pad|>") == config.video_token_id
    assert tok.convert_tokens_to_ids("<|vision_start|>") == config.vision_start_token_id
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok) <= config.text_config.vocab_size < 2048
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1, tag
    ids = tok("<think> tumor </think><answer> C </answer><|im_end|>")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<think> tumor </think><answer> C </answer>"


def test_large_images_are_capped(tiny):
    processor = AutoProcessor.from_pretrained(tiny["qwen2_5_vl"])
    batch = chat_batch(processor, image=tissue_image((700, 500)))
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert 4 < int((batch["input_ids"] == image_id).sum()) <= 16


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("flags", [("vision",), ("projector",), ("llm",), ("vision", "projector")])
def test_freeze_flags_freeze_exactly_their_tower(tiny, family, flags):
    cfg = ModelConfig(name_or_path=str(tiny[family]), **{f"freeze_{t}": True for t in flags})
    model, _ = load_model(cfg)
    report = trainable_parameter_report(model)
    for tower in ("vision", "projector", "llm"):
        assert report[tower]["total"] > 0
        expected = 0 if tower in flags else report[tower]["total"]
        assert report[tower]["trainable"] == expected, (tower, report)
    assert report["other"]["total"] == 0


def train_one_step(model, processor):
    batch = chat_batch(processor)
    # train mode, as the Trainer sets it: in eval mode bitsandbytes 0.50 repacks 4-bit weights into its CPU
    # inference layout on the first forward, which is not a training step and cannot be trained through
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    return changed, {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_trains_only_adapters_on_the_language_model(tiny):
    model, processor = load_model(ModelConfig(name_or_path=str(tiny["qwen2_5_vl"]), freeze_projector=True,
                                              lora=LoraConfig(enabled=True, r=4)))
    changed, trainable = train_one_step(model, processor)
    assert trainable and all("lora_" in n for n in trainable)
    assert all(factory.tower_of(n) == "llm" for n in trainable)  # include_vision=False keeps the vision tower out
    # lora_B starts at zero, so after one step every lora_B changed and nothing outside the adapters moved.
    assert {n for n in trainable if "lora_B" in n} <= changed <= trainable


def test_lora_keeps_an_unfrozen_projector_training_in_full(tiny):
    # peft freezes every base weight; a projector the policy trains must still learn (stage 1's whole point)
    model, processor = load_model(ModelConfig(name_or_path=str(tiny["qwen2_5_vl"]), freeze_vision=True,
                                              lora=LoraConfig(enabled=True, r=4)))
    changed, trainable = train_one_step(model, processor)
    projector = {n for n in trainable if factory.tower_of(n) == "projector"}
    # the trainable copy peft keeps (saved in the adapter file, so resume restores it) learns in full
    assert projector and all("modules_to_save" in n for n in projector) and projector <= changed
    assert all("lora_" in n for n in trainable - projector)
    assert not any(factory.tower_of(n) == "vision" for n in trainable)


def test_lora_include_vision_adapts_vision_linears(tiny):
    cfg = ModelConfig(name_or_path=str(tiny["qwen2_5_vl"]), lora=LoraConfig(enabled=True, r=4, include_vision=True))
    model, _ = load_model(cfg)
    towers = {factory.tower_of(n) for n, p in model.named_parameters() if p.requires_grad}
    assert towers == {"vision", "projector", "llm"}


@pytest.mark.parametrize("bits, layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_qlora_trains_one_step_on_cpu(tiny, bits, layer):
    cfg = ModelConfig(name_or_path=str(tiny["qwen2_5_vl"]), quantization=bits, freeze_projector=True,
                      lora=LoraConfig(enabled=True, r=4))
    model, processor = load_model(cfg)
    quantised = {n for n, m in model.named_modules() if type(m).__name__ == layer}
    assert quantised and all(factory.tower_of(n + ".") == "llm" for n in quantised)
    assert not any(".visual." in n for n in quantised)  # the vision tower stays in full precision
    changed, trainable = train_one_step(model, processor)
    assert all("lora_" in n for n in trainable)
    assert {n for n in trainable if "lora_B" in n} <= changed <= trainable


def test_tiny_ref_is_built_once_and_cached(monkeypatch):
    first = resolve_model_path("tiny:qwen2_vl")
    assert Path(first).parent == home() / "base" and Path(first).name.startswith("tiny-qwen2_vl-")

    def no_rebuild(*a, **k):
        raise AssertionError("tiny model was rebuilt")

    monkeypatch.setattr(factory, "build_tiny", no_rebuild)
    assert resolve_model_path("tiny:qwen2_vl") == first
    assert not [p for p in (home() / "base").iterdir() if p.name.startswith(".")]  # no staging left


def test_dispatch_uses_config_not_path(tiny, tmp_path):
    decoy = tmp_path / "qwen3_vl_looking_name"
    shutil.copytree(tiny["qwen2_vl"], decoy)
    model, processor = load_model(ModelConfig(name_or_path=str(decoy)))
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2VLProcessor"


def test_folder_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path} is not a Hugging Face model folder: it has no config.json"):
        load_model(ModelConfig(name_or_path=str(tmp_path)))


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LookupError, match=f"no checkpoint or folder '{tmp_path / 'nope'}'"):
        resolve_model_path(str(tmp_path / "nope"))


def test_registry_refs_resolve_to_checkpoint_folders(tiny):
    with Registry().writer("sft", "demo", 3) as w:
        shutil.copytree(tiny["qwen3_vl"], w.path, dirs_exist_ok=True)
    assert resolve_model_path("sft:demo/3") == resolve_model_path("sft/demo/step-00000003") == str(w.path)
    model, processor = load_model(ModelConfig(name_or_path="sft:latest"))
    assert type(model).__name__ == CLASS_OF["qwen3_vl"]


def test_unsupported_model_type_is_refused(tmp_path):
    from transformers import AutoConfig

    AutoConfig.for_model("qwen2", hidden_size=64, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'qwen2' is not supported; pathor1 trains qwen2_vl, qwen2_5_vl, qwen3_vl"):
        load_model(ModelConfig(name_or_path=str(tmp_path)))


def test_processor_pixel_overrides_change_image_tokens(tiny):
    def image_tokens(**pixels):
        _, processor = load_model(ModelConfig(name_or_path=str(tiny["qwen2_5_vl"]), **pixels))
        batch = chat_batch(processor, image=tissue_image((112, 112)))
        return int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())

    assert image_tokens() == 16  # the preset's cap: 112x112 pixels
    assert image_tokens(max_pixels=56 * 56) == 4


def test_model_config_loads_through_the_config_system():
    from stages.config import load_config

    cfg = load_config(ModelConfig, ["quantization=4bit", "lora.enabled=true", "lora.target_modules=[q_proj,v_proj]"])
    assert cfg.lora == LoraConfig(enabled=True, target_modules=["q_proj", "v_proj"])


def test_hub_ids_pass_through():
    assert resolve_model_path("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="fp8"), "dtype must be one of auto|float32|bfloat16|float16, got 'fp8'"),
    (dict(attn_implementation="flash"), "attn_implementation must be one of"),
    (dict(quantization="4bit"), "quantization=4bit needs lora.enabled=true"),
    (dict(name_or_path="tiny:llava"), "unknown tiny family 'llava'"),
    (dict(lora={"enabled": True, "r": 0}), "lora.r must be >= 1, got 0"),
])
def test_model_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_tiny_cache_key_follows_the_architecture(monkeypatch):
    # editing a preset must build a new base, not silently reuse the cached folder of the old architecture
    before = resolve_model_path("tiny:qwen2_vl")
    monkeypatch.setitem(factory._TINY_TEXT, "num_hidden_layers", 3)
    after = resolve_model_path("tiny:qwen2_vl")
    assert after != before
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(after).text_config.num_hidden_layers == 3
