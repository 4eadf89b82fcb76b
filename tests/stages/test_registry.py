"""stages.registry: resolve, manifest, lineage, atomic writes (crash + concurrency), pruning, CLI."""
import json
import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from stages.registry import Registry, RegistryError, fingerprint_files, home, main, new_run_name

ROOT = Path(__file__).resolve().parents[2]
MANIFEST_KEYS = {"stage", "run", "step", "finished", "parent", "config", "data_fingerprint", "metrics", "versions",
                 "git_commit", "created", "kind", "extra"}


@dataclass
class TinyConfig:
    lr: float = 1e-5
    out: Path = Path("x")


def write(reg, stage, run, step, parent=None, payload=b"weights", **kw):
    with reg.writer(stage, run, step, parent=parent, **kw) as w:
        (w.path / "model.safetensors").write_bytes(payload)
        w.metrics.update(loss=1.0 / (step + 1))
    return w.path


def visible(folder: Path) -> list[str]:
    rel = (p.relative_to(folder) for p in folder.rglob("*"))
    return sorted(str(p) for p in rel if not any(part.startswith(".") for part in p.parts))


def pointer(path: Path) -> str:
    return path.read_text().strip()


@pytest.fixture
def reg():
    return Registry()  # $PATHOR1_HOME is a fresh tmp folder per test (tests/conftest.py)


def test_home_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path / "h"))
    assert home() == tmp_path / "h" and Registry().root == tmp_path / "h"
    monkeypatch.delenv("PATHOR1_HOME")
    monkeypatch.chdir(tmp_path)
    assert home() == tmp_path / "runs"


def test_written_checkpoint_is_self_describing(reg, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "pairs.jsonl").write_text('{"id": 1}\n')
    path = write(reg, "sft", "r1", 4, config=TinyConfig(), data=data, kind="hf-vlm")
    assert path == reg.root / "sft" / "r1" / "step-00000004"
    assert sorted(os.listdir(path)) == ["manifest.json", "model.safetensors"]
    m = reg.manifest("sft:r1")
    assert set(m) == MANIFEST_KEYS
    assert (m["stage"], m["run"], m["step"], m["parent"], m["kind"]) == ("sft", "r1", 4, None, "hf-vlm")
    assert m["config"] == {"lr": 1e-5, "out": "x"}  # dataclass stored as plain JSON
    assert m["data_fingerprint"] == fingerprint_files(data) and m["data_fingerprint"].startswith("sha256:")
    assert m["metrics"] == {"loss": 0.2}
    assert m["versions"]["torch"].startswith("2.") and m["versions"]["python"].count(".") == 2
    assert m["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", m["git_commit"])
    created = datetime.fromisoformat(m["created"])
    assert created.tzinfo == timezone.utc and abs((datetime.now(timezone.utc) - created).total_seconds()) < 60
    assert pointer(reg.root / "sft" / "r1" / "LATEST") == "step-00000004"
    assert pointer(reg.root / "sft" / "LATEST") == "r1/step-00000004"


def test_resolve_every_reference_form(reg, tmp_path):
    write(reg, "sft", "r1", 1)
    newest_r1 = write(reg, "sft", "r1", 12)
    newest = write(reg, "sft", "r2", 3)
    assert reg.resolve("sft:latest") == newest == reg.latest("sft")
    assert reg.resolve("sft:") == newest
    assert reg.resolve("sft:r1") == newest_r1 == reg.latest("sft", "r1") == reg.resolve("sft:r1/latest")
    assert reg.resolve("sft:r1/1") == reg.resolve("sft:r1/step-00000001") == reg.root / "sft/r1/step-00000001"
    assert reg.resolve("sft/r1/step-00000012") == newest_r1  # the id manifests use for parents
    plain = tmp_path / "base_model"
    plain.mkdir()
    assert reg.resolve(str(plain)) == plain and reg.resolve(plain) == plain  # a folder without manifest
    assert reg.latest("rl") is None and reg.latest("sft", "nope") is None


