"""A DAPO step with no informative group on any rank changes nothing, under DDP, ZeRO-2, ZeRO-3 and FSDP2.

A 2-rank gloo job per engine (the shipped CPU accelerate configs) runs two DAPO steps with
``tests.reliability.launch:refill_forcing_reward``: step index 0 trains on its refill round, every round of
step index 1 scores all completions alike, so both ranks skip it. The ``PATHOR1_PROBE_OPTIMIZER`` lines of each
rank (at the start and after each optimizer step) must show: step 0 moved this rank's weights and optimizer state
(so the check can see a change); the skipped step left this rank's weights, Adam moments, the tensors the
optimizer updates (ZeRO's fp32 master partitions) and the Adam step counts bit-identical; and the learning-rate
schedule and DeepSpeed's step counter still advanced with the Trainer's global step, as under DDP.
Before the fix (the trainer handed the engine a graph-less zero loss) the ZeRO-2 and ZeRO-3 jobs died at the skipped
step: DeepSpeed's engine.backward asserts "loss must be a scalar tensor" (this test, run against that code).
"""
import json

import pytest

from tests.reliability.engines import ENGINES, launch

pytestmark = pytest.mark.slow


def rl_dapo_args(demo, tiny) -> list[str]:
    return [f"data={demo.root}", f"init={tiny}", "algorithm=dapo", "max_steps=2", "save_every=0",
            "num_generations=4", "batch_size=1", "max_completion_length=6", "lr=1e-3", "log_completions=0",
            "max_num_gen_batches=2", "mask_truncated_completions=false", "scheduler=linear", "warmup_ratio=0",
            "rewards=['tests.reliability.launch:refill_forcing_reward']", "reward_weights=[1.0]", "run=skip"]


def read_lines(folder) -> dict[int, list[dict]]:
    """{rank: [line at train begin, after step 1, after step 2]}."""
    return {rank: [json.loads(x) for x in (folder / f"optimizer-{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_skipped_step_leaves_weights_and_optimizer_state_alone(engine, demo, tiny, tmp_path):
    launch(engine, "recipes.rl", rl_dapo_args(demo, tiny), optimizer=tmp_path / "probe")
    lines = read_lines(tmp_path / "probe")
    lrs = []
    for rank, (begin, trained, skipped) in lines.items():
        assert [begin["step"], trained["step"], skipped["step"]] == [0, 1, 2] and begin["world"] == 2
        assert trained["weights"] != begin["weights"] and trained["optimizer"] != begin["optimizer"]
        assert trained["adam_steps"] == [1.0], (rank, trained)
        assert skipped["weights"] == trained["weights"], f"{engine} rank {rank}: the skipped step moved weights"
        assert skipped["optimizer"] == trained["optimizer"], f"{engine} rank {rank}: it moved optimizer state"
        assert skipped["adam_steps"] == [1.0], f"{engine} rank {rank}: Adam counted the skipped step"
        if engine.startswith("deepspeed"):
            assert [trained["engine_steps"], skipped["engine_steps"]] == [1, 2]  # global_stepN tags stay aligned
        lrs.append([trained["lr"], skipped["lr"]])
    assert lrs[0] == lrs[1] and lrs[0][1] < lrs[0][0]  # the linear schedule advanced through the skipped step
