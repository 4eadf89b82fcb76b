"""`trl.<field>` passthrough, the gspo / cispo / sapo presets, entropy masking, the vLLM mismatch correction and the
vision-token ban in vLLM's sampling parameters.

TRL computes every loss here; these tests pin down that OUR settings reach TRL's GRPOTrainer and change its loss as
each method's definition says (hand-computed on a fixed tiny batch, the policy log-probs replaced by log(ratio)).
"""
import math
import types
from pathlib import Path

import pytest
import torch
from datasets import Dataset, Image as ImageFeature, List

from stages.config import ConfigError, load_config
from stages.model import ModelConfig, build_tiny, load_model
from stages.rl.config import PRESETS, RLConfig
from stages.rl.trainer import PathoGRPOTrainer
from stages.model import vision_token_ids, vision_tokens
from stages.rl.training import grpo_args

G, L_MAX = 4, 8
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny"))
    return load_model(ModelConfig(name_or_path=str(folder)))


def make_trainer(tiny, tmp_path, algorithm="grpo", **overrides):
    model, processor = tiny
    cfg = RLConfig(algorithm=algorithm, init="unused", num_generations=G, batch_size=2, max_completion_length=L_MAX,
                   max_steps=1, lr=1e-3, rewards=["format"], reward_weights=[1.0], **overrides).resolved()
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"question {i}"}]} for i in range(4)])
    return PathoGRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                            args=grpo_args(cfg, tmp_path / "out"), train_dataset=data, processing_class=processor)


def loss_and_grad(t, ratios, mask, advantages, entropies=None):
    """TRL's _compute_loss with the policy log-probs replaced by log(ratios) (old log-probs are 0)."""
    logps = torch.log(torch.tensor(ratios, dtype=torch.float64)).float().requires_grad_(True)
    ent = torch.zeros_like(logps) if entropies is None else torch.tensor(entropies)
    t._get_per_token_logps_and_entropies = lambda *a, **k: (logps, ent, None)
    t.model.train()
    t.current_gradient_accumulation_steps = 1
    mask = torch.tensor(mask)
    inputs = {"prompt_ids": torch.zeros(len(mask), 1, dtype=torch.long),
              "prompt_mask": torch.ones(len(mask), 1, dtype=torch.long),
              "completion_ids": torch.zeros_like(mask), "completion_mask": mask,
              "advantages": torch.tensor(advantages), "old_per_token_logps": torch.zeros(mask.shape),
              "num_items_in_batch": mask.sum()}
    loss = t._compute_loss(t.model, inputs)
    loss.backward()
    return loss.item(), logps.grad


# ------------------------------------------------------------------------------------------------ config layer
def test_trl_fields_arrive_from_yaml_and_command_line(tmp_path):
    yaml_file = tmp_path / "rl.yaml"
    yaml_file.write_text("trl:\n  top_entropy_quantile: 0.2\n  vllm_max_model_length: 4096\n")
    cfg = load_config(RLConfig, ["--config", str(yaml_file), "trl.vllm_max_model_length=8192",
                                 "trl.vllm_enable_sleep_mode=true"])
    assert cfg.trl == {"top_entropy_quantile": 0.2, "vllm_max_model_length": 8192, "vllm_enable_sleep_mode": True}
    args = grpo_args(cfg.resolved(), tmp_path / "out")
    assert (args.top_entropy_quantile, args.vllm_max_model_length, args.vllm_enable_sleep_mode) == (0.2, 8192, True)


