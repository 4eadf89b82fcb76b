"""Several ranks: a 2-rank CPU (gloo) evaluation under torchrun or accelerate launch gives exactly the
predictions of the 1-rank one, and only rank 0 writes and prints. The fast tier checks the split/gather
arithmetic (tests/evaluation/test_sampling.py::test_shard_and_interleave_are_inverse)."""
import json

import pytest

from tests.reliability.children import run_child

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_ranks_give_the_one_rank_predictions(tiny_model_dir, make_images, tmp_path, launcher):
    imgs = make_images(tmp_path / "data", [(56, 56), (84, 64), (64, 84), (56, 70), (70, 70)])
    questions = ["Is there necrosis?", "Are glands present here in this section?", "Is this benign?",
                 "Is mitosis seen?", "Is the margin involved by tumour cells?"]  # 5: the ranks get 3 and 2
    data = tmp_path / "data" / "closed.jsonl"
    data.write_text("\n".join(json.dumps({"image": p, "question": q, "answer": a})
                              for p, q, a in zip(imgs, questions, "yes no no yes no".split())))
    common = ["--model", str(tiny_model_dir()), "--suite", "pathvqa", "--data", str(data), "--batch-size", "2",
              "--max-new-tokens", "8", "--no-progress"]
    run_child("evaluation.run", [*common, "--out", str(tmp_path / "one")], ranks=1)
    proc = run_child("evaluation.run", [*common, "--out", str(tmp_path / "two")], ranks=2, launcher=launcher)

    def rows(folder):
        return [json.loads(x) for x in (tmp_path / folder / "predictions.jsonl").read_text().splitlines()]

    keys = ("id", "prediction", "n_tokens", "correct", "score")
    assert [{k: r[k] for k in keys} for r in rows("two")] == [{k: r[k] for k in keys} for r in rows("one")]
    assert len({r["prediction"] for r in rows("one")}) > 1  # different answers: the order could not hide
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["settings"]["world_size"] == 2
    assert proc.stdout.count("written to") == 1  # only rank 0 reports (and writes)
