"""Stages 1 and 2 on CPU with the tiny Qwen2.5-VL and a small demo corpus: exact label masks (checked on
decoded text), loss goes down, exactly the trainable towers change, checkpoints are plain HF folders in the
registry with lineage sft <- pretrain <- base, and a stopped run resumed with resume=auto ends bit-identical
to an uninterrupted one."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from corpora.demo import build_demo
from corpora.prompts import render_response
from corpora.readers import load_pairs, load_sft
from corpora.validate import DataError
from recipes import pretrain as pretrain_recipe
from recipes import sft as sft_recipe
from stages.config import ConfigError, load_config
from stages.engine import TRAINER_STATE_DIR, ChatCollator
from stages.model import resolve_model_path, tower_of
from stages.pretrain import PretrainConfig, caption_rows
from stages.pretrain import run as pretrain_run
from stages.registry import Registry
from stages.sft import SFTConfig

END = "<|im_end|>\n"  # the generation-tagged template marks each assistant turn's end-of-turn and newline
FAST = ["batch_size=4", "lr=1e-3", "warmup_ratio=0", "logging_steps=1", "validate=strict"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"), n_train=8, n_eval=4, image_size=56)


@pytest.fixture
def processor():
    return AutoProcessor.from_pretrained(resolve_model_path("tiny:qwen2_5_vl"))


def trained_text(batch, processor) -> list[str]:
    return [processor.tokenizer.decode(ids[labels != -100]) for ids, labels in zip(batch["input_ids"], batch["labels"])]


def test_caption_labels_are_exactly_the_caption(demo, processor):
    pairs = load_pairs(demo.pairs).select(range(4))
    rows = caption_rows(pairs, "caption")
    batch = ChatCollator(processor)([rows[i] for i in range(4)])
    assert trained_text(batch, processor) == [c + END for c in pairs["caption"]]
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()  # padding never trains
    assert batch["pixel_values"].shape[0] > 0 and "image_grid_thw" in batch


def test_sft_labels_are_exactly_the_assistant_turns(demo, processor):
    samples = [json.loads(line) for line in open(demo.sft)][:2]
    rows = load_sft(demo.sft, template="cot").select(range(2))
    batch = ChatCollator(processor)([rows[i] for i in range(2)])
    assert trained_text(batch, processor) == [render_response("cot", s["reasoning"], s["answer"]) + END for s in samples]
    # Multi-turn with a system prompt: both assistant turns train, the user and system turns never do.
    chat = {"images": rows[0]["images"], "messages": [
        {"role": "system", "content": "You are a pathologist."}, {"role": "user", "content": "What is shown?"},
        {"role": "assistant", "content": "<think>glands</think><answer>A</answer>"},
        {"role": "user", "content": "Are you sure?"}, {"role": "assistant", "content": "<answer>yes</answer>"}]}
    batch = ChatCollator(processor)([chat])
    assert trained_text(batch, processor) == ["<think>glands</think><answer>A</answer>" + END + "<answer>yes</answer>" + END]


def weights(folder):
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)  # the plain HF class loads it
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def run_recipe(recipe, argv, capsys):
    assert recipe.main(argv) == 0
    from pathlib import Path

    return Path(capsys.readouterr().out.strip().splitlines()[-1])  # the last line names the registry entry


def test_pretrain_then_sft_trains_the_right_towers_and_records_lineage(demo, capsys):
    before = weights(resolve_model_path("tiny:qwen2_5_vl"))
    ckpt = run_recipe(pretrain_recipe, [f"data={demo.pairs}", "max_steps=6", "eval_fraction=0.25",
                                        "train=projector_llm", "run=p1", *FAST], capsys)
    registry = Registry()
    assert ckpt == registry.latest("pretrain", "p1") and ckpt.name == "step-00000006"
    assert {p.name for p in ckpt.iterdir()} == {
        "config.json", "generation_config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
        "tokenizer_config.json", "chat_template.jinja", "manifest.json", "README.md", TRAINER_STATE_DIR}
    # trainer_state/ is the Trainer's own checkpoint-N, as written; the top-level weights are hard links into it
    assert {p.name for p in (ckpt / TRAINER_STATE_DIR).iterdir()} == {
        "config.json", "generation_config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
        "tokenizer_config.json", "chat_template.jinja", "training_args.bin",
        "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
    assert (ckpt / "model.safetensors").samefile(ckpt / TRAINER_STATE_DIR / "model.safetensors")
    manifest = registry.manifest(ckpt)
    curve = [loss for _, loss in manifest["metrics"]["train_loss_curve"]]
    assert len(curve) == 6 and sum(curve[-2:]) / 2 < curve[0] - 0.3, curve  # the caption loss goes down
    assert manifest["metrics"]["eval_loss"] > 0 and manifest["extra"]["template"] == "caption"
    assert manifest["parent"] == "tiny:qwen2_5_vl" and manifest["config"]["train"] == "projector_llm"

    after = weights(ckpt)
    for name, p in before.items():  # projector + LLM trainable: every one changed; the vision encoder did not
        changed = not torch.equal(p, after[name])
        assert changed == (tower_of(name) in ("projector", "llm")), (name, tower_of(name))

    sft = run_recipe(sft_recipe, [f"data={demo.sft}", "max_steps=3", "train=projector", "run=s1", *FAST], capsys)
    chain = registry.lineage(sft)
    assert [c.get("stage") for c in chain] == ["sft", "pretrain", None]
    assert chain[1]["ref"] == "pretrain/p1/step-00000006" and chain[2]["base"] == "tiny:qwen2_5_vl"
    assert registry.manifest(sft)["extra"]["template"] == "cot"
    tuned = weights(sft)
    for name, p in after.items():  # train=projector: only the merger moved
        assert (not torch.equal(p, tuned[name])) == (tower_of(name) == "projector"), name


def test_resume_auto_ends_with_the_weights_of_an_uninterrupted_run(demo, capsys):
    # 6 training pairs, batch 4 -> 2 steps an epoch; stopping after step 3 is mid-epoch (skipped batches, RNG).
    common = [f"data={demo.pairs}", "max_steps=5", "eval_fraction=0.25", *FAST]
    full = run_recipe(pretrain_recipe, [*common, "run=full"], capsys)
    stopped = run_recipe(pretrain_recipe, [*common, "run=part", "stop_after=3"], capsys)
    assert stopped.name == "step-00000003" and Registry().manifest(stopped)["finished"] is False
    assert Registry().resolve("pretrain:latest") == full  # the interrupted run is not :latest
    assert Registry().resolve("pretrain:latest-any") == stopped
    resumed = run_recipe(pretrain_recipe, [*common, "run=part", "resume=auto"], capsys)
    assert resumed.name == "step-00000005" and Registry().manifest(resumed)["parent"] == "tiny:qwen2_5_vl"
    assert Registry().manifest(resumed)["finished"] is True and Registry().resolve("pretrain:latest") == resumed
    assert_same_weights(full, resumed)
    losses = lambda p: [loss for _, loss in Registry().manifest(p)["metrics"]["train_loss_curve"]]  # noqa: E731
    assert losses(full) == pytest.approx(losses(resumed), abs=1e-6)


def assert_same_weights(a, b):
    """Every tensor of two published entries equal within float tolerance (the same names, none missing)."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=lambda m: f"{key}: {m}")