def test_unknown_trl_field_names_the_origin_and_a_close_match(tmp_path):
    yaml_file = tmp_path / "rl.yaml"
    yaml_file.write_text("algorithm: dapo\ntrl:\n  top_entropy_quantil: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(RLConfig, ["--config", str(yaml_file)])
    assert str(e.value) == (f"RLConfig: unknown key 'trl.top_entropy_quantil' (from {yaml_file}:3): GRPOConfig has "
                            "no field 'top_entropy_quantil'; did you mean 'trl.top_entropy_quantile'?")


def test_wrong_type_of_a_trl_field_is_refused_with_its_type():
    with pytest.raises(ConfigError) as e:
        load_config(RLConfig, ["trl.vllm_max_model_length=long"])
    assert str(e.value) == ("RLConfig.trl.vllm_max_model_length (from command-line argument "
                            "'trl.vllm_max_model_length=long'): expected int | None "
                            "(GRPOConfig.vllm_max_model_length), got 'long' (str)")


def test_a_trl_field_that_rlconfig_sets_points_to_the_rlconfig_field():
    with pytest.raises(ConfigError, match=r"RLConfig.trl.learning_rate \(from command-line argument "
                                          r"'trl.learning_rate=0.1'\): pathor1 sets GRPOConfig.learning_rate "
                                          r"itself from 'lr'; set that instead"):
        load_config(RLConfig, ["trl.learning_rate=0.1"])


def test_recipes_reach_the_passthrough_under_rl(tmp_path):
    from recipes.patho_r1 import PathoR1Config

    cfg = load_config(PathoR1Config, ["rl.trl.steps_per_generation=2"])
    assert cfg.rl.trl == {"steps_per_generation": 2}
    with pytest.raises(ConfigError, match=r"unknown key 'rl.trl.steps_per_generations' .*did you mean "
                                          r"'rl.trl.steps_per_generation'"):
        load_config(PathoR1Config, ["rl.trl.steps_per_generations=2"])


def test_micro_batches_accumulate_to_the_same_optimizer_batch(tmp_path):
    whole = grpo_args(RLConfig(batch_size=4, num_generations=8, grad_accum=2).resolved(), tmp_path / "a")
    micro = grpo_args(RLConfig(batch_size=4, num_generations=8, grad_accum=2, micro_batch=4).resolved(), tmp_path / "b")
    assert (whole.per_device_train_batch_size, whole.gradient_accumulation_steps) == (32, 2)
    assert (micro.per_device_train_batch_size, micro.gradient_accumulation_steps) == (4, 16)
    for args in (whole, micro):  # 64 completions per optimizer step and per generation round, on each device
        assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 64
        assert args.generation_batch_size == 64 and args.steps_per_generation == args.gradient_accumulation_steps
    with pytest.raises(ValueError, match="micro_batch must divide batch x num_generations = 32, got 5"):
        RLConfig(batch_size=4, num_generations=8, micro_batch=5)


@pytest.mark.parametrize("algorithm", sorted(PRESETS))
def test_every_preset_builds_a_grpo_config(tmp_path, algorithm):
    cfg = RLConfig(algorithm=algorithm).resolved()
    args = grpo_args(cfg, tmp_path / "out")
    assert args.loss_type == PRESETS[algorithm]["loss_type"]
    for key, value in PRESETS[algorithm].get("trl", {}).items():
        assert getattr(args, key) == value


def test_user_trl_keys_win_over_the_preset():
    cfg = RLConfig(algorithm="gspo", trl={"importance_sampling_level": "token"}).resolved()
    assert cfg.trl == {"importance_sampling_level": "token"}


# ------------------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("algorithm, expected", [
    ("gspo", ("grpo", "sequence", 0.0, 3e-4, 4e-4)),
    ("cispo", ("cispo", "token", 0.0, 0.2, 5.0)),
    ("sapo", ("sapo", "token", 0.0, 0.2, 0.2)),
])
def test_new_presets_reach_trl(tiny, tmp_path, algorithm, expected):
    t = make_trainer(tiny, tmp_path, algorithm)
    assert (t.loss_type, t.importance_sampling_level, t.beta, t.epsilon_low, t.epsilon_high) == expected
    assert t.ref_model is None


def test_gspo_uses_one_ratio_per_sequence(tiny, tmp_path):
    # a: log-ratios [+2e-4, 0] (mean 1e-4), A = +1.  b: log-ratios [1e-4, -1e-4, 5e-5] (mean 1.67e-5), A = -1.
    log_r = [[2e-4, 0.0, 0.0], [1e-4, -1e-4, 5e-5]]
    ratios, mask, adv = [[math.exp(x) for x in row] for row in log_r], [[1, 1, 0], [1, 1, 1]], [1.0, -1.0]
    s_a, s_b = math.exp(1e-4), math.exp(5e-5 / 3)
    loss, grad = loss_and_grad(make_trainer(tiny, tmp_path, "gspo"), ratios, mask, adv)
    assert loss == pytest.approx((-s_a + s_b) / 2, abs=1e-7)  # float32 near 1
    # d/d log p_t of exp(mean log r) = s / |y|: every token of a sequence gets the same weight
    torch.testing.assert_close(grad[0, :2], torch.full((2,), -s_a / 2 / 2))
    torch.testing.assert_close(grad[1], torch.full((3,), s_b / 2 / 3))
    # the same batch at token level: each token weighs its own ratio
    _, token_grad = loss_and_grad(make_trainer(tiny, tmp_path, "gspo", trl={"importance_sampling_level": "token"}),
                                  ratios, mask, adv)
    assert not torch.allclose(token_grad[1], token_grad[1, :1].expand(3))


