"""Multi-turn RL with the slide viewer through TRL 1.16's public seam (stages.rl.tools).

The GRPO tests script WHAT the tiny policy writes (a logits processor handed to the real ``generate``: each turn's
tokens are forced), so the tool call is known; everything after that is TRL's and ours, unmocked: TRL parses the
call with the response template, runs ``SlideViewer.zoom`` on a real pyramidal TIFF (tifffile, OpenSlide's
generic-tiff layout, as tests/corpora/test_slides.py), puts the view into the next turn as an image the model
encodes, masks the tool tokens out of the loss, scores with the reward callables, and steps the optimizer.
"""
import json

import pytest
import torch

from corpora.grading import completion_text
from corpora.slides.viewer import SlideViewer
from stages.config import ConfigError, load_config
from stages.rl.config import RLConfig, grpo_settings
from stages.rl.rewards import AccuracyReward, FormatReward, build_rewards
from stages.rl.tools import ToolsConfig, ViewCountReward, check_tool_template
from tests.slide_tools import AFTER, CALL, scripted, slide_qa_file

G = 2


# ----------------------------------------------------------------------------------------------- config / rewards
def test_tools_fields_load_from_the_command_line_and_set_trls_turn_limit():
    cfg = load_config(RLConfig, ["tools.env=slide_view", "tools.budget=2", "rewards=[format,accuracy,view_cost]"])
    assert cfg.tools == ToolsConfig(env="slide_view", budget=2)
    resolved = cfg.resolved()
    assert resolved.reward_weights == [0.1, 0.9, 0.05]  # view_cost's weight is the cost per view
    assert grpo_settings(resolved)["max_tool_calling_iterations"] == ("tools.max_turns", 3)  # budget + 1
    assert grpo_settings(RLConfig())["max_tool_calling_iterations"] == ("tools.max_turns", None)  # no tools: TRL's