def test_sft_stopped_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(demo, capsys):
    """The default tier's SFT resume check (the slow tier adds LoRA + gradient accumulation and SIGKILL):
    stopped after step 2 through the engine's own stop_after, resumed mid-epoch, compared tensor by tensor."""
    common = [f"data={demo.sft}", "max_steps=3", "train=projector_llm", *FAST]
    full = run_recipe(sft_recipe, [*common, "run=full"], capsys)
    assert run_recipe(sft_recipe, [*common, "run=part", "stop_after=2"], capsys).name == "step-00000002"
    resumed = run_recipe(sft_recipe, [*common, "run=part"], capsys)  # resume=auto is the default
    assert resumed.name == full.name == "step-00000003" and Registry().manifest(resumed)["finished"] is True
    assert_same_weights(full, resumed)
    base = load_file(resolve_model_path("tiny:qwen2_5_vl") + "/model.safetensors")
    trained = load_file(full / "model.safetensors")
    assert any(not torch.equal(base[k], trained[k]) for k in base)  # it trained: the comparison is not of two copies


def test_lora_publishes_merged_weights_with_the_logits_of_base_plus_adapter(demo, processor, capsys):
    """A LoRA run publishes plain full weights (the adapter merged in; the adapter itself beside them): loaded
    with plain transformers they give the logits the input model + the published adapter give through peft."""
    from peft import PeftModel

    entry = run_recipe(sft_recipe, [f"data={demo.sft}", "max_steps=2", "model.lora.enabled=true", "model.lora.r=4",
                                    "model.lora.alpha=8", "run=lora", *FAST], capsys)
    assert Registry().manifest(entry)["extra"]["lora"] is True and not (entry / "adapter_config.json").exists()
    assert {p.name for p in (entry / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    rows = load_sft(demo.sft, template="cot").select(range(2))
    inputs = {k: v for k, v in ChatCollator(processor)([rows[0], rows[1]]).items() if k != "labels"}
    merged = AutoModelForImageTextToText.from_pretrained(entry, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base = AutoModelForImageTextToText.from_pretrained(resolve_model_path("tiny:qwen2_5_vl"), dtype=torch.float32)
    with torch.no_grad():
        before = base.eval()(**inputs).logits
        adapted = PeftModel.from_pretrained(base, str(entry / "adapter")).eval()(**inputs).logits
        published = merged(**inputs).logits
    torch.testing.assert_close(published, adapted, rtol=1e-4, atol=1e-5)
    assert (published - before).abs().max() > 1e-3  # the adapter (and the projector it trained in full) moved them


def test_bad_data_fails_before_training_with_file_and_line(tmp_path, demo, capsys):
    bad = tmp_path / "pairs.jsonl"
    good = open(demo.pairs).readline()
    bad.write_text(good + '{"id": "x", "images": ["missing.png"], "caption": "c"}\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl:2"):  # the stage raises it ...
        pretrain_run(load_config(PretrainConfig, [f"data={bad}", "max_steps=1"]))
    with pytest.raises(SystemExit) as exit_:  # ... and the CLI says it in one line, exit 2
        pretrain_recipe.main([f"data={bad}", "max_steps=1"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith(f"python -m recipes.pretrain: error: {bad}:1: ")  # the first
    assert err.endswith("(+1 more: python -m corpora.validate lists them)")  # problem, and how many follow
    assert "Traceback" not in err
    assert Registry().latest("pretrain") is None


def test_config_errors_and_refusing_to_overwrite_a_run(demo, capsys):
    with pytest.raises(ConfigError, match="train"):
        load_config(PretrainConfig, ["train=vision_only"])
    assert load_config(SFTConfig, []).template == "cot" and load_config(PretrainConfig, []).template == "caption"
    run_recipe(pretrain_recipe, [f"data={demo.pairs}", "max_steps=1", "run=r", *FAST], capsys)
    with pytest.raises(SystemExit) as exit_:
        pretrain_recipe.main([f"data={demo.pairs}", "max_steps=1", "run=r", "resume=never"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("python -m recipes.pretrain: error: run pretrain/r already has checkpoints; "
                                       "pass resume=auto to continue it or choose another run=NAME\n")
