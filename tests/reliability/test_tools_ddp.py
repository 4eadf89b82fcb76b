"""RL with the slide viewer as a real 2-rank gloo DDP job on CPU (``torchrun --standalone --nproc_per_node 2``):
``recipes.rl tools.env=slide_view`` with DAPO's dynamic sampling on the navigation demo corpus
(``corpora.slides.navdemo``), a tiny Qwen3-VL whose rollouts follow tests/slide_tools.py's script (in each
generation batch even rows zoom at 1 µm/px then answer A, odd rows answer B at once; probe
``PATHOR1_PROBE_TOOL_SCRIPT``), so each group holds one right and one wrong answer and is informative.
Checked: the job ends; each rank ran its own viewers and logged its own views (``views-rank<R>.jsonl``, each
view with a demo question, its centre and µm/px); dynamic sampling ran the same rounds on both ranks and kept
informative groups of tool rollouts (``PATHOR1_PROBE_DYNAMIC``); DDP kept the weights equal on both ranks
(``PATHOR1_PROBE_SAMPLES`` digests) and they moved; the registry entry is published once, at step 1.

No default-tier subset: two ranks importing torch + transformers + TRL and building the model take about a
minute on this machine, not seconds; the single-process tool + dynamic-sampling path is in
tests/stages/test_rl_tools.py.
"""
import json

import pytest

from stages.registry import Registry, logs_dir
from tests.reliability.children import run_child

pytestmark = pytest.mark.slow
G = 2


def test_tool_rollouts_with_dynamic_sampling_on_two_ranks(tmp_path, monkeypatch):
    from corpora.slides.navdemo import build_nav_demo
    from stages.model import build_tiny

    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "cpu")  # see test_dynamic_sampling_ddp: resume under gloo
    tiny = build_tiny("qwen3_vl", tmp_path / "tiny")
    demo = build_nav_demo(tmp_path / "navdemo", n_train=4, n_eval=1, view_size=56)
    ids = {json.loads(line)["id"] for line in (demo / "rl.jsonl").read_text().splitlines()}
    args = [f"data={demo / 'rl.jsonl'}", f"init={tiny}", "run=tools", "max_steps=1", f"num_generations={G}",
            "batch_size=1", "max_completion_length=200", "lr=1e-2", "log_completions=0", "algorithm=dapo",
            "max_num_gen_batches=2", "mask_truncated_completions=false", "tools.env=slide_view", "tools.budget=2",
            "tools.view_size=56", "tools.overview_size=96", "rewards=[accuracy,view_cost]", "share_prefix=true"]
    run_child("recipes.rl", args, ranks=2, timeout=900, tool_script=1, samples=tmp_path / "probe",
              dynamic=tmp_path / "probe")
    for rank in (0, 1):
        lines = (logs_dir("rl", "tools") / f"views-rank{rank}.jsonl").read_text().splitlines()
        views = [json.loads(line) for line in lines]
        # one zooming rollout per group; each view a valid record of a demo question
        assert views and {(v["event"], v["x"], v["y"], v["mpp"]) for v in views} == {("view", 300, 200, 1.0)}
        assert {v["question"] for v in views} <= ids and all(v["slide"].endswith(".tiff") for v in views)
    dynamic = {}
    for rank in (0, 1):
        (line,) = [json.loads(s) for s in (tmp_path / "probe" / f"dynamic-{rank}.jsonl").read_text().splitlines()]
        dynamic[rank] = line
        assert line["world"] == 2 and not line["skipped"] and line["rows"] == G
        rewards = line["rounds"][line["kept"][0]["round"]]["rewards"]
        assert max(rewards) > min(rewards)  # the kept group is informative: the zoom answered right
    assert len(dynamic[0]["rounds"]) == len(dynamic[1]["rounds"])  # in step, or a collective would hang
    digests = {line.split()[-1] for rank in (0, 1)
               for line in (tmp_path / "probe" / f"rank-{rank}.txt").read_text().splitlines() if " weights " in line}
    assert len(digests) == 1  # both ranks end with the same weights
    assert digests != {dynamic[0]["digest"]}  # ... and the step moved them
    entry = Registry().latest("rl", "tools")
    assert entry is not None and json.loads((entry / "manifest.json").read_text())["step"] == 1
    from safetensors.torch import load_file

    trained = load_file(str(next(entry.glob("*.safetensors"))))
    initial = load_file(str(next(tiny.glob("*.safetensors"))))
    assert any(not (trained[k] == initial[k]).all() for k in initial if k in trained)  # the published policy moved
