"""Our presets drive TRL's own advantages and losses: hand-computed cases for grpo, dapo and dr_grpo.

TRL computes the math (we do not re-implement it); these tests pin down that OUR configuration of it is
what the algorithms prescribe: group-normalised vs unnormalised advantages, clipping at 0.2 / 0.28,
sequence- vs token-level normalisation, Dr. GRPO's constant normaliser.
"""
import math

import pytest
import torch
from datasets import Dataset

from stages.model import ModelConfig, build_tiny, load_model
from stages.rl.config import RLConfig
from stages.rl.training import grpo_args
from stages.rl.trainer import PathoGRPOTrainer

G, L_MAX = 4, 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny"))
    return load_model(ModelConfig(name_or_path=str(folder)))


def make_trainer(tiny, algorithm, tmp_path, **overrides):
    model, processor = tiny
    cfg = RLConfig(algorithm=algorithm, init="unused", num_generations=G, batch_size=2, max_completion_length=L_MAX,
                   max_steps=1, lr=1e-3, rewards=["format"], reward_weights=[1.0], **overrides).resolved()
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"question {i}"}], "solution": "<answer> A </answer>"}
                              for i in range(4)])
    return PathoGRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                            args=grpo_args(cfg, tmp_path / "out"), train_dataset=data, processing_class=processor)


@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "dr_grpo"])
def test_preset_reaches_trl(tiny, tmp_path, algorithm):
    t = make_trainer(tiny, algorithm, tmp_path)
    expected = {"grpo": ("grpo", 0.2, 0.2, 0.04, "group", False),
                "dapo": ("dapo", 0.2, 0.28, 0.0, "group", True),
                "dr_grpo": ("dr_grpo", 0.2, 0.2, 0.0, "none", False)}[algorithm]
    got = (t.loss_type, t.epsilon_low, t.epsilon_high, t.beta, t.scale_rewards, t.mask_truncated_completions)
    assert got == expected
    assert (t.ref_model is not None) == (algorithm == "grpo")  # the reference model only when beta > 0


def test_explicit_values_beat_the_preset(tiny, tmp_path):
    t = make_trainer(tiny, "grpo", tmp_path, beta=0.0, epsilon_high=0.28)
    assert (t.beta, t.epsilon_high, t.ref_model) == (0.0, 0.28, None)


@pytest.mark.parametrize(
    "algorithm, first_group",
    [
        # rewards [1, 0, 0, 0]: mean 0.25, sample std 0.5 -> (r - 0.25) / (0.5 + 1e-4)
        ("grpo", [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001]),
        ("dapo", [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001]),
        # Dr. GRPO: no std division
        ("dr_grpo", [0.75, -0.25, -0.25, -0.25]),
    ],
)
def test_advantages_per_variant(tiny, tmp_path, algorithm, first_group):
    t = make_trainer(tiny, algorithm, tmp_path, beta=0.0)
    t.model.train()
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1])  # second group all equal -> advantage 0 everywhere
    t._calculate_rewards = lambda *a, **k: rewards.unsqueeze(1)
    inputs = [t.train_dataset[i] for i in (0, 1) for _ in range(G)]
    out = t._generate_and_score_completions(inputs)
    expected = torch.tensor(first_group + [0.0] * 4)
    torch.testing.assert_close(out["advantages"], expected, rtol=1e-5, atol=1e-6)


def _loss_and_grad(t, ratios, mask, advantages):
    """TRL's loss with the policy log-probs replaced by log(ratios) (old log-probs are 0)."""
    logps = torch.log(torch.tensor(ratios)).requires_grad_(True)
    t._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    t.model.train()
    t.current_gradient_accumulation_steps = 1
    mask = torch.tensor(mask)
    inputs = {"prompt_ids": torch.zeros(2, 1, dtype=torch.long), "prompt_mask": torch.ones(2, 1, dtype=torch.long),
              "completion_ids": torch.zeros_like(mask), "completion_mask": mask,
              "advantages": torch.tensor(advantages), "old_per_token_logps": torch.zeros(mask.shape),
              "ref_per_token_logps": logps.detach().clone(), "num_items_in_batch": mask.sum()}
    loss = t._compute_loss(t.model, inputs)
    loss.backward()
    return loss.item(), logps.grad


# Sequence a: one token, ratio 1.5, advantage +1.  Sequence b: three tokens, ratios 0.5 / 1.0 / 1.1, advantage -1.
RATIOS = [[1.5, 1.0, 1.0], [0.5, 1.0, 1.1]]
MASK = [[1, 0, 0], [1, 1, 1]]
ADV = [1.0, -1.0]
B_TOKENS = [0.8, 1.0, 1.1]  # -min(r*A, clip(r)*A) with A=-1: 0.5 is clipped up to 1 - 0.2


