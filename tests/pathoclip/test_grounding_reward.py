"""The PathoCLIP grounding reward (stages.rl.grounding) under the tiny PathoCLIP trained in conftest.py.

Acceptance: on the held-out demo images, reasoning that names the image's true class earns more than reasoning
naming another class (AUC >= 0.75); a short RL run with [format, accuracy, grounding] runs through TRL and logs it.
"""
import json
import math
import shutil

import pytest

from corpora.demo import ARCHITECTURE, CLASSES, DISPLAY, NUCLEI
from stages.rl.grounding import GroundingConfig, GroundingReward, group_normalise


def reasoning(tissue: str) -> str:
    """Reasoning in the demo SFT's own words for a class: its findings, then the diagnosis."""
    return f"<think>{NUCLEI[tissue].capitalize()}, {ARCHITECTURE[tissue]}: {DISPLAY[tissue]}.</think><answer>A</answer>"


@pytest.mark.parametrize("values, keys, expected", [
    ([1.0, 3.0, 5.0, 5.0], ["a", "a", "b", "b"], [-1.0, 1.0, 0.0, 0.0]),  # z per group; a constant group -> 0
    ([None, 2.0, 4.0], ["a", "a", "a"], [None, -1.0, 1.0]),             # no reasoning stays unscored
])
def test_group_normalise(values, keys, expected):
    assert group_normalise(values, keys) == expected


def test_grounding_ranks_the_true_class_above_the_others(trained, small_demo):
    _, final, _ = trained
    reward = GroundingReward(GroundingConfig(model=str(final)))
    held_out = [json.loads(line) for line in small_demo.retrieval.read_text().splitlines()]
    completions, images, ids = [], [], []
    for r in held_out:  # one group per image: one reasoning per class
        for tissue in CLASSES:
            completions.append(reasoning(tissue))
            images.append([str(small_demo.root / r["images"][0])])
            ids.append(r["id"])
    rewards = reward(completions, images=images, id=ids)
    wins = []
    for g, r in enumerate(held_out):
        by_class = dict(zip(CLASSES, rewards[g * 4:(g + 1) * 4]))
        true = by_class[r["label"]]
        wins += [1.0 if true > v else 0.5 if true == v else 0.0 for c, v in by_class.items() if c != r["label"]]
    auc = sum(wins) / len(wins)
    print(f"grounding AUC true class vs other class, {len(held_out)} held-out images: {auc:.3f}")
    assert auc >= 0.75
    assert reward(["<answer>A</answer>", reasoning("lymphoma")], images=images[:2], id=["x", "x"])[0] is None


def test_missing_or_wrong_checkpoint_is_a_clear_error(small_demo):
    with pytest.raises(ValueError, match="not a PathoCLIP"):
        GroundingReward(GroundingConfig(model=str(small_demo.root))).load()


def test_rl_run_with_grounding_logs_the_reward(trained, small_demo, tmp_path):
    from stages.model import build_tiny
    from stages.registry import Registry
    from stages.rl import RLConfig, run
    from stages.rl.trainer import TRAINER_STATE_DIR

    _, clip, _ = trained
    base = build_tiny("qwen2_5_vl", tmp_path / "tiny")
    with Registry().writer("sft", "demo", 1, parent="tiny:qwen2_5_vl") as w:
        for f in base.iterdir():
            shutil.copy(f, w.path / f.name)
        w.extra["template"] = "cot"
    # The random tiny policy never writes a <think> span, so the run grounds the whole completion (span=completion).
    final = run(RLConfig(algorithm="grpo", data=str(small_demo.root), num_generations=4, batch_size=1, max_steps=2,
                         max_completion_length=8, run="ground", rewards=["format", "accuracy", "grounding"],
                         grounding=GroundingConfig(model=str(clip), span="completion")))
    history = json.loads((final / TRAINER_STATE_DIR / "trainer_state.json").read_text())["log_history"]
    logged = [h["rewards/grounding_reward/mean"] for h in history if "rewards/grounding_reward/mean" in h]
    assert len(logged) == 2 and all(math.isfinite(v) for v in logged)
    assert json.loads((final / "manifest.json").read_text())["config"]["grounding"]["model"] == str(clip)
