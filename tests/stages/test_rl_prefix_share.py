"""Shared-prefix forward: the same log-probs, entropies, losses and gradients as TRL's unshared forward.

Batches come from TRL itself (`_generate_and_score_completions`, then TRL's own shuffle), so the layout is the
real one: left-padded prompts of different lengths, one or two images per prompt, Qwen-VL's mm_token_type_ids.
"""
import logging

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from trl.trainer.utils import shuffle_sequence_dict, split_pixel_values_by_grid, unsplit_pixel_values_by_grid

from stages.model import LoraConfig, ModelConfig, build_tiny, load_model
from stages.rl import prefill_share, prefix_cache, prefix_share
from stages.rl.config import RLConfig
from stages.rl.prefix_share import plan_groups, trl_supported
from stages.checkpointing import TRAIN_POLICIES
from stages.rl.training import grpo_args, pad_prompts_left, prompt_dataset
from stages.rl.trainer import PathoGRPOTrainer

G = 4
# (question, images): prompts of different lengths (left padding differs) and one with two images
PROMPTS = [("What?", 1), ("Which stain pattern is present in this tissue section, and how strong is it?", 2),
           ("Grade it.", 1)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    work = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for i, (question, n_images) in enumerate(PROMPTS):
        paths = []
        for k in range(n_images):
            path = work / f"img{i}_{k}.png"
            Image.fromarray(rng.integers(0, 255, (56 + 28 * k, 84, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))
        rows.append({"question": question, "options": ["a", "b"], "answer": "A", "kind": "mcq", "solution": "x",
                     "images": paths})
    return prompt_dataset(Dataset.from_list(rows), "cot")


def make_trainer(folder, dataset, tmp_path, algorithm="grpo", train="all", lora=False, **model_overrides):
    freeze = dict(zip(("freeze_vision", "freeze_projector", "freeze_llm"), TRAIN_POLICIES[train]))
    model, processor = load_model(ModelConfig(name_or_path=str(folder), **freeze, **model_overrides,
                                              lora=LoraConfig(enabled=lora, r=4, alpha=8, dropout=0.0)))
    pad_prompts_left(processor)
    cfg = RLConfig(algorithm=algorithm, init="unused", num_generations=G, batch_size=len(PROMPTS), max_completion_length=6,
                   max_steps=1, lr=1e-3, rewards=["format"], reward_weights=[1.0]).resolved()
    return PathoGRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                            args=grpo_args(cfg, tmp_path / "out"), train_dataset=dataset, processing_class=processor)


def trl_batch(trainer):
    """One training batch as TRL builds it, shuffled as TRL shuffles it, with varied completion lengths and
    non-zero advantages / old log-probs so that every term of every loss is exercised."""
    trainer.model.eval()
    out = trainer._generate_and_score_completions([trainer.train_dataset[i] for i in range(len(PROMPTS)) for _ in range(G)])
    torch.manual_seed(0)
    out = unsplit_pixel_values_by_grid(shuffle_sequence_dict(split_pixel_values_by_grid(out)))
    n, c = out["completion_ids"].shape
    lengths = torch.randint(1, c + 1, (n,))
    out["completion_mask"] = (torch.arange(c)[None] < lengths[:, None]).long() * out["completion_mask"]
    out["advantages"] = torch.randn(n)
    out["num_items_in_batch"] = out["completion_mask"].sum()
    return out


def forward_args(batch):
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    extra = {k: batch[k] for k in ("pixel_values", "image_grid_thw", "num_images", "mm_token_type_ids")}
    return ids, mask, batch["completion_ids"].size(1), extra


def logps(trainer, model, batch, share, entropy=True):
    """Log-probs and entropies (TRL's reference head computes no entropy) of the completion tokens."""
    trainer.share_prefix = share
    ids, mask, keep, extra = forward_args(batch)
    with torch.no_grad():
        lp, ent, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, keep, compute_entropy=entropy,
                                                                **extra)
    return lp * batch["completion_mask"], ent * batch["completion_mask"] if entropy else None


