"""corpora.slides.navdemo: slides (pyramidal TIFFs OpenSlide reads, written with tifffile in its generic-tiff layout)
whose answer shows only at the scan's resolution in one focus, and navigation traces that replay through the
viewer. The trace layout is TRL / transformers' tool-calling conversation (assistant ``tool_calls`` with
``{"type": "function", "function": {"name", "arguments"}}``, then a ``tool`` message named after the function),
as ``trl.chat_template_utils.supports_tool_calling`` renders it.
"""
import json

import numpy as np
import pytest
from PIL import Image

from corpora.slides import open_slide
from corpora.slides.navdemo import FOCUS, MPP, OVERVIEW, build_nav_demo, slide_array
from corpora.slides.viewer import SlideViewer, slide_questions


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_nav_demo(tmp_path_factory.mktemp("navdemo"), n_train=4, n_eval=2, seed=3, view_size=96)


def band_direction(image) -> str:
    """'A' when rows are uniform and columns vary (horizontal bands), 'B' for the transpose, '-' when flat."""
    a = np.asarray(image).astype(float).mean(axis=2)
    along_rows, along_cols = a.std(axis=1).mean(), a.std(axis=0).mean()
    if max(along_rows, along_cols) < 5:
        return "-"
    return "A" if along_cols > along_rows else "B"


