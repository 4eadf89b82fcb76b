"""Validation: every problem class, from a broken file, with its exact `file:line: code: message` line."""
import json

import numpy as np
import pytest
from PIL import Image

from corpora.validate import DataError, check_image, main, validate


@pytest.fixture
def root(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    return tmp_path


def _lines(root, rows, name="data.jsonl"):
    path = root / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _problems(report):
    return [str(p) for p in report.problems]


PAIR = {"id": "a", "image": "ok.png", "caption": "pink"}
QA = {"id": "q", "image": "ok.png", "question": "Which?", "options": ["gland", "stroma"], "answer": "A"}

# (kind, records, expected problem line with {f} = the data file); one case per problem class
CASES = [
    ("pairs", [PAIR, "{broken"], "{f}:2: malformed-line: invalid JSON: Expecting property name enclosed in double quotes"),
    ("pairs", ["[1, 2]"], "{f}:1: malformed-line: expected a JSON object, got list"),
    ("pairs", [{"id": "a", "caption": "x"}], "{f}:1: missing-field: missing field 'images' (one of: images, image, "
                                             "image_path, image_paths, img_path, filepath, file_name, path)"),
    ("pairs", [{**PAIR, "caption": "  "}], "{f}:1: empty-caption: caption is empty"),
    ("pairs", [{**PAIR, "caption": 3}], "{f}:1: bad-field: 'caption' must be a string, got int"),
    ("pairs", [{**PAIR, "image": ""}], "{f}:1: bad-image-path: image path must be a non-empty string, got ''"),
    ("pairs", [PAIR, PAIR], "{f}:2: duplicate-id: id 'a' already used at {f}:1"),
    ("pairs", [{**PAIR, "image": "../ok.png"}], "{f}:1: path-escapes-root: image path '../ok.png' resolves outside "
                                                "the dataset root {root}"),
    ("pairs", [{**PAIR, "image": "gone.png"}], "{f}:1: missing-image: image not found: {root}/gone.png"),
    ("qa", [{**QA, "answer": "C"}], "{f}:1: answer-not-in-options: answer 'C' is not one of the options "
                                    "(A='gland', B='stroma')"),
    ("qa", [{**QA, "options": [], "answer": "maybe", "kind": "yesno"}],
     "{f}:1: answer-not-in-options: yes/no answer must be 'yes' or 'no', got 'maybe'"),
    ("qa", [{**QA, "answer": None}], "{f}:1: missing-field: missing field 'answer' (or a solution with "
                                     "<answer>…</answer>)"),
    ("qa", [{**QA, "question": ""}], "{f}:1: empty-question: question is empty"),
    ("qa", [{**QA, "options": {"A": "x", "C": "y"}}], "{f}:1: bad-options: option keys must be A, B, C... in order, "
                                                      "got ['A', 'C']"),
    ("qa", [{**QA, "kind": "essay"}], "{f}:1: bad-kind: kind must be mcq, yesno or open, got 'essay'"),
    ("sft", [{"id": "s", "image": "ok.png", "messages": [{"role": "user", "content": "hi"}]}],
     "{f}:1: bad-messages: the last message must be a non-empty assistant turn"),
    ("sft", [{"id": "s", "image": "ok.png", "messages": [{"role": "bot", "content": "hi"}]}],
     "{f}:1: bad-messages: unknown role 'bot' (system, user, assistant; tool turns belong to a trace with 'tools', "
     "see corpora.traces)"),
]


@pytest.mark.parametrize("kind,rows,expected", CASES)
def test_problem_classes(root, kind, rows, expected):
    path = _lines(root, rows)
    report = validate(path, kind)
    assert _problems(report) == [expected.format(f=path, root=root.resolve())]
    assert not report.ok


def _image_case(root, name, write):
    write(root / name)
    return validate(_lines(root, [{**PAIR, "image": name}]), "pairs")


def test_empty_image(root):
    report = _image_case(root, "zero.png", lambda p: p.write_bytes(b""))
    assert _problems(report) == [f"{root}/data.jsonl:1: empty-image: image file is empty (0 bytes): {root}/zero.png"]


def test_truncated_image(root):
    data = (root / "ok.png").read_bytes()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(root / "big.png")
    report = _image_case(root, "cut.png", lambda p: p.write_bytes((root / "big.png").read_bytes()[:-400]))
    assert [p.code for p in report.problems] == ["truncated-image"], data
    assert str(report.problems[0]).startswith(f"{root}/data.jsonl:1: truncated-image: image is truncated (")


def test_unreadable_image(root):
    report = _image_case(root, "text.png", lambda p: p.write_text("not an image"))
    assert _problems(report) == [f"{root}/data.jsonl:1: unreadable-image: cannot decode image (cannot identify "
                                 f"image file '{root}/text.png'): {root}/text.png"]


def test_absurdly_large_image_is_refused_from_the_header(root):
    report = validate(_lines(root, [PAIR]), "pairs", max_pixels=63)
    assert _problems(report) == [f"{root}/data.jsonl:1: image-too-large: image is 8x8 = 64 pixels (limit 63): "
                                 f"{root}/ok.png"]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_non_rgb_modes_are_accepted(root, mode):
    _image_case(root, "m.tif", lambda p: Image.new(mode, (8, 8)).save(p))
    assert validate(root / "data.jsonl", "pairs").problems == []
    assert check_image(str(root / "m.tif")) is None


def test_strict_refuses_lenient_skips_and_counts(root):
    path = _lines(root, [PAIR, {**PAIR, "id": "b", "caption": ""}, {**PAIR, "id": "c"}])
    strict = validate(path, "pairs", "strict")
    with pytest.raises(DataError, match=r"3 pairs records, 1 problems in 1 records, 2 usable \(strict\): REFUSED"):
        strict.raise_if_errors()
    lenient = validate(path, "pairs", "lenient")
    lenient.raise_if_errors()  # usable: the bad record is skipped
    assert lenient.summary() == f"{path}: 3 pairs records, 1 problems in 1 records, 2 usable, 1 skipped (lenient): OK"


def test_cli_prints_file_line_and_exit_codes(root, capsys):
    path = _lines(root, [PAIR, {**PAIR, "id": "b", "image": "gone.png"}])
    assert main([str(path), "--kind", "pairs"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{path}:2: missing-image: image not found: {root}/gone.png",
                   f"{path}: 2 pairs records, 1 problems in 1 records, 1 usable (strict): REFUSED"]
    assert main([str(path), "--kind", "pairs", "--policy", "lenient"]) == 0
    assert main([str(root / "nothing.jsonl"), "--kind", "pairs"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_csv_row_with_wrong_column_count(root):
    path = root / "p.csv"
    path.write_text("image_path,caption\nok.png,pink\nok.png,pink,extra\n")
    assert _problems(validate(path, "pairs")) == [f"{path}:3: malformed-line: expected 2 columns (image_path, caption)"]


def test_shared_image_is_decoded_once_and_demo_corpus_is_clean(tmp_path):
    from corpora.demo import build_demo

    corpus = build_demo(tmp_path, n_train=8, n_eval=4, image_size=56)
    for path, kind in [(corpus.pairs, "pairs"), (corpus.sft, "sft"), (corpus.rl, "rl"), (corpus.eval_mcq, "eval"),
                       (corpus.eval_yesno, "qa"), (corpus.retrieval, "pairs"), (corpus.pairs_csv, "pairs")]:
        report = validate(path, kind)
        assert report.ok and report.problems == [], report.problems