@pytest.mark.parametrize(
    "algorithm, expected",
    [
        # grpo: per-sequence mean, then mean over sequences; 1.5 clipped to 1 + 0.2
        ("grpo", (-1.2 + sum(B_TOKENS) / 3) / 2),
        # dapo: clip-higher 1 + 0.28, token-level: every token of the batch weighs the same (4 tokens)
        ("dapo", (-1.28 + sum(B_TOKENS)) / 4),
        # dr_grpo: sum over tokens / (batch * L_max), a constant normaliser
        ("dr_grpo", (-1.2 + sum(B_TOKENS)) / (2 * L_MAX)),
    ],
)
def test_clipped_loss_and_normalisation(tiny, tmp_path, algorithm, expected):
    t = make_trainer(tiny, algorithm, tmp_path)
    loss, grad = _loss_and_grad(t, RATIOS, MASK, ADV)
    assert loss == pytest.approx(expected, rel=1e-5)
    # clipped tokens carry no gradient: a's ratio is above 1 + eps_high, b's first is below 1 - eps
    assert grad[0, 0] == 0 and grad[1, 0] == 0
    assert grad[1, 1] != 0 and grad[1, 2] != 0
    assert torch.all(grad[0, 1:] == 0)  # padding


def test_ratio_between_the_two_clip_limits_is_clipped_by_grpo_only(tiny, tmp_path):
    # ratio 1.25 with A=+1: grpo clips at 1.2, dapo (clip-higher 1.28) lets it through with gradient
    ratios, mask, adv = [[1.25], [1.0]], [[1], [1]], [1.0, 0.0]
    grpo_loss, grpo_grad = _loss_and_grad(make_trainer(tiny, "grpo", tmp_path), ratios, mask, adv)
    dapo_loss, dapo_grad = _loss_and_grad(make_trainer(tiny, "dapo", tmp_path), ratios, mask, adv)
    assert grpo_loss == pytest.approx(-1.2 / 2) and grpo_grad[0, 0] == 0
    assert dapo_loss == pytest.approx(-1.25 / 2) and dapo_grad[0, 0] == pytest.approx(-1.25 / 2)
    assert not math.isnan(dapo_loss)


def test_stages_rl_run_stays_the_function_after_the_implementation_is_imported():
    # stages.rl.run once shared its name with a submodule, which rebound it to the module on import.
    import stages.rl
    import stages.rl.training  # noqa: F401

    assert callable(stages.rl.run) and stages.rl.run.__module__ == "stages.rl"


def test_rollouts_never_sample_vision_tokens(tmp_path):
    # a sampled <|image_pad|> breaks Qwen-VL's rope index in the policy forward (seen at 112 px in the demo)
    from stages.model import resolve_model_path
    from stages.rl.config import RLConfig
    from stages.model import vision_token_ids
    from stages.rl.training import grpo_args
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(resolve_model_path("tiny:qwen2_5_vl"))
    ids = vision_token_ids(processor)
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") in ids and len(ids) >= 4
    args = grpo_args(RLConfig().resolved(), tmp_path, suppress_token_ids=ids)
    assert args.generation_kwargs == {"suppress_tokens": ids}


def test_rollout_processor_types_line_up_with_the_image_tokens_of_short_prompts():
    # TRL builds the forward's mm_token_type_ids with the processor's padding side while it left-pads the prompt
    # ids; a right-padding processor put the image types of shorter prompts at the wrong positions (the demo's
    # RL crashed in Qwen-VL's rope index at 112 px)
    from PIL import Image
    from transformers import AutoProcessor

    from stages.model import resolve_model_path
    from stages.rl.training import pad_prompts_left

    processor = AutoProcessor.from_pretrained(resolve_model_path("tiny:qwen2_5_vl"))
    chat = lambda q: processor.apply_chat_template(  # noqa: E731
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True)
    texts = [chat("Short?"), chat("A much longer question about the nuclei, the glands and the stroma? " * 3)]
    images = [[Image.new("RGB", (112, 112), "red")], [Image.new("RGB", (112, 112), "blue")]]
    pad_prompts_left(processor)
    out = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert out["attention_mask"][0, 0] == 0  # the short prompt is padded on the left, like TRL's prompt ids
    image = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert torch.equal(out["mm_token_type_ids"] == 1, out["input_ids"] == image)