def test_the_answer_shows_at_the_scan_resolution_and_nowhere_coarser(tmp_path):
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)  # the same layout, only the bands differ
    (a, focus), (b, focus_b) = slide_array("A", rng_a), slide_array("B", rng_b)
    assert focus == focus_b
    sa = write_pyramidal_tiff_pair(tmp_path, a, b)
    with open_slide(sa[0]) as A, open_slide(sa[1]) as B:
        for size in (OVERVIEW, 224):  # overviews up to OVERVIEW px: identical
            assert np.array_equal(np.asarray(A.thumbnail(size)), np.asarray(B.thumbnail(size)))
        for mpp in (1.0, 4.0):  # every coarser view: identical too
            x, y = focus[0] - 48 * mpp / MPP, focus[1] - 48 * mpp / MPP
            assert np.array_equal(np.asarray(A.read_region_mpp(x, y, mpp, 96)), np.asarray(B.read_region_mpp(x, y, mpp, 96)))
    views = {k: SlideViewer(p, size=FOCUS // 2).zoom(*focus, MPP).image for k, p in zip("AB", sa)}
    assert band_direction(views["A"]) == "A" and band_direction(views["B"]) == "B"


def write_pyramidal_tiff_pair(folder, a, b):
    from corpora.slides.synthetic import write_pyramidal_tiff

    return [write_pyramidal_tiff(folder / f"{k}.tiff", img, mpp=MPP, n_levels=3, compression="zlib")
            for k, img in (("a", a), ("b", b))]


def test_corpus_files_and_records(demo):
    rl = [json.loads(line) for line in (demo / "rl.jsonl").read_text().splitlines()]
    ev = [json.loads(line) for line in (demo / "eval.jsonl").read_text().splitlines()]
    assert len(rl) == 4 and len(ev) == 2 and {r["answer"] for r in rl + ev} <= {"A", "B"}
    assert not {r["slide"] for r in rl} & {r["slide"] for r in ev}  # no slide in both splits
    rows = slide_questions(demo / "eval.jsonl")  # the viewer's loader reads them: RL and evaluation data
    assert [r["answer"] for r in rows] == [r["answer"] for r in ev] and rows[0]["options"] == ev[0]["options"]
    for r in rl + ev:  # the focus is darker than the tissue around it on the overview: a model can find it
        with open_slide(demo / r["slide"]) as s:
            assert s.info.mpp == pytest.approx(MPP) and s.info.levels == 3
            thumb = np.asarray(s.thumbnail(384)).astype(float)
            scale = s.info.width / thumb.shape[1]
            fx, fy = int(r["focus"]["x"] / scale), int(r["focus"]["y"] / scale)
            below = fy + int(FOCUS / scale / 2) + 6  # just below the focus, inside the tissue piece
            assert thumb[fy, fx].mean() < thumb[below, fx].mean() - 20


def test_traces_replay_through_the_viewer_and_answer_right(demo):
    rl = {json.loads(line)["id"]: json.loads(line) for line in (demo / "rl.jsonl").read_text().splitlines()}
    traces = [json.loads(line) for line in (demo / "traces.jsonl").read_text().splitlines()]
    assert [t["id"] for t in traces] == list(rl)
    for t in traces:
        record, (user, call, tool, answer) = rl[t["id"]], t["messages"]
        assert [m["role"] for m in t["messages"]] == ["user", "assistant", "tool", "assistant"]
        fn = call["tool_calls"][0]["function"]
        assert fn == {"name": "zoom", "arguments": {**record["focus"], "mpp": MPP}} and tool["name"] == "zoom"
        assert answer["content"].endswith(f"<answer>{record['answer']}</answer>") and "<think>" in answer["content"]
        assert "You may view up to" in user["content"][1]["text"]  # the viewer's observation, as in RL
        # replay: the saved view is exactly what the viewer returns for the call; it shows the answer
        view = SlideViewer(demo / record["slide"], size=96).zoom(**fn["arguments"])
        saved = Image.open(demo / t["images"][1])
        assert np.array_equal(np.asarray(saved), np.asarray(view.image)) and tool["content"][1]["text"] == view.text
        assert band_direction(saved) == record["answer"]
        assert t["views"][0]["x"] == record["focus"]["x"] and len(t["images"]) == 2


def test_sft_file_pairs_each_trace_with_the_question_without_tools(demo):
    from corpora.validate import validate

    assert validate(demo / "sft.jsonl", "sft").ok
    rows = [json.loads(line) for line in (demo / "sft.jsonl").read_text().splitlines()]
    traces = [json.loads(line) for line in (demo / "traces.jsonl").read_text().splitlines()]
    # each trace, the same question without tools, then one copy of the trace's two looking exercises
    assert rows[0::4] == traces and [r["id"] for r in rows[1::4]] == [f"{t['id']}-thumbnail" for t in traces]
    assert [r["id"] for r in rows[2::4]] == [f"{t['id']}-where0" for t in traces]
    assert [r["id"] for r in rows[3::4]] == [f"{t['id']}-look0" for t in traces]
    for trace, plain in zip(traces, rows[1::4]):  # the same overview and prompt, no tools, no observation
        assert plain["images"] == trace["images"][:1] and "tools" not in plain
        assert trace["messages"][0]["content"][1]["text"].startswith(plain["messages"][0]["content"][1]["text"])
        assert plain["messages"][1]["content"].endswith(trace["messages"][3]["content"][-len("<answer>A</answer>"):])


def test_looking_exercises_ask_for_the_two_decisions_of_a_trace(demo):
    from corpora.slides.navdemo import looking_records
    from corpora.validate import validate

    trace = json.loads((demo / "traces.jsonl").read_text().splitlines()[0])
    record = json.loads((demo / "rl.jsonl").read_text().splitlines()[0])
    where, look, *again = looking_records(record, trace, 2)
    assert len(again) == 2 and where["images"] == trace["images"][:1] and look["images"] == trace["images"]
    user, call, tool, answer = trace["messages"]
    assert where["messages"][0]["content"] == user["content"]  # the trace's prompt and observation, no tools
    text = where["messages"][1]["content"]  # the call as the chat template writes a tool call
    assert text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>")
    assert json.loads(text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>")) == call["tool_calls"][0]["function"]
    blocks = look["messages"][0]["content"]  # overview + prompt, then the view with the viewer's caption
    assert [b["type"] for b in blocks] == ["image", "text", "image", "text"] and blocks[3] == tool["content"][1]
    assert look["messages"][1]["content"] == answer["content"]  # the trace's reasoning and answer
    assert validate(demo / "look.jsonl", "sft").ok
    ids = [json.loads(line)["id"] for line in (demo / "look.jsonl").read_text().splitlines()]
    assert ids[:5] == ["rl-000-thumbnail", "rl-000-where0", "rl-000-look0", "rl-000-where1", "rl-000-look1"]
    assert len(ids) == 4 * (1 + 2 * 4)  # build_nav_demo's default: 4 copies of each exercise per slide


def test_the_same_seed_writes_the_same_corpus(demo, tmp_path):
    again = build_nav_demo(tmp_path / "again", n_train=4, n_eval=2, seed=3, view_size=96)
    for name in ("rl.jsonl", "eval.jsonl", "traces.jsonl", "sft.jsonl", "look.jsonl"):
        assert (again / name).read_text() == (demo / name).read_text()
    assert (again / "slides" / "rl-000.tiff").read_bytes() == (demo / "slides" / "rl-000.tiff").read_bytes()


def test_cli_writes_the_corpus_and_refuses_bad_sizes(tmp_path, capsys):
    from corpora.slides.navdemo import main

    assert main([str(tmp_path / "c"), "--n-train", "1", "--n-eval", "1", "--view-size", "32"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["traces"] == 1
    assert len((tmp_path / "c" / "traces.jsonl").read_text().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "d"), "--n-train", "0"])
    assert e.value.code == 2 and "expected --n-train, --n-eval, --budget >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_trls_sft_trainer_learns_from_the_traces_with_the_view_in_the_tool_turn(demo, tmp_path):
    """TRL 1.16's SFTTrainer on the traces (tiny Qwen3-VL): the batch holds each trace's overview and view, the
    rendered conversation has the tool section, the call and the view inside the tool response, and the loss falls."""
    from trl import SFTConfig, SFTTrainer

    from corpora.slides.navdemo import sft_dataset
    from stages.model import ModelConfig, build_tiny, load_model

    model, processor = load_model(ModelConfig(name_or_path=str(build_tiny("qwen3_vl", tmp_path / "tiny"))))
    data = sft_dataset(demo / "traces.jsonl", overview_size=112)
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=2, learning_rate=3e-3,
                     report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, bf16=False,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["image_grid_thw"].shape[0] == 4  # two traces x (overview + view)
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert '"name": "zoom"' in text and "<tool_call>" in text and "view 1/4: centre" in text
    assert text.index("<tool_response>") < text.rindex("<|image_pad|>") < text.index("</tool_response>")
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]
