"""Tool-calling traces as SFT data (corpora.traces; the navigation demo's traces.jsonl): validated up front like any
SFT record (a bad trace is one line naming file:line), rendered with their tools section and every image in the
turn it appears in, trained on the assistant's tokens only (the tool call and the answer; never the tool result or
the view), and published in the registry by recipes.sft as any SFT checkpoint."""
import json

import pytest

from corpora.readers import load_sft
from corpora.slides.navdemo import build_nav_demo
from corpora.validate import main as validate_main
from corpora.validate import validate
from recipes import sft as sft_recipe
from stages.engine import ChatCollator
from stages.model import resolve_model_path
from stages.registry import Registry, fingerprint_files

END = "<|im_end|>\n"


@pytest.fixture(scope="module")
def nav(tmp_path_factory):
    return build_nav_demo(tmp_path_factory.mktemp("nav"), n_train=4, n_eval=1, seed=5, view_size=32,
                          overview_size=96)


@pytest.fixture
def processor():  # function scope: the tiny model is built in the test's own PATHOR1_HOME
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(resolve_model_path("tiny:qwen3_vl"))


def _traces(nav):
    return [json.loads(line) for line in (nav / "traces.jsonl").read_text().splitlines()]


def test_labels_are_the_tool_call_and_the_answer_and_views_sit_in_their_turns(nav, processor):
    rows = load_sft(nav / "traces.jsonl")
    assert rows[0]["messages"][2]["role"] == "tool" and rows[0]["trace"]  # plain text + the conversation
    batch = ChatCollator(processor)([rows[i] for i in range(2)])
    assert batch["image_grid_thw"].shape[0] == 4  # overview + view of each trace
    for ids, labels, trace in zip(batch["input_ids"], batch["labels"], _traces(nav)):
        call = trace["messages"][1]["tool_calls"][0]["function"]
        trained = processor.tokenizer.decode(ids[labels != -100])
        assert trained == (f'<tool_call>\n{{"name": "zoom", "arguments": {json.dumps(call["arguments"])}}}\n'
                           f'</tool_call>{END}{trace["messages"][3]["content"]}{END}')
        text = processor.tokenizer.decode(ids)
        assert "# Tools" in text and '"name": "tissue_regions"' in text  # the trace's tools, rendered
        # the view is inside the tool response, which never trains
        assert text.index("<tool_response>") < text.rindex("<|image_pad|>") < text.index("</tool_response>")


def test_bad_traces_are_refused_with_file_and_line(nav, capsys):
    good = _traces(nav)[0]
    wrong_tool = json.loads(json.dumps(good))
    wrong_tool["messages"][1]["tool_calls"][0]["function"]["name"] = "pan"
    one_image = {**good, "images": good["images"][:1]}
    no_result = {**good, "messages": [good["messages"][0], good["messages"][1], good["messages"][3]]}
    no_tools = {k: v for k, v in good.items() if k != "tools"}
    bad = nav / "bad-traces.jsonl"  # beside the views it names
    lines = [good, wrong_tool, one_image, no_result, no_tools]
    bad.write_text("".join(json.dumps(t) + "\n" for t in lines))
    report = validate(bad, "sft")
    assert [(p.line, p.code) for p in report.problems] == [
        (2, "bad-tool-call"), (3, "image-count"), (4, "bad-tool-result"), (5, "bad-tools")]
    assert "'pan', which is not among the tools (zoom, tissue_regions)" in report.problems[0].message
    assert validate_main([str(bad), "--kind", "sft"]) == 1
    assert f"{bad}:3: image-count: 2 image block(s) in the messages but 1 image(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # the SFT stage: one line, exit 2, before any model loads
        sft_recipe.main([f"data={bad}", "init=tiny:qwen3_vl", "max_steps=1", "run=bad-traces"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith(f"python -m recipes.sft: error: {bad}:2: bad-tool-call: ")
    assert "\n" not in err and Registry().latest("sft", "bad-traces") is None


def test_recipes_sft_trains_on_traces_and_publishes_the_checkpoint(nav, capsys):
    assert sft_recipe.main([f"data={nav / 'traces.jsonl'}", "init=tiny:qwen3_vl", "max_steps=6", "batch_size=4",
                            "lr=3e-3", "warmup_ratio=0", "logging_steps=1", "train=all", "run=traces",
                            "device=cpu"]) == 0
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    entry = Registry().latest("sft", "traces")
    assert str(entry) == folder
    manifest = json.loads((entry / "manifest.json").read_text())
    losses = [loss for _, loss in manifest["metrics"]["train_loss_curve"]]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
    assert manifest["stage"] == "sft" and manifest["config"]["data"] == str(nav / "traces.jsonl")
    assert manifest["data_fingerprint"] == fingerprint_files([nav / "traces.jsonl"])