def test_gspo_clips_a_whole_sequence_on_its_mean_ratio(tiny, tmp_path):
    # log-ratios [1e-3, 0]: the mean 5e-4 is above 1 + 4e-4, so the whole sequence is clipped (A > 0) -- even its
    # second token, whose own ratio 1 is inside the band and keeps its gradient at token level
    ratios, mask, adv = [[math.exp(1e-3), 1.0], [1.0, 1.0]], [[1, 1], [1, 1]], [1.0, 0.0]
    _, seq_grad = loss_and_grad(make_trainer(tiny, tmp_path, "gspo"), ratios, mask, adv)
    _, tok_grad = loss_and_grad(make_trainer(tiny, tmp_path, "gspo", trl={"importance_sampling_level": "token"}),
                                ratios, mask, adv)
    assert torch.all(seq_grad[0] == 0)
    assert tok_grad[0, 0] == 0 and tok_grad[0, 1] != 0


def test_cispo_clips_the_weight_not_the_gradient(tiny, tmp_path):
    # ratios 1.5 and 6 with A = +1: PPO's clip (grpo) zeroes both gradients; CISPO weighs log p by min(r, 5), detached
    ratios, mask, adv = [[1.5, 6.0], [1.0, 1.0]], [[1, 1], [1, 1]], [1.0, 0.0]
    loss, grad = loss_and_grad(make_trainer(tiny, tmp_path, "cispo"), ratios, mask, adv)
    n_tokens = 4  # token-level normaliser: every completion token of the batch
    assert loss == pytest.approx(-(1.5 * math.log(1.5) + 5.0 * math.log(6.0)) / n_tokens, rel=1e-5)
    torch.testing.assert_close(grad[0], torch.tensor([-1.5, -5.0]) / n_tokens)
    _, grpo_grad = loss_and_grad(make_trainer(tiny, tmp_path, "grpo", beta=0.0), ratios, mask, adv)
    assert torch.all(grpo_grad[0] == 0)


def test_sapo_replaces_the_hard_clip_with_a_temperature_gate(tiny, tmp_path):
    # a: ratio 1.5, A = +1 (tau_pos = 1).  b: ratios 0.5 / 1 / 1.1, A = -1 (tau_neg = 1.05).
    ratios, mask, adv = [[1.5, 1.0, 1.0], [0.5, 1.0, 1.1]], [[1, 0, 0], [1, 1, 1]], [1.0, -1.0]
    gate = lambda r, tau: torch.sigmoid(torch.tensor(tau * (r - 1))).item() * 4 / tau  # noqa: E731
    expected = (-gate(1.5, 1.0) + sum(gate(r, 1.05) for r in (0.5, 1.0, 1.1)) / 3) / 2
    loss, grad = loss_and_grad(make_trainer(tiny, tmp_path, "sapo"), ratios, mask, adv)
    assert loss == pytest.approx(expected, rel=1e-5)
    # d/d log p of -A * 4/tau * sigmoid(tau (r - 1)) = -A * 4 * sigmoid' * r: a's ratio 1.5 keeps a gradient
    sig = torch.sigmoid(torch.tensor(0.5)).item()
    assert grad[0, 0].item() == pytest.approx(-4 * sig * (1 - sig) * 1.5 / 2, rel=1e-5)
    assert torch.all(grad[0, 1:] == 0)


def test_entropy_masking_trains_only_the_high_entropy_tokens(tiny, tmp_path):
    # top_entropy_quantile 0.25 of 4 tokens: only the highest-entropy token (entropy 3) stays in the loss
    ratios, mask, adv = [[1.0, 1.0], [1.0, 1.0]], [[1, 1], [1, 1]], [1.0, -1.0]
    entropies = [[0.1, 3.0], [0.2, 0.3]]
    t = make_trainer(tiny, tmp_path, "dapo", trl={"top_entropy_quantile": 0.25})
    assert t.top_entropy_quantile == 0.25
    loss, grad = loss_and_grad(t, ratios, mask, adv, entropies)
    assert loss == pytest.approx(-1.0 / 4)  # one token, -r*A, over the 4 tokens of the batch
    assert grad[0, 1] != 0 and grad[0, 0] == 0 and torch.all(grad[1] == 0)
    _, all_grad = loss_and_grad(make_trainer(tiny, tmp_path, "dapo"), ratios, mask, adv, entropies)
    assert torch.all(all_grad != 0)


