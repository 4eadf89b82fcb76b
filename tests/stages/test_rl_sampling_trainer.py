"""Dynamic sampling inside PathoGRPOTrainer on one process (tiny Qwen2.5-VL, text prompts): the batch TRL gets.

The reward hands out a scripted list per generation round, so which groups are informative is known. Multi-rank
behaviour is in tests/reliability/test_dynamic_sampling_ddp.py (slow) and, for the pure loop, test_rl_sampling.py.
"""
import pytest
import torch
from datasets import Dataset

from stages.model import ModelConfig, build_tiny, load_model
from stages.rl.config import RLConfig
from stages.rl.sampling import refill_prompt_indices
from stages.rl.training import grpo_args
from stages.rl.trainer import PathoGRPOTrainer

G, BATCH, SEED = 4, 2, 7
INFORMATIVE, DULL = [1.0, 0.0, 0.0, 0.0], [0.0] * G


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny"))
    return load_model(ModelConfig(name_or_path=str(folder)))


def make_trainer(tiny, tmp_path, rounds):
    """A DAPO trainer whose reward returns `rounds[k]` (one list of G * BATCH rewards) on its k-th call."""
    model, processor = tiny
    cfg = RLConfig(algorithm="dapo", init="unused", num_generations=G, batch=BATCH, max_completion_length=4,
                   steps=1, lr=1e-3, seed=SEED, rewards=["x:y"], reward_weights=[1.0],
                   max_num_gen_batches=len(rounds), mask_truncated_completions=False).resolved()
    data = Dataset.from_list([{"id": f"q{i}", "prompt": [{"role": "user", "content": f"question {i}"}]}
                              for i in range(10)])
    script = iter(rounds)

    def scripted_reward(completions, **kwargs):
        return list(next(script))

    trainer = PathoGRPOTrainer(model=model, reward_funcs=[scripted_reward], args=grpo_args(cfg, tmp_path / "out"),
                               train_dataset=data, processing_class=processor, dynamic_sampling=True,
                               max_num_gen_batches=len(rounds))
    trainer.model.train()
    return trainer


def first_batch(trainer):
    return [trainer.train_dataset[i] for i in (0, 1) for _ in range(G)]


def test_refills_keep_informative_groups_and_pad_the_shortfall_with_inert_rows(tiny, tmp_path):
    t = make_trainer(tiny, tmp_path, [INFORMATIVE + DULL, DULL + DULL])
    out = t._generate_and_score_completions(first_batch(t))
    got = t.last_sampling
    assert got.stats.gen_batches == 2 and got.kept_rounds == [0] and got.padding_rounds == [0]
    assert got.kept[0][1] == [0, 1, 2, 3] and got.padding[0][1] == [4, 5, 6, 7]
    assert out["completion_ids"].size(0) == G * BATCH  # the planned batch size
    assert (out["advantages"][:G] != 0).all() and (out["advantages"][G:] == 0).all()
    assert out["completion_mask"][:G].sum() > 0 and out["completion_mask"][G:].sum() == 0  # padding is inert
    assert out["num_items_in_batch"].item() == out["completion_mask"].sum().item()
    # the refill round drew its prompts from the step-keyed permutation (step 0, first generation, round 1)
    expected = refill_prompt_indices(10, G * BATCH, G, 0, 1, SEED, (0, 0, 1))
    assert t.last_rounds[1][0] == [f"q{i}" for i in expected]
    assert t.last_rounds[0][0] == ["q0"] * G + ["q1"] * G
    metrics = {k: v[-1] for k, v in t._metrics["train"].items() if k.startswith("dynamic_sampling/")}
    assert metrics["dynamic_sampling/groups_kept"] == 1 and metrics["dynamic_sampling/groups_padded"] == 1


def test_a_step_with_no_informative_group_moves_nothing(tiny, tmp_path):
    t = make_trainer(tiny, tmp_path, [DULL + DULL, DULL + DULL])
    out = t._generate_and_score_completions(first_batch(t))
    assert t.last_sampling.stats.skipped and out["completion_ids"].size(0) == 0
    loss = t.compute_loss(t.model, out)
    loss.backward()
    assert loss.item() == 0 and all(p.grad is None for p in t.model.parameters())  # the optimizer skips all