def test_resolve_errors_list_what_exists(reg):
    with pytest.raises(RegistryError) as e:
        reg.resolve("sft:latest")
    assert str(e.value) == f"no checkpoint for 'sft:latest' in {reg.root} (stages present: none)"
    write(reg, "pretrain", "p1", 2)
    write(reg, "pretrain", "p1", 5)
    cases = {
        "sft:latest": f"no checkpoint for 'sft:latest' in {reg.root} (stages present: pretrain)",
        "pretrain:p9": f"no run 'p9' for 'pretrain:p9' in {reg.root / 'pretrain'} (runs present: p1)",
        "pretrain:p1/7": f"no step '7' for 'pretrain:p1/7' in {reg.root / 'pretrain/p1'} "
                         "(steps present: step-00000002, step-00000005)",
    }
    for ref, message in cases.items():
        with pytest.raises(RegistryError) as e:
            reg.resolve(ref)
        assert str(e.value) == message
    with pytest.raises(RegistryError, match=r"no checkpoint or folder 'nowhere' .*stages present: pretrain"):
        reg.resolve("nowhere")
    assert issubclass(RegistryError, LookupError)


def test_lineage_and_show(reg, tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    write(reg, "pretrain", "p", 5, parent=base)
    write(reg, "sft", "s", 4, parent="pretrain:latest")
    write(reg, "rl", "r", 10, parent="sft:s")
    assert reg.manifest("rl:latest")["parent"] == "sft/s/step-00000004"  # recorded as a stable id
    chain = reg.lineage("rl:latest")
    assert [c["ref"] for c in chain] == ["rl/r/step-00000010", "sft/s/step-00000004", "pretrain/p/step-00000005",
                                         None]
    assert chain[-1]["base"] == str(base)
    assert main(["show", "rl:latest"]) == 0
    out = capsys.readouterr().out
    assert (f"lineage: rl/r/step-00000010 <- sft/s/step-00000004 <- pretrain/p/step-00000005 <- base:{base}"
            in out)
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["ref"] for e in listed] == ["pretrain/p/step-00000005", "rl/r/step-00000010", "sft/s/step-00000004"]
    assert listed[1]["lineage"].startswith("rl/r/step-00000010 <- sft/s/step-00000004 <- pretrain")
    assert main(["show", "sft:nope"]) == 2
    assert "error: no run 'nope' for 'sft:nope'" in capsys.readouterr().err


def test_hub_id_parent_is_kept_but_a_typo_of_our_ref_is_refused(reg):
    write(reg, "pretrain", "p", 1, parent="Qwen/Qwen2-VL-2B-Instruct")
    assert [c.get("base") for c in reg.lineage("pretrain:p")] == [None, "Qwen/Qwen2-VL-2B-Instruct"]
    with pytest.raises(RegistryError, match="no run 'q' for 'pretrain:q'"):
        reg.writer("sft", "s", 1, parent="pretrain:q")  # stage exists: a missing run is a mistake, not a hub id