def test_vllm_mismatch_correction_truncates_the_per_token_ratio(tiny, tmp_path):
    # rl_dapo_vllm.yaml's setting: token_truncate at C = 2 (TIS). vLLM is replaced by a generator that reports its
    # own sampling log-probs; TRL then weighs each token by min(exp(logp_train - logp_vllm), 2).
    from stages.config import config_class_of

    shipped = load_config(config_class_of(ROOT / "stages/configs/rl_dapo_vllm.yaml"),
                          ["--config", str(ROOT / "stages/configs/rl_dapo_vllm.yaml")])
    trl = {k: v for k, v in shipped.trl.items() if k.startswith("vllm_importance")}
    assert trl["vllm_importance_sampling_mode"] == "token_truncate"
    t = make_trainer(tiny, tmp_path, "dapo", trl=trl, mask_truncated_completions=False)  # no EOS in the fakes
    assert (t.vllm_importance_sampling_mode, t.vllm_importance_sampling_clip_max) == ("token_truncate", 2.0)
    sampling_logps = [-1.0, -12.0, -3.0]  # the tiny model's own log-probs are about -7: ratios < 1, > 2, < 1

    def fake_generate(prompts, images, num_generations, profiler=None):
        completions = [[5, 6, 7] for _ in prompts]
        return prompts, completions, [[[lp] for lp in sampling_logps] for _ in prompts], None

    t.use_vllm, t._last_loaded_step = True, 0
    t.vllm_generation = types.SimpleNamespace(generate=fake_generate, sync_weights=lambda: None)
    t.model.train()
    out = t._generate_and_score_completions([t.train_dataset[i] for i in (0, 1) for _ in range(G)])
    expected = torch.exp(out["old_per_token_logps"] - torch.tensor(sampling_logps)).clamp(max=2.0)
    torch.testing.assert_close(out["importance_sampling_ratio"], expected)
    assert (expected[:, 1] == 2.0).all() and (expected[:, 0] < 1).all()


# ------------------------------------------------------------------------------------------------ vision tokens
def test_vllm_sampling_parameters_carry_the_vision_tokens(tiny, tmp_path, monkeypatch):
    # TRL builds vLLM's SamplingParams from GRPOConfig.generation_kwargs (colocate); record what it builds.
    from trl.generation import vllm_generation

    _, processor = tiny
    ids, tokens = vision_token_ids(processor), vision_tokens(processor)
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") in ids and len(ids) == len(tokens) >= 4
    cfg = RLConfig(use_vllm=True, trl={"generation_kwargs": {"bad_words": ["FORBIDDEN"]}}).resolved()
    args = grpo_args(cfg, tmp_path / "out", suppress_token_ids=ids, suppress_tokens=tokens)
    assert args.generation_kwargs["bad_words"] == ["FORBIDDEN", *tokens]  # the user's own entry is kept
    assert args.generation_kwargs["logit_bias"] == {i: -100.0 for i in ids}
    assert "suppress_tokens" not in args.generation_kwargs  # a transformers option vLLM does not know

    built = {}
    monkeypatch.setattr(vllm_generation, "SamplingParams", lambda **kw: built.update(kw) or kw, raising=False)
    engine = object.__new__(vllm_generation.VLLMGeneration)
    engine.__dict__.update(
        mode="colocate", enable_sleep_mode=False, tensor_parallel_size=1, structured_outputs_regex=None,
        accelerator=types.SimpleNamespace(), model=torch.nn.Linear(1, 1), temperature=1.0, top_p=1.0, top_k=0, min_p=0.0,
        repetition_penalty=1.0, max_completion_length=8, logprobs=0, generation_kwargs=args.generation_kwargs,
        llm=types.SimpleNamespace(generate=lambda prompts, sampling_params, use_tqdm: []))
    engine.generate(prompts=[[1, 2]], images=None, num_generations=1)
    assert set(tokens) <= set(built["bad_words"]) and all(built["logit_bias"][i] == -100.0 for i in ids)


