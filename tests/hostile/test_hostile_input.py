"""Hostile input (issue 9): every case of tests/hostile/corpus.py is refused by validation with its file:line and
problem code (strict), skipped and counted with the good records kept (lenient), and never modifies the data."""
import re

import pytest
from PIL import Image

from corpora.readers import load
from corpora.validate import DataError, main, validate
from tests.hostile.corpus import CASES, HANDLED, digest

KINDS = ("pairs", "sft", "qa")
READER_BLIND = {"duplicate-id", "no-records", "missing-image", "empty-image", "unreadable-image", "truncated-image",
                "image-too-large"}  # readers leave these to validation (they never decode images)


def test_corpus_is_big_varied_and_named_uniquely():
    names = [c.name for c in CASES + HANDLED]
    assert len(CASES) >= 40 and len(set(names)) == len(names)
    assert {c.kind for c in CASES} == set(KINDS)
    assert all(sum(c.kind == k for c in CASES) >= 10 for k in KINDS)
    assert len({c.code for c in CASES}) >= 15  # nearly every problem class validation knows


@pytest.mark.parametrize("case", CASES, ids=str)
def test_validation_refuses_strict_and_skips_lenient(case, tmp_path, capsys):
    data = tmp_path / "data"  # the case and any file it puts next to its root; $PATHOR1_HOME is elsewhere
    path = case.write(data / case.name)
    before = digest(data)

    strict = validate(path, case.kind, "strict")
    assert not strict.ok
    expected = [p for p in strict.problems if p.code == case.code and p.line == case.line]
    assert expected, f"expected {case.code} at line {case.line}, got {[str(p) for p in strict.problems]}"
    assert str(expected[0]).startswith(f"{path}:{case.line}: {case.code}: ")
    assert case.fragment in expected[0].message
    assert all(p.line == case.line for p in strict.problems) or case.usable == 0, "a good record was blamed"
    with pytest.raises(DataError, match=re.escape(f"{path}:{case.line}: {case.code}: ")):
        strict.raise_if_errors()

    lenient = validate(path, case.kind, "lenient")
    assert lenient.records - lenient.bad_records == case.usable  # the good records are kept, none lost
    assert lenient.ok == (case.usable > 0)
    assert lenient.problems == strict.problems

    assert main([str(path), "--kind", case.kind]) == 1
    assert str(expected[0]) in capsys.readouterr().out
    assert digest(data) == before  # validation never touches the data


@pytest.mark.parametrize("case", [c for c in CASES if c.code not in READER_BLIND], ids=str)
def test_readers_refuse_with_file_and_line(case, tmp_path):
    path = case.write(tmp_path / case.name)
    with pytest.raises(DataError, match=re.escape(f"{path}:{case.line}: {case.code}: ")):
        load(path, case.kind)


@pytest.mark.parametrize("case", HANDLED, ids=str)
def test_odd_but_legitimate_input_is_handled(case, tmp_path):
    path = case.write(tmp_path / case.name)
    report = validate(path, case.kind, "strict")
    assert report.ok and report.problems == [] and report.records == case.usable
    for sample in load(path, case.kind):
        for image in sample["images"]:
            with Image.open(image) as im:  # what the training collator does with every image
                rgb = im.convert("RGB")
            assert rgb.mode == "RGB" and rgb.size == (8, 8)