def test_failed_writer_leaves_nothing(reg):
    write(reg, "sft", "r1", 1)
    before = visible(reg.root)
    with pytest.raises(RuntimeError, match="boom"):
        with reg.writer("sft", "r1", 2) as w:
            (w.path / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("boom")
    assert visible(reg.root) == before and sorted(os.listdir(reg.root / "sft" / "r1")) == ["LATEST", "step-00000001"]
    assert reg.resolve("sft:latest").name == "step-00000001"


CRASHING_WRITER = """
import os, sys
from pathlib import Path
from stages.registry import Registry
where = sys.argv[1]
reg = Registry()
if where == "rename":  # die at the worst moment: payload and manifest complete, folder not yet moved
    os.rename = lambda *a: os._exit(9)
with reg.writer("sft", "r1", 2) as w:
    (w.path / "model.safetensors").write_bytes(b"x" * 1000)
    if where == "payload":
        os._exit(9)
"""


@pytest.mark.parametrize("where", ["payload", "rename"])
def test_killed_writer_leaves_nothing_visible(reg, where):
    write(reg, "sft", "r1", 1)
    before = visible(reg.root)
    proc = subprocess.run([sys.executable, "-c", CRASHING_WRITER, where], cwd=ROOT, env=os.environ)
    assert proc.returncode == 9
    leftovers = [p for p in (reg.root / "sft" / "r1").iterdir() if p.name.startswith(".tmp-step-00000002-")]
    assert len(leftovers) == 1  # the half-written staging folder is there, but hidden
    assert ((leftovers[0] / "manifest.json").exists()) == (where == "rename")
    assert visible(reg.root) == before
    assert [e["ref"] for e in reg.entries()] == ["sft/r1/step-00000001"]
    assert pointer(reg.root / "sft" / "r1" / "LATEST") == "step-00000001"
    assert reg.resolve("sft:latest").name == "step-00000001"
    with pytest.raises(RegistryError, match="steps present: step-00000001"):
        reg.resolve("sft:r1/2")
    reg.prune("sft", "r1", keep_last=1)  # the dead writer's staging folder is cleaned up
    assert sorted(os.listdir(reg.root / "sft" / "r1")) == ["LATEST", "step-00000001"]


def test_folder_without_manifest_is_not_a_checkpoint(reg):
    write(reg, "sft", "r1", 1)
    (reg.root / "sft" / "r1" / "step-00000009").mkdir()  # e.g. copied by hand, or an old crash
    (reg.root / "sft" / "r2" / "step-00000001").mkdir(parents=True)
    assert [e["ref"] for e in reg.entries()] == ["sft/r1/step-00000001"]
    assert reg.latest("sft", "r1").name == "step-00000001"
    with pytest.raises(RegistryError, match="runs present: r1"):
        reg.resolve("sft:r2")


def _concurrent_write(root, step, barrier):
    barrier.wait()
    write(Registry(root), "sft", "shared", step, payload=os.urandom(64 * 1024))


def test_concurrent_writers_keep_the_index_consistent(reg):
    steps = [3, 1, 6, 2, 5, 4]
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(steps))
    procs = [ctx.Process(target=_concurrent_write, args=(str(reg.root), s, barrier)) for s in steps]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(steps)
    found = reg.entries("sft")
    assert [e["step"] for e in found] == [1, 2, 3, 4, 5, 6]
    assert all(sorted(os.listdir(e["path"])) == ["manifest.json", "model.safetensors"] for e in found)
    assert pointer(reg.root / "sft" / "shared" / "LATEST") == "step-00000006"  # the run pointer never goes back
    stage_latest = pointer(reg.root / "sft" / "LATEST")
    assert stage_latest == "shared/step-00000006" and (reg.root / "sft" / stage_latest / "manifest.json").is_file()
    assert [p.name for p in (reg.root / "sft" / "shared").iterdir() if p.name.startswith(".")] == []


def test_writer_refuses_bad_requests(reg):
    write(reg, "sft", "r1", 1)
    with pytest.raises(RegistryError, match="checkpoint sft/r1/step-00000001 already exists"):
        write(reg, "sft", "r1", 1)
    for stage, run, step, message in [("sft", "a/b", 1, "invalid run name 'a/b'"), (".x", "r", 1, "invalid stage"),
                                      ("sft", "r", -1, "non-negative int"), ("sft", "r", 1.5, "non-negative int")]:
        with pytest.raises(RegistryError, match=message):
            reg.writer(stage, run, step)


def test_prune_keeps_last_n_and_every_parent(reg):
    for step in range(1, 6):
        write(reg, "sft", "r1", step)
    write(reg, "rl", "g", 1, parent="sft:r1/2")  # rl was started from step 2: it must survive
    deleted = reg.prune("sft", "r1", keep_last=2)
    assert [p.name for p in deleted] == ["step-00000001", "step-00000003"]
    assert [e["step"] for e in reg.entries("sft")] == [2, 4, 5]
    assert [p.name for p in (reg.root / "sft" / "r1").iterdir() if p.name.startswith(".")] == []
    assert reg.lineage("rl:latest")[1]["ref"] == "sft/r1/step-00000002"
    with reg.writer("sft", "r1", 6) as w:  # a live writer's staging folder survives a concurrent prune
        (w.path / "model.safetensors").write_bytes(b"w")
        assert reg.prune("sft", "r1", keep_last=1) == [reg.root / "sft/r1/step-00000004"]
    assert sorted(os.listdir(w.path)) == ["manifest.json", "model.safetensors"]
    with pytest.raises(RegistryError, match="keep_last must be >= 1"):
        reg.prune("sft", "r1", keep_last=0)


