"""RL with the slide viewer as a real 2-rank gloo DDP job on CPU (``torchrun --standalone --nproc_per_node 2``):
``recipes.rl tools.env=slide_view`` on a tiny Qwen3-VL whose rollouts follow tests/slide_tools.py's script (in
each generation batch even rows zoom then answer right, odd rows answer wrong at once; probe
``PATHOR1_PROBE_TOOL_SCRIPT``). Checked: the job ends; each rank ran its own viewers and logged its own views
(``views-rank<R>.jsonl``, each view with its question, centre and µm/px); DDP kept the weights equal on both
ranks (``PATHOR1_PROBE_SAMPLES`` digests) and they moved; the registry entry is published once.
"""
import json

import pytest

from stages.registry import Registry, logs_dir
from tests.reliability.children import run_child
from tests.slide_tools import slide_qa_file

pytestmark = pytest.mark.slow


def test_tool_rollouts_on_two_ranks(tmp_path):
    from stages.model import build_tiny

    tiny = build_tiny("qwen3_vl", tmp_path / "tiny")
    (tmp_path / "data").mkdir()
    data = slide_qa_file(tmp_path / "data", n=4)
    args = [f"data={data}", f"init={tiny}", "run=tools", "max_steps=1", "num_generations=2", "batch_size=1",
            "max_completion_length=200", "lr=1e-2", "log_completions=0", "algorithm=grpo", "beta=0.0",
            "tools.env=slide_view", "tools.budget=2", "tools.view_size=56", "tools.overview_size=112",
            "rewards=[accuracy,view_cost]", "share_prefix=true"]
    run_child("recipes.rl", args, ranks=2, timeout=900, tool_script=1, samples=tmp_path / "probe")
    for rank in (0, 1):
        views = [json.loads(line) for line in (logs_dir("rl", "tools") / f"views-rank{rank}.jsonl").read_text().splitlines()]
        assert [(v["event"], v["x"], v["y"], v["mpp"]) for v in views] == [("view", 300, 200, 1.0)]
        assert views[0]["question"] in {"s0", "s1", "s2", "s3"}
    digests = {line.split()[-1] for rank in (0, 1)
               for line in (tmp_path / "probe" / f"rank-{rank}.txt").read_text().splitlines() if " weights " in line}
    assert len(digests) == 1  # both ranks end with the same weights
    entry = Registry().latest("rl", "tools")
    assert entry is not None and json.loads((entry / "manifest.json").read_text())["step"] == 1
    from safetensors.torch import load_file

    trained = load_file(str(next(entry.glob("*.safetensors"))))
    initial = load_file(str(next(tiny.glob("*.safetensors"))))
    assert any(not (trained[k] == initial[k]).all() for k in initial if k in trained)  # the step moved the policy
