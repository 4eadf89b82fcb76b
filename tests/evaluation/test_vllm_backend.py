"""``--backend vllm`` and the transformers backend agree on greedy answers (GPU machines with vLLM only)."""
import json

import pytest

from evaluation.run import evaluate


@pytest.mark.gpu
def test_vllm_and_hf_agree_on_greedy_answers(tiny_model_dir, make_images, tmp_path):
    pytest.importorskip("vllm")
    imgs = make_images(tmp_path / "data", [(56, 56), (84, 64), (64, 84), (112, 112)])
    data = tmp_path / "data" / "closed.jsonl"
    data.write_text("\n".join(json.dumps({"image": p, "question": q, "answer": "yes"}) for p, q in zip(
        imgs, ["Is there necrosis?", "Are glands present?", "Is this benign?", "Is mitosis seen?"])))
    runs = {b: evaluate(tiny_model_dir(), "pathvqa", data, max_new_tokens=8, dtype="float32", backend=b,
                        progress=False, out=tmp_path / b) for b in ("hf", "vllm")}
    preds = {b: [json.loads(x)["prediction"] for x in (tmp_path / b / "predictions.jsonl").read_text().splitlines()]
             for b in runs}
    assert preds["vllm"] == preds["hf"]
    assert runs["vllm"]["settings"]["backend"] == "vllm" and runs["vllm"]["settings"]["libraries"]["vllm"]


def test_vllm_backend_refuses_cleanly_without_vllm(tiny_model_dir, tmp_path, make_images):
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    from evaluation.run import main

    imgs = make_images(tmp_path / "d", [(56, 56)])
    data = tmp_path / "d" / "c.jsonl"
    data.write_text(json.dumps({"image": imgs[0], "question": "Is it?", "answer": "yes"}))
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["--model", str(tiny_model_dir()), "--suite", "pathvqa", "--data", str(data), "--backend", "vllm"])
    assert rc == 2 and "--backend vllm needs vLLM" in err.getvalue()
