"""Domain-aware advantage scaling (stages.rl.algos.subset_scales): the vectorised function against a plain loop,
its balance property, and the refusal of a subset name the data does not have."""
import pytest
import torch

from stages.rl.algos import SubsetScaling, subset_scales
from stages.rl.config import RLConfig


def loop_scales(ids: list[int], weights: list[float], balance: bool) -> list[float]:
    """The definition, row by row: weight of the row's subset x N / (subsets present x rows of that subset)."""
    out = []
    for i in ids:
        factor = len(ids) / (len(set(ids)) * ids.count(i)) if balance else 1.0
        out.append(weights[i] * factor)
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("balance", [True, False])
def test_vectorised_equals_the_loop(seed, balance):
    g = torch.Generator().manual_seed(seed)
    n_subsets = int(torch.randint(1, 5, (1,), generator=g))
    ids = torch.randint(0, n_subsets, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g)
    weights = torch.rand(n_subsets + 1, generator=g) * 2  # one subset never present
    got = subset_scales(ids, weights, balance)
    want = torch.tensor(loop_scales(ids.tolist(), weights.tolist(), balance))
    torch.testing.assert_close(got, want)


def test_balance_gives_each_present_subset_the_same_total_weight():
    ids = torch.tensor([0] * 12 + [1] * 3 + [2] * 1)  # a common, a rare and a very rare modality
    scales = subset_scales(ids, torch.ones(4), balance=True)
    totals = [float(scales[ids == s].sum()) for s in range(3)]
    assert totals == pytest.approx([16 / 3] * 3) and float(scales.mean()) == pytest.approx(1.0)
    assert subset_scales(ids, torch.ones(4), balance=False).tolist() == [1.0] * 16


def test_subset_names_and_weights():
    scaling = SubsetScaling(["ct", "mri", "xray"], {"mri": 2.0}, balance=False)
    assert scaling.scales(scaling.ids(["ct", "mri", "mri"])).tolist() == [1.0, 2.0, 2.0]
    with pytest.raises(ValueError, match=r"subset_weights names subsets \['pet'\] that the data does not have; "
                                         r"expected some of \['ct', 'mri'\]"):
        SubsetScaling(["ct", "mri"], {"pet": 2.0}, balance=True)
    with pytest.raises(ValueError, match="subset_weights must be >= 0"):
        RLConfig(subset_weights={"ct": -1.0})


@pytest.mark.slow
def test_rl_stage_scales_by_the_datas_subsets(tmp_path):
    import json

    from corpora.demo import build_demo
    from stages.model import build_tiny
    from stages.rl import run
    from stages.rl.trainer import TRAINER_STATE_DIR

    demo = build_demo(tmp_path / "demo", n_train=8, n_eval=4, image_size=56)
    tiny = build_tiny("qwen2_5_vl", tmp_path / "tiny")
    common = dict(algorithm="grpo", beta=0.0, init=str(tiny), data=str(demo.rl), num_generations=2, batch_size=3,
                  max_completion_length=4, max_steps=1, log_completions=0, subset_scaling="balance")
    with pytest.raises(ValueError, match="subset_weights names subsets"):  # before any model loads
        run(RLConfig(**common, subset_weights={"mri": 2.0}))
    final = run(RLConfig(**common, subset_weights={"ihc": 2.0},
                         rewards=["tests.stages.test_rl_integration:token_parity_reward"], reward_weights=[1.0]))
    history = json.loads((final / TRAINER_STATE_DIR / "trainer_state.json").read_text())["log_history"]
    assert any(h.get("subset_scaling/max_scale", 0) >= 1.0 for h in history)