def loss_and_grads(trainer, batch, share):
    trainer.share_prefix = share
    trainer.model.train()
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def assert_grads_match(got, expected):
    assert set(got) == set(expected) and expected
    for name, ref in expected.items():
        scale = ref.abs().max().clamp(min=1e-12)  # fp32 sums the G copies' prompt gradients in another order
        assert ((got[name] - ref).abs().max() / scale).item() <= 1e-4, name


def assert_shared(trainer, before):
    assert trainer.prefix_stats.shared_forwards > before, "the shared forward did not run"


@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "dr_grpo", "gspo", "cispo", "sapo"])
@pytest.mark.parametrize("setup", ["trainable_tower", "frozen_tower", "lora"])
def test_shared_forward_matches_trl(folder, dataset, tmp_path, algorithm, setup):
    train = {"trainable_tower": "all", "frozen_tower": "projector_llm", "lora": "llm"}[setup]
    t = make_trainer(folder, dataset, tmp_path, algorithm, train=train, lora=setup == "lora")
    # every preset reaches TRL's loss as defined: GSPO's sequence-level ratio, CISPO's and SAPO's own losses
    assert t.importance_sampling_level == ("sequence" if algorithm == "gspo" else "token")
    assert t.loss_type == {"gspo": "grpo", "cispo": "cispo", "sapo": "sapo"}.get(algorithm, t.loss_type)
    batch = trl_batch(t)
    assert len(set(batch["prompt_mask"].sum(1).tolist())) == len(PROMPTS)  # left padding differs per prompt
    assert max(batch["num_images"]) == 2

    before = t.prefix_stats.shared_forwards
    old, old_entropy = logps(t, t.model, batch, share=True)  # the old-policy forward (no grad)
    assert_shared(t, before)
    expected, expected_entropy = logps(t, t.model, batch, share=False)
    torch.testing.assert_close(old, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(old_entropy, expected_entropy, rtol=0, atol=1e-5)
    if t.beta:  # the reference forward: a separate model, or the policy with its adapter disabled
        if t.ref_model is not None:
            ref = logps(t, t.ref_model, batch, True, entropy=False)[0]
            torch.testing.assert_close(ref, logps(t, t.ref_model, batch, False, entropy=False)[0], rtol=0, atol=1e-5)
        batch["ref_per_token_logps"] = expected - 0.05  # a KL term that is not zero
    batch["old_per_token_logps"] = expected + 0.3 * torch.randn_like(expected)  # ratios outside the clip range

    before = t.prefix_stats.shared_forwards
    loss, grads = loss_and_grads(t, batch, share=True)
    assert_shared(t, before)
    ref_loss, ref_grads = loss_and_grads(t, batch, share=False)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_grads_match(grads, ref_grads)
    if setup == "trainable_tower":
        assert any(".visual." in n for n in grads)
    if setup == "lora":
        assert grads and all("lora_" in n or "modules_to_save" in n for n in grads)


@pytest.mark.parametrize("setup", ["trainable_tower", "lora"])
def test_shared_forward_under_gradient_checkpointing_matches_trl(folder, dataset, tmp_path, setup):
    """Gradient checkpointing on in both (the GPU configs): the shared forward still runs, through checkpointed
    layers that recompute in the backward, and gives TRL's checkpointed unshared loss and gradients."""
    t = make_trainer(folder, dataset, tmp_path, "dapo", train="all" if setup == "trainable_tower" else "llm",
                     lora=setup == "lora")
    batch = trl_batch(t)
    batch["old_per_token_logps"] = logps(t, t.model, batch, share=False)[0] + 0.1
    t.model.gradient_checkpointing_enable()
    layers = prefix_cache.checkpointed_layers(t.accelerator.unwrap_model(t.model))
    assert layers and not prefix_cache.reentrant_checkpointing(t.model)
    calls = []  # the recompute really runs: a checkpointed decoder layer's forward is called again in the backward
    decoder = prefix_share.unwrap_model(t.model).model.language_model.layers[0]
    assert decoder in layers
    decoder.register_forward_pre_hook(lambda m, a: calls.append(1))
    before = t.prefix_stats.shared_forwards
    loss, grads = loss_and_grads(t, batch, share=True)
    assert_shared(t, before)
    assert len(calls) == 4  # pass 1 and pass 2, each run once forward and once recomputed in the backward
    ref_loss, ref_grads = loss_and_grads(t, batch, share=False)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_grads_match(grads, ref_grads)
    if setup == "trainable_tower":
        assert any(".visual." in n for n in grads)
    assert all("_can_checkpoint_with_cache" not in vars(m) for m in layers)  # transformers' setting restored


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_other_qwen_vl_families(dataset, tmp_path, family):
    """Qwen2-VL's rope and Qwen3-VL's (interleaved rope, deepstack visual features) share exactly too."""
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    t = make_trainer(build_tiny(family, tmp_path / "tiny"), dataset, tmp_path, "dr_grpo")
    batch = trl_batch(t)
    assert prefill_share.prefill_stats(t.model).shared_forwards == 1  # TRL's generation step shared its prefill
    before = t.prefix_stats.shared_forwards
    torch.testing.assert_close(logps(t, t.model, batch, True)[0], logps(t, t.model, batch, False)[0], rtol=0, atol=1e-5)
    assert t.prefix_stats.shared_forwards == before + 1
    batch["old_per_token_logps"] = logps(t, t.model, batch, False)[0]
    assert_grads_match(loss_and_grads(t, batch, True)[1], loss_and_grads(t, batch, False)[1])

    rows = [t.train_dataset[i] for i in range(len(PROMPTS)) for _ in range(G)]
    texts = [apply_chat_template({"prompt": prepare_multimodal_messages(r["prompt"], images=r["images"])},
                                 t.processing_class)["prompt"] for r in rows]
    inputs = t.processing_class(images=[r["images"] for r in rows], text=texts, padding=True, return_tensors="pt")
    settings = dict(max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True)
    shared = t.model.eval().generate(**inputs, **settings)
    prefill_share.unshare_prefill(t.model)
    unshared = t.model.generate(**inputs, **settings)
    assert torch.equal(shared.sequences, unshared.sequences)
    torch.testing.assert_close(torch.stack(shared.scores), torch.stack(unshared.scores), rtol=0, atol=1e-5)


def test_reference_through_disabled_adapter_matches(folder, dataset, tmp_path):
    """LoRA + beta > 0: TRL's reference forward is the policy with its adapter disabled."""
    from trl.trainer.utils import use_adapter

    t = make_trainer(folder, dataset, tmp_path, "grpo", train="llm", lora=True)
    assert t.ref_model is None and t.beta > 0
    batch = trl_batch(t)
    with use_adapter(t.accelerator.unwrap_model(t.model), adapter_name=None):
        shared, unshared = logps(t, t.model, batch, True)[0], logps(t, t.model, batch, False)[0]
    torch.testing.assert_close(shared, unshared, rtol=0, atol=1e-5)


def test_falls_back_where_not_exact(folder, dataset, tmp_path):
    t = make_trainer(folder, dataset, tmp_path, "dr_grpo", lora=True)
    batch = trl_batch(t)
    ids, mask, keep, extra = forward_args(batch)
    t.model.train()
    assert prefix_share.unshareable_reason(t.model, keep, extra) is None
    t.model.gradient_checkpointing_enable()  # transformers' default: non-reentrant, shareable
    assert prefix_share.unshareable_reason(t.model, keep, extra) is None
    t.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    assert "reentrant gradient checkpointing" in prefix_share.unshareable_reason(t.model, keep, extra)
    dropout_lora = load_model(ModelConfig(name_or_path=str(folder), lora=LoraConfig(enabled=True, dropout=0.05)))[0]
    assert prefix_share.unshareable_reason(dropout_lora.train(), keep, extra) == \
        "dropout is active (e.g. LoRA dropout > 0)"
    assert prefix_share.unshareable_reason(dropout_lora.eval(), keep, extra) is None
    t.model.eval()
    assert prefix_share.unshareable_reason(t.model, keep, dict(extra, token_type_ids=ids)) == \
        "model inputs ['token_type_ids'] are not supported"
    video_in_completion = extra["mm_token_type_ids"].clone()
    video_in_completion[0, -1] = 2
    assert prefix_share.unshareable_reason(t.model, keep, dict(extra, mm_token_type_ids=video_in_completion)) == \
        "video tokens inside the completions"
    image_in_completion = extra["mm_token_type_ids"].clone()
    image_in_completion[0, -1] = 1  # a tool result's image: shared (tests/stages/test_rl_tools.py)
    assert prefix_share.unshareable_reason(t.model, keep, dict(extra, mm_token_type_ids=image_in_completion)) is None
    # what falls back is TRL's own forward: still the same numbers, nothing shared
    t.model.train()
    before = t.prefix_stats.shared_forwards
    loss, grads = loss_and_grads(t, batch, share=True)
    assert t.prefix_stats.shared_forwards == before
    assert_grads_match(grads, loss_and_grads(t, batch, share=False)[1])


@pytest.mark.parametrize("setup", ["trainable_tower", "lora"])
def test_shared_prefill_samples_the_same_rollouts(folder, dataset, tmp_path, setup):
    """TRL's generation step (sampling at T = 1) gives the same completions with one prefill per group."""
    t = make_trainer(folder, dataset, tmp_path, "dr_grpo", train="all" if setup == "trainable_tower" else "llm",
                     lora=setup == "lora")
    rows = [t.train_dataset[i] for i in range(len(PROMPTS)) for _ in range(G)]
    t.model.train()  # as in training
    torch.manual_seed(3)
    shared = t._generate_and_score_completions(rows)
    stats = prefill_share.prefill_stats(t.model)
    assert stats.shared_forwards == 1 and stats.as_metrics()["prefix_share/token_saving"] > 0.5
    prefill_share.unshare_prefill(t.model)
    torch.manual_seed(3)
    unshared = t._generate_and_score_completions(rows)
    assert torch.equal(shared["completion_ids"], unshared["completion_ids"])
    assert torch.equal(shared["completion_mask"], unshared["completion_mask"])


def test_shared_prefill_greedy_scores_match(folder, dataset, tmp_path):
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    t = make_trainer(folder, dataset, tmp_path, "dr_grpo")
    model, processor = t.model.eval(), t.processing_class
    rows = [t.train_dataset[i] for i in range(len(PROMPTS)) for _ in range(G)]
    texts = [apply_chat_template({"prompt": prepare_multimodal_messages(r["prompt"], images=r["images"])},
                                 processor)["prompt"] for r in rows]
    batch = processor(images=[r["images"] for r in rows], text=texts, padding=True, return_tensors="pt")
    settings = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    shared = model.generate(**batch, **settings)
    assert prefill_share.prefill_stats(model).shared_forwards == 1
    prefill_share.unshare_prefill(model)
    assert "generate" not in vars(model)
    unshared = model.generate(**batch, **settings)
    assert torch.equal(shared.sequences, unshared.sequences)
    for got, expected in zip(shared.scores, unshared.scores):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_plan_groups_by_prompt_and_images():
    ids = torch.tensor([[0, 5, 6], [1, 5, 7], [0, 5, 6], [0, 5, 6], [1, 5, 7]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [0, 1, 1], [1, 1, 1]])
    a, b = torch.ones(4, 3), torch.zeros(4, 3)
    grid = torch.tensor([[1, 2, 2]] * 5)
    # rows 0, 2, 3 share text; row 3 has another image -> its own group
    pixels = torch.cat([a, b, a, b, b])
    assert plan_groups(ids, mask, pixels, grid, [1] * 5) == [[0, 2], [1, 4], [3]]
    assert plan_groups(ids, mask, None, None, None) == [[0, 2, 3], [1, 4]]
    other_mask = mask.clone()
    other_mask[2, 0] = 1  # same ids, different padding: not the same prompt
    assert plan_groups(ids, other_mask, None, None, None) == [[0, 3], [1, 4], [2]]
    # tool results: rows 0 and 2 add a view (another image) after their prompt's; only prompt images are compared
    view = torch.full((4, 3), 7.0)
    pixels = torch.cat([a, view, b, a, b, b])
    grids = torch.tensor([[1, 2, 2]] * 6)
    assert plan_groups(ids, mask, pixels, grids, [2, 1, 1, 1, 1]) == [[0], [1, 4], [2], [3]]  # all images compared
    assert plan_groups(ids, mask, pixels, grids, [2, 1, 1, 1, 1], [1] * 5) == [[0, 2], [1, 4], [3]]


def test_split_row_images_into_prompt_and_tool_results():
    pixels, grids = torch.arange(20.0)[:, None], torch.tensor([[1, 2, 2], [1, 4, 4]])
    (p_pix, p_grid), (t_pix, t_grid) = prefix_share.split_row_images((pixels, grids), 1)
    assert p_pix.shape[0] == 4 and p_grid.tolist() == [[1, 2, 2]]
    assert t_pix[0].item() == 4.0 and t_pix.shape[0] == 16 and t_grid.tolist() == [[1, 4, 4]]
    assert prefix_share._image_inputs([(p_pix[:0], p_grid[:0])]) == {}  # no image: no vision inputs


def test_chunks_keep_groups_whole():
    groups = [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9, 10]]
    assert prefix_share._chunks(groups, 6) == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8, 9, 10]]]
    assert prefix_share._chunks(groups, None) == [groups]
    assert prefix_share._chunks(groups, 2) == [[g] for g in groups]


