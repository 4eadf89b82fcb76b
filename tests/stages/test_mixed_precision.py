"""bf16 weights where no engine keeps fp32 master weights (a single process, DDP, FSDP): the trainable
parameters train in fp32 under bf16 autocast, so small AdamW updates do not round away; frozen towers stay bf16."""
import json

import torch
from safetensors.torch import load_file

from stages.model import build_tiny
from stages.registry import Registry
from stages.rl import RLConfig, run as run_rl


def token_parity_reward(completions, completion_ids, **columns):
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def test_rl_on_bf16_weights_trains_fp32_copies_under_autocast(tmp_path):
    from corpora.demo import build_demo

    demo = build_demo(tmp_path / "demo", n_train=8, n_eval=4, image_size=56)
    tiny = build_tiny("qwen2_5_vl", tmp_path / "tiny")
    # lr 1e-6: in bf16 (8 bits of mantissa) every such update of a weight near 1e-2 would round to zero
    final = run_rl(RLConfig(init=str(tiny), data=str(demo.root), algorithm="grpo", max_steps=1, num_generations=4,
                            batch_size=1, max_completion_length=8, lr=1e-6, warmup_ratio=0.0, run="bf16",
                            model={"dtype": "bfloat16"}, rewards=["tests.stages.test_mixed_precision:token_parity_reward"],
                            reward_weights=[1.0], log_completions=0))
    manifest = Registry().manifest(final)
    assert manifest["extra"]["training"] == {"engine": "single", "world_size": 1, "mixed_precision": "bf16"}
    before, after = load_file(tiny / "model.safetensors"), load_file(final / "model.safetensors")
    llm = [k for k in after if ".layers." in k and "visual" not in k and k.endswith("proj.weight")]
    assert llm and {after[k].dtype for k in llm} == {torch.float32}  # the trained copies, saved as they are
    moved = [k for k in llm if not torch.equal(before[k].to(torch.bfloat16).float(), after[k])]
    assert moved, "no LLM weight moved at lr 1e-6: the update rounded away"
    vision = [k for k in after if "visual.blocks" in k]
    assert vision and {after[k].dtype for k in vision} == {torch.bfloat16}  # frozen: untouched, bf16
    assert json.loads((final / "trainer_state" / "trainer_state.json").read_text())["global_step"] == 1