def test_transformers_rollouts_still_suppress_the_vision_tokens(tiny, tmp_path):
    _, processor = tiny
    ids = vision_token_ids(processor)
    args = grpo_args(RLConfig().resolved(), tmp_path / "out", suppress_token_ids=ids,
                     suppress_tokens=vision_tokens(processor))
    assert args.generation_kwargs == {"suppress_tokens": ids}


# ------------------------------------------------------------------------------------------------ image budget
def test_capped_images_give_vllms_default_processor_the_trainers_token_count(tmp_path):
    # vLLM re-processes the raw image with the checkpoint's own processor (12.8 MP budget) while the prompt ids come
    # from the trainer's (model.max_pixels): the pre-sized images make both count the same image tokens.
    from PIL import Image
    from transformers import AutoProcessor

    from stages.model import resolve_model_path
    from stages.rl.training import cap_image_pixels, fitted_size

    folder = resolve_model_path("tiny:qwen2_5_vl")
    budget = 100 * 28 * 28
    ours = AutoProcessor.from_pretrained(folder, max_pixels=budget)
    vllms = AutoProcessor.from_pretrained(folder, max_pixels=12845056)
    paths = []
    for i, size in enumerate([(1000, 700), (300, 2000), (84, 84)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", size, (i * 60, 90, 120)).save(paths[-1])
    data = Dataset.from_list([{"images": [p], "prompt": "q"} for p in paths])
    capped = cap_image_pixels(data.cast_column("images", List(ImageFeature())), ours, budget)
    for i in range(len(paths)):
        image = capped[i]["images"][0]
        w, h = image.size
        assert w % 28 == 0 and h % 28 == 0 and w * h <= budget
        grids = [p.image_processor(images=[image], return_tensors="pt")["image_grid_thw"] for p in (ours, vllms)]
        assert torch.equal(grids[0], grids[1]) and int(grids[0].prod()) == w * h // 14 // 14
    assert capped[2]["images"][0].size == (84, 84)  # small images are left as they are
    assert fitted_size(1000, 700, budget, 28) == (308, 224)  # scale sqrt(78400 / 700000) = 0.335, floored to 28s


def test_an_rl_run_with_micro_batches_an_image_budget_and_trl_fields(tmp_path):
    # the whole stage: gspo preset + a trl field + 2 completions per forward (2 accumulated) + images capped at
    # 56 x 56; TRL trains exactly `steps` optimizer steps and the manifest records what was trained with
    import json
    import shutil

    from corpora.demo import build_demo
    from stages.registry import Registry
    from stages.rl import run
    from stages.rl.trainer import TRAINER_STATE_DIR

    base = build_tiny("qwen2_5_vl", tmp_path / "tiny")
    with Registry().writer("sft", "mb", 1, parent="tiny:qwen2_5_vl") as w:
        for f in base.iterdir():
            shutil.copy(f, w.path / f.name)
    demo = build_demo(tmp_path / "demo", n_train=8, n_eval=4, image_size=56)
    final = run(RLConfig(algorithm="gspo", init="sft:mb", data=str(demo.root), num_generations=2, batch_size=2,
                         micro_batch=2, max_completion_length=8, max_steps=2, lr=1e-3, run="mb",
                         model=ModelConfig(max_pixels=56 * 56), trl={"top_entropy_quantile": 0.5}))
    config = json.loads((final / "manifest.json").read_text())["config"]
    assert config["micro_batch"] == 2 and config["model"]["max_pixels"] == 3136
    assert config["trl"] == {"importance_sampling_level": "sequence", "top_entropy_quantile": 0.5}
    state = json.loads((final / TRAINER_STATE_DIR / "trainer_state.json").read_text())
    assert final.name == "step-00000002" and [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2]


@pytest.mark.parametrize("path", sorted((ROOT / "stages/configs").glob("rl_*.yaml")), ids=lambda p: p.name)
def test_every_shipped_rl_config_reaches_grpo_config(tmp_path, path):
    cfg = load_config(RLConfig, ["--config", str(path)]).resolved()
    args = grpo_args(cfg, tmp_path / "out")
    assert (args.loss_type, args.per_device_train_batch_size * args.gradient_accumulation_steps) == (
        cfg.loss_type, cfg.batch_size * cfg.num_generations * cfg.grad_accum)
    for key, value in cfg.trl.items():
        assert getattr(args, key) == value, key
    if path.name == "rl_dapo_entropy.yaml":
        assert args.top_entropy_quantile == 0.2