@pytest.mark.parametrize("argv, message", [
    (["tools.env=zoomer"], "tools.env must be one of '', 'slide_view', got 'zoomer'"),
    (["tools.env=slide_view", "tools.budget=-1"], "expected budget >= 0"),
    (["rewards=[accuracy,view_cost]"], "rewards include view_cost but no tool environment is set"),
    (["tools.env=slide_view", "trl.max_tool_calling_iterations=9"], "tools.max_turns"),
])
def test_bad_tools_settings_are_refused_with_the_field(argv, message):
    with pytest.raises((ConfigError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(RLConfig, argv)


class _Env:
    def __init__(self, n):
        self.views = [object()] * n


def test_view_cost_counts_each_rollouts_views():
    reward = ViewCountReward()
    assert reward.__name__ == "view_cost"
    assert reward([[], [], []], environments=[_Env(0), _Env(1), _Env(3)]) == [0.0, -1.0, -3.0]
    assert reward([[], []]) == [None, None]  # no environment: not scored (TRL ignores None)
    assert [type(r).__name__ for r in build_rewards(["accuracy", "view_cost"])] == ["AccuracyReward",
                                                                                    "ViewCountReward"]


def test_rewards_see_the_think_span_trls_tool_parser_moves_aside():
    # TRL's response parser puts <think>...</think> into reasoning_content; format and accuracy must still see it
    turns = [{"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]},
             {"role": "tool", "name": "zoom", "content": [{"type": "text", "text": "view 1/4"}]},
             {"role": "assistant", "reasoning_content": "atypical nuclei", "content": "<answer>A</answer>"}]
    assert completion_text(turns) == "<think>atypical nuclei</think><answer>A</answer>"
    assert FormatReward()([turns]) == [1.0]
    assert AccuracyReward()([turns], answer=["A"], kind=["mcq"], options=[["tumour", "normal"]]) == [1.0]


# ----------------------------------------------------------------------------------------------- the GRPO step
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from stages.model import ModelConfig, build_tiny, load_model

    folder = build_tiny("qwen3_vl", tmp_path_factory.mktemp("tiny"))
    return folder, load_model(ModelConfig(name_or_path=str(folder)))


def test_a_template_without_tools_is_refused_in_one_line(tmp_path):
    from transformers import AutoProcessor

    from stages.model import build_tiny

    processor = AutoProcessor.from_pretrained(build_tiny("qwen2_5_vl", tmp_path / "q25"))
    with pytest.raises(ValueError, match=r"^init=x: expected a chat template that renders tool calls .* Qwen3-VL"):
        check_tool_template(processor, "init=x")


def test_qwen3_vl_tool_calls_parse(tiny):
    from trl.chat_template_utils import add_response_schema, parse_response

    _, (_, processor) = tiny
    check_tool_template(processor)
    tok = add_response_schema(processor).tokenizer  # what GRPOTrainer does when tools are on
    # as TRL calls it: the completion's ids after the prompt, which ends with the assistant header
    parsed = parse_response(tok, tok.encode(CALL + "<|im_end|>"), prefix=tok.encode("<|im_start|>assistant\n"))
    assert parsed["tool_calls"] == [{"type": "function",
                                     "function": {"name": "zoom", "arguments": {"x": 300, "y": 200, "mpp": 1.0}}}]


@pytest.fixture()
def slide_data(tmp_path):
    return slide_qa_file(tmp_path)


def make_trainer(tiny, slide_data, tmp_path, *, share_prefix, batch_size=1, dynamic_sampling=False):
    from stages.model import ModelConfig, load_model
    from stages.rl.trainer import PathoGRPOTrainer
    from stages.rl.training import grpo_args, pad_prompts_left, prompt_dataset, tool_environment, tool_questions

    folder, _ = tiny
    model, processor = load_model(ModelConfig(name_or_path=str(folder)))  # a fresh policy per test
    pad_prompts_left(processor)
    check_tool_template(processor)
    cfg = RLConfig(algorithm="grpo", init="unused", data=str(slide_data), num_generations=G, batch_size=batch_size,
                   max_completion_length=256, max_steps=1, lr=1e-2, seed=0, beta=0.0,
                   rewards=["accuracy", "view_cost"], tools=ToolsConfig(env="slide_view", budget=2, view_size=56,
                                                                        overview_size=112)).resolved()
    dataset = prompt_dataset(tool_questions(cfg, slide_data), cfg.template)
    trainer = PathoGRPOTrainer(model=model, reward_funcs=build_rewards(cfg.resolved_rewards()),
                               args=grpo_args(cfg, tmp_path / "logs"), train_dataset=dataset,
                               processing_class=processor, environment_factory=tool_environment(cfg, tmp_path / "logs"),
                               share_prefix=share_prefix, dynamic_sampling=dynamic_sampling)
    scripted(trainer.model, processor.tokenizer)  # over the shared prefill's generate (it calls the class's)
    return trainer, dataset


@pytest.mark.slow
def test_a_rollout_that_zooms_gets_the_view_as_an_image_and_one_grpo_step_trains_on_it(tiny, slide_data, tmp_path):
    trainer, dataset = make_trainer(tiny, slide_data, tmp_path, share_prefix=True)
    trainer.model.train()
    out = trainer._generate_and_score_completions([dataset[0]] * G)
    # row 0 zoomed once (logged with its coordinates and µm/px), row 1 answered from the overview
    assert [[(v.x, v.y, v.mpp) for v in env.views] for env in trainer.environments] == [[(300, 200, 1.0)], []]
    log = [json.loads(line) for line in (tmp_path / "logs" / "views-rank0.jsonl").read_text().splitlines()]
    assert [(e["event"], e["x"], e["y"], e["mpp"], e["question"]) for e in log] == [("view", 300, 200, 1.0, "s0")]
    # the forward sees 2 overviews + 1 view; the view's image tokens sit in row 0's completion
    processor = trainer.processing_class
    view = SlideViewer(trainer.environments[0].record["slide"], size=56).zoom(300, 200, 1.0).image
    view_grid = processor.image_processor(images=[view], return_tensors="pt")["image_grid_thw"][0]
    overview_grid = out["image_grid_thw"][0]
    assert out["image_grid_thw"].tolist() == [overview_grid.tolist(), view_grid.tolist(), overview_grid.tolist()]
    assert out["num_images"] == [2, 1]
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    completion = out["completion_ids"][0][out["completion_mask"][0].bool()]
    assert int((completion == image_pad).sum()) == int(view_grid.prod()) // 4  # merge 2x2
    assert int((out["completion_ids"][1] == image_pad).sum()) == 0
    # the tool result (its image tokens included) is masked out of the loss; the model's own turns are not
    tool_mask = out["tool_mask"][0][out["completion_mask"][0].bool()]
    assert not tool_mask[completion == image_pad].any() and tool_mask.sum() < tool_mask.numel()
    text = trainer.processing_class.tokenizer.decode(completion)
    assert CALL in text and "view 1/2: centre (300, 200) at 1 µm/px, 56 µm wide" in text and AFTER in text
    rewards = {name: list(v) for name, v in trainer._logs["rewards"].items()}
    assert rewards["accuracy_reward"][-G:] == [1.0, 0.0] and rewards["view_cost"][-G:] == [-1.0, 0.0]
    assert out["advantages"][0] > 0 > out["advantages"][1]
    # one optimizer step through Trainer.train (a fresh rollout, the same script): every trainable parameter moves
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
    assert len(changed) == len(before)
    assert trainer.state.log_history[0]["tools/call_frequency"] == 0.5
    # the rollouts' first turn (G copies of one prompt) was prefilled once; the log-prob forward, whose
    # completions hold a view, shared the prompt up to the first tool result
    from stages.rl.prefill_share import prefill_stats

    assert prefill_stats(trainer.model).shared_forwards >= 2  # one per rollout round
    assert trainer.prefix_stats.shared_forwards == trainer.prefix_stats.forwards >= 1


def test_shared_prefix_with_a_view_in_the_completion_matches_trls_forward(tiny, tmp_path):
    """A real tool batch (two questions, G=2: rows 0 and 2 hold a view inside their completion): the shared
    forward -- each prompt and its overview run once, each view encoded with its row's completion -- gives TRL's
    log-probs, entropies, loss and gradients, and the four rows form one group (views are not prompt images)."""
    from stages.rl import prefix_share
    from tests.stages.test_rl_prefix_share import assert_grads_match, forward_args, logps, loss_and_grads

    data = slide_qa_file(tmp_path, n=2)  # the same slide and question twice: one prompt
    trainer, dataset = make_trainer(tiny, data, tmp_path, share_prefix=True, batch_size=2)
    trainer.model.eval()
    batch = trainer._generate_and_score_completions([dataset[i] for i in (0, 1) for _ in range(G)])
    assert batch["num_images"] == [2, 1, 2, 1]
    ids, mask, keep, extra = forward_args(batch)
    assert int((extra["mm_token_type_ids"][:, -keep:] == 1).sum()) > 0  # image tokens inside the completions
    assert prefix_share.unshareable_reason(trainer.model, keep, extra) is None
    counts = prefix_share.prompt_image_counts(trainer.model, ids, ids.size(1) - keep)
    assert counts == [1, 1, 1, 1]
    assert prefix_share.plan_groups(ids[:, :-keep], mask[:, :-keep], extra["pixel_values"], extra["image_grid_thw"],
                                    extra["num_images"], counts) == [[0, 1, 2, 3]]
    before = trainer.prefix_stats.shared_forwards
    shared, shared_entropy = logps(trainer, trainer.model, batch, True)
    assert trainer.prefix_stats.shared_forwards == before + 1
    unshared, unshared_entropy = logps(trainer, trainer.model, batch, False)
    torch.testing.assert_close(shared, unshared, rtol=0, atol=1e-5)
    torch.testing.assert_close(shared_entropy, unshared_entropy, rtol=0, atol=1e-5)
    batch["old_per_token_logps"] = unshared
    batch["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, grads = loss_and_grads(trainer, batch, True)
    assert trainer.prefix_stats.shared_forwards == before + 2
    expected_loss, expected = loss_and_grads(trainer, batch, False)
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=1e-6)
    assert_grads_match(grads, expected)
    # the view's pixels reach the gradient: the vision tower's parameters have one
    assert any(n.startswith("model.visual") for n in grads)


@pytest.mark.slow
def test_dynamic_sampling_keeps_tool_rollouts_with_their_views_and_tool_masks(tiny, tmp_path):
    data = slide_qa_file(tmp_path, n=2)
    trainer, dataset = make_trainer(tiny, data, tmp_path, share_prefix=True, batch_size=2, dynamic_sampling=True)
    trainer.model.train()
    # rows [s0, s0, s1, s1]: in each group one rollout zooms (right), one answers at once (wrong) -> both informative
    out = trainer._generate_and_score_completions([dataset[i] for i in (0, 1) for _ in range(G)])
    assert trainer.last_sampling.stats.gen_batches == 1 and trainer.last_sampling.kept == [(None, [0, 1, 2, 3])]
    assert out["num_images"] == [2, 1, 2, 1] and out["tool_mask"].shape == out["completion_mask"].shape
    assert [int(t.sum() < m.sum()) for t, m in zip(out["tool_mask"], out["completion_mask"])] == [1, 0, 1, 0]
    assert (out["advantages"][[0, 2]] > 0).all() and (out["advantages"][[1, 3]] < 0).all()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()  # the same through Trainer.train: the merged batch of tool rollouts trains
    assert trainer.state.log_history[0]["dynamic_sampling/groups_kept"] == 2
    assert all(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if p.requires_grad)


@pytest.mark.slow
def test_the_vllm_path_runs_every_tool_turn_through_vllm_with_the_view(tiny, slide_data, tmp_path, monkeypatch):
    """use_vllm=true with tools: TRL's tool loop generates every turn with its own VLLMGeneration.generate
    (colocate), here against a stand-in for vLLM's LLM that writes the script's tokens. The turn after a zoom reaches
    vLLM as the row's ids -- one run of image tokens per image, as long as the processor makes them -- with the
    overview and the view as its images (what vLLM matches its placeholders against); the batch then holds the view
    as without vLLM. What the stand-in cannot show is vLLM's own reading of those ids (GPU only)."""
    import types

    from trl.generation import vllm_generation

    from tests.slide_tools import DIRECT

    trainer, dataset = make_trainer(tiny, slide_data, tmp_path, share_prefix=True)
    processor = trainer.processing_class
    tok = processor.tokenizer
    end = [tok.convert_tokens_to_ids("<|im_end|>")]
    call, direct, after = (tok.encode(t) + end for t in (CALL, DIRECT, AFTER))
    requests = []

    def fake_vllm_generate(prompts, sampling_params, use_tqdm):
        requests.append(prompts)
        token = types.SimpleNamespace(logprob=-1.0, rank=1)
        scripted_ids = [(call if i % 2 == 0 else direct) if len(requests) == 1 else after for i in range(len(prompts))]
        return [types.SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[types.SimpleNamespace(
            token_ids=ids, logprobs=[{t: token} for t in ids])]) for p, ids in zip(prompts, scripted_ids)]

    monkeypatch.setattr(vllm_generation, "SamplingParams", lambda **kw: kw, raising=False)
    engine = object.__new__(vllm_generation.VLLMGeneration)
    llm = types.SimpleNamespace(generate=fake_vllm_generate, llm_engine=types.SimpleNamespace(
        model_config=types.SimpleNamespace(max_model_len=4096)))
    engine.__dict__.update(
        mode="colocate", enable_sleep_mode=False, tensor_parallel_size=1, structured_outputs_regex=None,
        accelerator=types.SimpleNamespace(), model=torch.nn.Linear(1, 1), temperature=1.0, top_p=1.0, top_k=0,
        min_p=0.0, repetition_penalty=1.0, max_completion_length=256, logprobs=0, generation_kwargs={}, llm=llm)
    engine.sync_weights = lambda: None
    trainer.use_vllm, trainer.vllm_mode, trainer._last_loaded_step, trainer.vllm_generation = True, "colocate", -1, engine
    trainer.model.train()
    out = trainer._generate_and_score_completions([dataset[0]] * G)

    assert len(requests) == 2 and len(requests[0]) == G and len(requests[1]) == 1  # only the zooming row goes on
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")

    def runs(ids):  # lengths of the runs of image tokens
        lengths, n = [], 0
        for t in ids + [-1]:
            if t == image_pad:
                n += 1
            elif n:
                lengths, n = lengths + [n], 0
        return lengths

    overview = requests[0][0]["multi_modal_data"]["image"]
    images = requests[1][0]["multi_modal_data"]["image"]
    assert len(images) == 2 and images[0] is overview and images[1].size == (56, 56)  # overview, then the view
    grids = processor.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
    assert runs(requests[1][0]["prompt_token_ids"]) == [int(g.prod()) // 4 for g in grids]
    assert requests[1][0]["prompt_token_ids"][-len(tok.encode("<|im_start|>assistant\n")):] == \
        tok.encode("<|im_start|>assistant\n")  # the tool result, then the next assistant turn
    assert out["num_images"] == [2, 1] and CALL in tok.decode(out["completion_ids"][0])
    rewards = {name: list(v) for name, v in trainer._logs["rewards"].items()}
    assert rewards["accuracy_reward"][-G:] == [1.0, 0.0] and rewards["view_cost"][-G:] == [-1.0, 0.0]