def test_stale_pointer_falls_back_to_folders(reg):
    write(reg, "sft", "r1", 1)
    write(reg, "sft", "r1", 2)
    os.rename(reg.root / "sft/r1/step-00000002", reg.root / "sft/r1/.gone")  # deleted by hand
    assert reg.latest("sft", "r1").name == "step-00000001"
    assert reg.resolve("sft:latest").name == "step-00000001"


def test_fingerprint_depends_on_content_not_location(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "img").mkdir(parents=True)
        (d / "img" / "1.png").write_bytes(b"\x89PNG")
        (d / "x.jsonl").write_text("{}\n")
    assert fingerprint_files(a) == fingerprint_files(b) == fingerprint_files([str(a)])
    (b / "x.jsonl").write_text("{ }\n")
    assert fingerprint_files(a) != fingerprint_files(b)
    assert fingerprint_files(a / "x.jsonl") != fingerprint_files(a)
    with pytest.raises(FileNotFoundError, match="cannot fingerprint .*missing"):
        fingerprint_files(tmp_path / "missing")


def test_new_run_name_is_unique_and_sortable():
    names = [new_run_name("sft") for _ in range(2000)]  # most within one second
    assert len(set(names)) == 2000
    assert all(re.fullmatch(r"sft-\d{8}-\d{6}-[0-9a-f]{8}", n) for n in names)


def test_cli_runs_as_module_without_torch(reg):
    write(reg, "sft", "r1", 3)
    code = textwrap.dedent("""
        import sys, runpy
        sys.argv = ["x", "list"]
        try:
            runpy.run_module("stages.registry", run_name="__main__")
        except SystemExit as e:
            assert e.code == 0, e.code
        print("torch imported:", "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert "sft/r1/step-00000003" in out.stdout and "torch imported: False" in out.stdout


def test_parse_ref_is_the_one_reference_parser():
    from stages.registry import Ref, parse_ref

    assert parse_ref("sft:latest") == Ref("sft") == parse_ref("sft:")
    assert parse_ref("rl:run1") == Ref("rl", "run1") == parse_ref("rl:run1/latest")
    assert parse_ref("rl:run1/12") == Ref("rl", "run1", "12")
    # not references: a preset, an id, a hub id, a folder
    assert [parse_ref(t) for t in ("tiny:qwen2_vl", "sft/run/step-00000001", "Qwen/Qwen2-VL-2B", "/tmp/x")] == [None] * 4


def test_the_home_layout_is_named_in_one_module(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    from stages import registry

    monkeypatch.setenv("PATHOR1_HOME", str(tmp_path))
    assert registry.logs_dir("sft", "r1") == tmp_path / "logs" / "sft" / "r1"
    assert registry.logs_dir(root=tmp_path / "other") == tmp_path / "other" / "logs"
    assert registry.reports_dir("patho_r1", "demo") == tmp_path / "reports" / "patho_r1" / "demo"
    assert (registry.cache_dir("images"), registry.data_dir("PathMMU", "data.json"), registry.base_dir("tiny-x")) == \
        (tmp_path / "cache" / "images", tmp_path / "data" / "PathMMU" / "data.json", tmp_path / "base" / "tiny-x")
    # nobody else spells a home folder: `home() / "logs"`, `home / "reports"`, `home().joinpath("data"...`
    spelled = re.compile(r"home\(?\)?\s*(/|\.joinpath\()\s*\"(logs|reports|cache|data|base)\"")
    root = Path(__file__).resolve().parents[2]
    offenders = [f"{p.relative_to(root)}:{n}" for pkg in ("corpora", "stages", "pathoclip", "evaluation", "recipes")
                 for p in sorted((root / pkg).rglob("*.py")) if p.name != "registry.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if spelled.search(line)]
    assert offenders == []
