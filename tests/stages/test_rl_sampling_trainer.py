"""Dynamic sampling inside PathoGRPOTrainer on one process (tiny Qwen2.5-VL, text prompts): the batch TRL gets.

The rewards hand out a scripted list per generation round, so which groups are informative is known. Multi-rank
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


def scripted(rounds):
    script = iter(rounds)

    def scripted_reward(completions, **kwargs):
        return list(next(script))

    return scripted_reward


def make_trainer(tiny, tmp_path, rounds, *, names=("x:y",), metric=None):
    """A DAPO trainer whose reward returns `rounds[k]` (one list of G * BATCH rewards) on its k-th call; with
    several `names`, `rounds` holds one such script per reward and `metric` picks the gating one."""
    model, processor = tiny
    scripts = [rounds] if len(names) == 1 else rounds
    cfg = RLConfig(algorithm="dapo", init="unused", num_generations=G, batch_size=BATCH, max_completion_length=4,
                   max_steps=1, lr=1e-3, seed=SEED, rewards=list(names), reward_weights=[1.0] * len(names),
                   max_num_gen_batches=len(scripts[0]), mask_truncated_completions=False,
                   dynamic_sampling_metric=metric).resolved()
    data = Dataset.from_list([{"id": f"q{i}", "prompt": [{"role": "user", "content": f"question {i}"}]}
                              for i in range(10)])
    trainer = PathoGRPOTrainer(model=model, reward_funcs=[scripted(r) for r in scripts],
                               args=grpo_args(cfg, tmp_path / "out"), train_dataset=data, processing_class=processor,
                               dynamic_sampling=True, max_num_gen_batches=len(scripts[0]),
                               gating_reward=cfg.gating_reward_index())
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


ALL_RIGHT, ONE_RIGHT = [1.0] * G, [1.0, 0.0, 0.0, 0.0]
# Round 0: group 0 all right but with different format / grounding scores, group 1 one right; round 1: all wrong.
ACCURACY = [ALL_RIGHT + ONE_RIGHT, DULL + DULL]
FORMAT = [[1.0, 0.0, 1.0, 1.0] + [1.0] * G, [0.0, 1.0, 1.0, 1.0] * 2]
GROUNDING = [[0.31, 0.42, 0.27, 0.55] + [0.4] * G, [0.2, 0.3, 0.4, 0.5] * 2]
REWARDS = ("format", "accuracy", "grounding")


def ds_metrics(trainer):
    return {k: v[-1] for k, v in trainer._metrics["train"].items() if k.startswith("dynamic_sampling/")}


def test_an_all_right_group_with_different_format_and_grounding_scores_is_dropped(tiny, tmp_path):
    t = make_trainer(tiny, tmp_path, [FORMAT, ACCURACY, GROUNDING], names=REWARDS)  # default metric: accuracy
    assert t.gating_reward == 1
    out = t._generate_and_score_completions(first_batch(t))
    got = t.last_sampling
    # only group 1 (one right answer) is informative; round 1 (all wrong) adds nothing; group 0 pads, inert
    assert got.stats.gen_batches == 2 and got.kept == [(None, [4, 5, 6, 7])] and got.kept_rounds == [0]
    assert got.padding[0][1] == [0, 1, 2, 3] and got.padding_rounds == [0]
    assert (out["advantages"][:G] != 0).all() and (out["advantages"][G:] == 0).all()
    assert t.last_rounds[0][1].tolist() == ACCURACY[0]  # the gating values are the accuracy rewards
    metrics = ds_metrics(t)
    assert metrics["dynamic_sampling/zero_std_fraction"] == 3 / 4  # on accuracy: 3 of the 4 groups are flat


def test_total_metric_keeps_the_old_behaviour(tiny, tmp_path):
    t = make_trainer(tiny, tmp_path, [FORMAT, ACCURACY, GROUNDING], names=REWARDS, metric="total")
    assert t.gating_reward is None
    t._generate_and_score_completions(first_batch(t))
    got = t.last_sampling
    # on the weighted total both groups of round 0 differ: one round, every row kept
    assert got.stats.gen_batches == 1 and got.kept == [(None, list(range(G * BATCH)))] and got.padding == []
    assert ds_metrics(t)["dynamic_sampling/zero_std_fraction"] == 0.0


def test_metric_resolution_and_refusal():
    assert RLConfig(algorithm="dapo").resolved().dynamic_sampling_metric == "accuracy"
    patho = RLConfig(algorithm="dapo", rewards=["format", "length_aware_accuracy"]).resolved()
    assert patho.dynamic_sampling_metric == "length_aware_accuracy" and patho.gating_reward_index() == 1
    custom = RLConfig(algorithm="dapo", rewards=["pkg.mod:fn"]).resolved()
    assert custom.dynamic_sampling_metric == "total" and custom.gating_reward_index() is None
    named = RLConfig(algorithm="dapo", rewards=["format", "pkg.mod:fn"], dynamic_sampling_metric="pkg.mod:fn")
    assert named.gating_reward_index() == 1
    with pytest.raises(ValueError, match=r"dynamic_sampling_metric must be total or one of the rewards "
                                         r"\['format', 'accuracy', 'soft_overlong'\], got 'grounding'"):
        RLConfig(algorithm="dapo", dynamic_sampling_metric="grounding")


def test_refills_come_from_the_current_curriculum_phase(tiny, tmp_path):
    from stages.rl.curriculum import CurriculumPlan

    t = make_trainer(tiny, tmp_path, [DULL + DULL, INFORMATIVE + INFORMATIVE])
    t.curriculum = CurriculumPlan.build([4, 6], [1, 1], None, seed=0)
    t.state.global_step = 1  # phase 2: dataset rows 4..9
    t._generate_and_score_completions(first_batch(t))
    assert set(t.last_rounds[1][0]) <= {f"q{i}" for i in range(4, 10)}
    expected = refill_prompt_indices(6, G * BATCH, G, 0, 1, SEED, (1, 0, 1))
    assert t.last_rounds[1][0] == [f"q{4 + i}" for i in expected]


def test_subset_scaling_multiplies_each_rows_advantage(tiny, tmp_path):
    from stages.rl.algos import SubsetScaling

    def advantages(scaling):
        model, processor = tiny
        cfg = RLConfig(algorithm="grpo", init="unused", num_generations=G, batch_size=BATCH, max_completion_length=4,
                       max_steps=1, lr=1e-3, seed=SEED, rewards=["x:y"], reward_weights=[1.0]).resolved()
        rows = [{"id": f"q{i}", "subset": ["ct", "ct", "mri"][i % 3],
                 "prompt": [{"role": "user", "content": f"question {i}"}]} for i in range(6)]
        t = PathoGRPOTrainer(model=model, reward_funcs=[scripted([[0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]])],
                             args=grpo_args(cfg, tmp_path / "out"), train_dataset=Dataset.from_list(rows),
                             processing_class=processor, subset_scaling=scaling)
        t.model.train()
        batch = [rows[i] for i in (1, 2) for _ in range(G)]  # one ct group, one mri group
        return t._generate_and_score_completions(batch)["advantages"]

    plain = advantages(None)
    scaled = advantages(SubsetScaling(["ct", "mri"], {"mri": 3.0}, balance=True))
    assert (plain != 0).all()
    torch.testing.assert_close(scaled, plain * torch.tensor([1.0] * G + [3.0] * G))


def test_a_skipped_step_inside_train_leaves_weights_and_optimizer_state_alone(tiny, tmp_path):
    """One process, through `train()`: step 0 trains, step 1 finds nothing informative. After step 1 every
    parameter, Adam moment and Adam step count equals its value after step 0 (the slow tier checks the same
    under DDP, ZeRO-2, ZeRO-3 and FSDP2: tests/reliability/test_skipped_step.py)."""
    from transformers import TrainerCallback

    t = make_trainer(tiny, tmp_path, [INFORMATIVE * BATCH, DULL + DULL, DULL + DULL])
    t.args.max_steps, t.max_num_gen_batches = 2, 2
    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            opt = t.optimizer.optimizer
            snapshots.append({"params": {n: p.detach().clone() for n, p in t.model.named_parameters()},
                              "state": {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}})

    t.add_callback(Snapshot())
    t.train()
    trained, skipped = snapshots
    assert t.last_sampling.stats.skipped
    assert trained["state"] and all(s["step"].item() == 1 for s in trained["state"].values())
    for name, value in trained["params"].items():
        assert torch.equal(skipped["params"][name], value), name
    assert skipped["state"].keys() == trained["state"].keys()
    for key, state in trained["state"].items():
        for k, v in state.items():
            assert torch.equal(skipped["state"][key][k], v), k


def test_vllm_sleep_mode_gets_the_weights_once_per_step_not_once_per_round(tiny, tmp_path, monkeypatch):
    """Colocated vLLM with sleep mode (the 7B config): TRL's own VLLMGeneration.generate runs against a stand-in
    engine. TRL sleeps vLLM at level 2 after every generate and re-sends the weights at the next one; over one
    step's three dynamic-sampling rounds the weights are sent once and vLLM sleeps once, after the last round."""
    import types

    from trl.generation import vllm_generation

    from stages import adapters

    installed = adapters.installed_version  # the stand-in engine is the vLLM release stages/adapters.py lists
    monkeypatch.setattr(adapters, "installed_version", lambda lib: "0.22.0" if lib == "vllm" else installed(lib))
    calls = []
    t = make_trainer(tiny, tmp_path, [DULL + DULL, DULL + DULL, INFORMATIVE * BATCH, INFORMATIVE * BATCH])

    def fake_vllm_generate(prompts, sampling_params, use_tqdm):
        calls.append("generate")
        token = types.SimpleNamespace(logprob=-1.0, rank=1)
        return [types.SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                      outputs=[types.SimpleNamespace(token_ids=[5, 6, 7], logprobs=[{5: token}] * 3)])
                for p in prompts]

    llm = types.SimpleNamespace(generate=fake_vllm_generate, sleep=lambda level: calls.append(f"sleep{level}"),
                                wake_up=lambda tags: calls.append(f"wake:{','.join(tags)}"))
    monkeypatch.setattr(vllm_generation, "SamplingParams", lambda **kw: kw, raising=False)
    engine = object.__new__(vllm_generation.VLLMGeneration)
    engine.__dict__.update(
        mode="colocate", enable_sleep_mode=True, tensor_parallel_size=1, structured_outputs_regex=None,
        accelerator=types.SimpleNamespace(), model=torch.nn.Linear(1, 1), temperature=1.0, top_p=1.0, top_k=0,
        min_p=0.0, repetition_penalty=1.0, max_completion_length=4, logprobs=0, generation_kwargs={}, llm=llm,
        _llm_weights_sleeping=True)

    def sync_weights():  # TRL's sync wakes the weights up, marks them awake and sends every parameter
        calls.append("sync")
        engine._llm_weights_sleeping = False

    engine.sync_weights = sync_weights
    t.use_vllm, t._last_loaded_step, t.vllm_generation = True, -1, engine
    t._generate_and_score_completions(first_batch(t))
    assert t.last_sampling.stats.gen_batches == 3
    assert calls == ["sync", "wake:kv_cache", "generate", "wake:kv_cache", "generate", "wake:kv_cache", "generate",
                     "sleep2"]
    assert engine._llm_weights_sleeping and llm.sleep.__name__ == "<lambda>"  # vLLM's own sleep is back
    calls.clear()
    t.state.global_step = 1  # the next optimizer step: new weights, sent once
    t._generate_and_score_completions(first_batch(t))
    assert calls == ["sync", "wake:kv_cache", "generate", "sleep2"]