def test_version_check_turns_sharing_off(folder, dataset, tmp_path, monkeypatch, caplog):
    assert trl_supported("1.16.0") and not trl_supported("1.17.0") and not trl_supported("2.0")
    monkeypatch.setattr(prefix_share, "TRL_TESTED", ("0.1",))
    with caplog.at_level(logging.WARNING, logger="stages.rl.trainer"):
        t = make_trainer(folder, dataset, tmp_path, "dr_grpo", train="llm")
    assert not t.share_prefix
    assert "share_prefix is off: it hooks a private TRL method checked against TRL 0.1 only" in caplog.text


def test_config_switch_turns_sharing_off(folder, dataset, tmp_path, monkeypatch):
    """`share_prefix=false` in RLConfig reaches the trainer: TRL's own forward and generate run."""
    import stages.rl.trainer as trainer_module
    from corpora.demo import build_demo
    from stages.rl import RLConfig, run

    made = {}

    class Stop(Exception):
        pass

    class Recording(PathoGRPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made["trainer"] = self
            raise Stop

    monkeypatch.setattr(trainer_module, "PathoGRPOTrainer", Recording)
    demo = build_demo(tmp_path / "demo", n_train=8, n_eval=4, image_size=56)
    for share in (False, True):
        with pytest.raises(Stop):
            run(RLConfig(init=str(folder), data=str(demo.root), share_prefix=share, num_generations=2, batch_size=1,
                         max_completion_length=4, max_steps=1, run=f"switch-{share}"))
        t = made["trainer"]
        assert t.share_prefix is share
        assert ("generate" in vars(t.model)) is share


GPU_RL_CONFIGS = {  # file -> the block holding the RL stage's settings (None: the whole file)
    "stages/configs/rl_dapo_qwen2_5_vl_7b.yaml": None, "recipes/configs/patho_r1_qwen2_5_vl_7b.yaml": "rl",
    "recipes/configs/patho_r1_qwen2_5_vl_3b.yaml": "rl", "recipes/configs/medvlm_r1_qwen2_vl_2b.yaml": "rl",
    "recipes/configs/med_r1_qwen2_vl_2b.yaml": "rl"}


@pytest.mark.parametrize("path", GPU_RL_CONFIGS)
def test_gpu_rl_configs_keep_gradient_checkpointing_and_prefix_sharing(path):
    """The shipped GPU RL configs train with gradient checkpointing, and sharing stays on under it (the
    non-reentrant recompute the shared forward needs: no use_reentrant=True of their own)."""
    from pathlib import Path

    import yaml

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / path).read_text())
    rl = doc[GPU_RL_CONFIGS[path]] if GPU_RL_CONFIGS[path] else doc
    assert rl["gradient_checkpointing"] is True
    assert rl.get("share_prefix", RLConfig.share_prefix) is True
    assert (rl.get("trl", {}).get("gradient_checkpointing_kwargs") or {}).get("use_reentrant") is not True
