"""Broken releases give one line naming the data, never a traceback: for every reader, files truncated, of the
wrong shape, in the wrong encoding or missing, and ``evaluation.run`` exits 2 with that line before any model
loads (the model reference here does not even exist)."""
import json
import zipfile

import pytest

from evaluation.run import main
from evaluation.suites import SuiteError, load_suite
from tests.evaluation import release_fixtures as rf
from tests.evaluation.test_releases import BUILDERS, SUITE_OF


def _break(kind, root):
    """Damage the release the way downloads and hand edits do."""
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".parquet", ".csv", ".zip", ".tsv"))
    if kind == "truncated":
        for f in files:
            f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 3)])
    elif kind == "wrong-shape":
        for f in files:
            f.write_text(json.dumps({"unexpected": [[1, 2], "x"]}) if f.suffix != ".jsonl" else '[1, 2]\n"x"\n')
    elif kind == "latin-1":
        for f in files:
            f.write_bytes(b"\xff\xfe" + "caf\xe9".encode("latin-1"))
    elif kind == "empty-folder":
        for f in files:
            f.unlink()


@pytest.mark.parametrize("kind", ["truncated", "wrong-shape", "latin-1", "empty-folder"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_reader_refuses_broken_data_in_one_line(name, kind, tmp_path):
    root, options = BUILDERS[name](tmp_path)
    _break(kind, root)
    with pytest.raises(SuiteError) as e:
        load_suite(SUITE_OF.get(name, name), root, **options)
    message = str(e.value)
    assert "\n" not in message and str(tmp_path) in message, message


def test_run_cli_exits_2_on_a_broken_release_before_any_model(tmp_path, capsys):
    root = rf.pathmmu(tmp_path)
    (root / "data.json").write_text('{"PubMed": {"test": [{"No": 1, "img": "pm_1.jpg"')
    not_a_model = tmp_path / "folder-without-weights"  # loading it would fail: the data error must come first
    not_a_model.mkdir()
    rc = main(["--model", str(not_a_model), "--suite", "pathmmu", "--data", str(root)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0, err
    assert err.startswith(f"error: {root / 'data.json'}:1: invalid JSON"), err


def test_a_zip_that_is_not_a_zip_is_named(tmp_path):
    root = rf.medxpertqa(tmp_path)
    (root / "images.zip").write_bytes(b"not a zip at all")
    with pytest.raises(SuiteError, match=r"images\.zip: expected a zip archive, found .*; fix: download it again"):
        load_suite("medxpertqa", root)


def test_a_zip_member_leaving_the_archive_is_refused(tmp_path):
    root = rf.medxpertqa(tmp_path)
    with zipfile.ZipFile(root / "images.zip", "a") as zf:
        zf.writestr("../../evil.jpeg", b"x")
    with pytest.raises(SuiteError, match=r"expected archive members inside the archive, found '\.\./\.\./evil\.jpeg'"):
        load_suite("medxpertqa", root)
    assert not (tmp_path / "evil.jpeg").exists()


@pytest.mark.parametrize("args,fragment", [
    (["--suite", "pathmmu", "--split", "dev"], "expected split 'dev', found only"),
    (["--suite", "pathmmu", "--profile", "lmms-eval"], "unknown profile 'lmms-eval'"),
    (["--suite", "mmmu-med", "--data", "{tmp}/nowhere"], "expected the mmmu-med release here, found no such file"),
    (["--suite", "pathmmu", "--manifest", "{tmp}/missing.json"], "missing.json: not a pathor1 evaluation manifest"),
    (["--suite", "pathmmu", "--config", "{tmp}/missing.yaml"], "cannot read config file"),
    (["--suite", "pathmmu", "decoding.temperature=hot"], "decoding.temperature"),
    (["--suite", "pathmmu", "--profile", "med-r1", "--template", "cot"], "asks with its own prompt"),
])
def test_run_refuses_bad_input_in_one_line_before_the_model(args, fragment, tmp_path, capsys):
    root = rf.pathmmu(tmp_path)
    not_a_model = tmp_path / "folder-without-weights"
    not_a_model.mkdir()
    argv = ["--model", str(not_a_model), "--data", str(root)] + [a.format(tmp=tmp_path) for a in args]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and fragment in err, err
