"""The first hour's mistakes (issue 27): every CLI in the README's table, given what a newcomer gets wrong, answers
in one line naming the file / field, exit 2, no traceback, before any model loads.

Table-driven: each group of cases runs in ONE fresh interpreter (one import of the libraries for all of them),
calling each CLI's ``main(argv)`` in turn with stderr captured; ``stages.model.load_model`` is replaced by a
function that fails loudly, so a case that reached a model load is a traceback, not a pass."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from corpora.demo import build_demo

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r"""
import contextlib, importlib, io, json, os, sys
import stages.model

def _no_model(*a, **k):
    raise AssertionError("a model loaded before the error was reported")

stages.model.load_model = _no_model
WATCHED = ("trl", "stages.rl.trainer", "stages.engine")  # what a case may be answered before (cases run in order)
out = []
for module, argv, home in json.loads(sys.argv[1]):
    os.environ["PATHOR1_HOME"] = home
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = importlib.import_module(module).main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # a bug: reported as the traceback it would print
            import traceback
            traceback.print_exc()
            code = "raised " + type(e).__name__
    out.append({"code": code, "err": err.getvalue(), "loaded": [m for m in WATCHED if m in sys.modules]})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("first-hour")
    demo = build_demo(tmp / "demo", n_train=4, n_eval=4, image_size=32)
    rl, sft = (demo.root / "rl.jsonl").read_text().splitlines(), (demo.root / "sft.jsonl").read_text().splitlines()
    (demo.root / "rl_badline.jsonl").write_text("\n".join([rl[0], '{"question": "x", broken', *rl[1:]]) + "\n")
    (demo.root / "sft_badline.jsonl").write_text("\n".join([sft[0], "not json", *sft[1:]]) + "\n")
    bad = tmp / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "images" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # a corrupt image
    record = json.loads(rl[0]) | {"images": ["images/x.png"]}
    (bad / "rl.jsonl").write_text(json.dumps(record) + "\n")
    (bad / "notaslide.txt").write_text("hello\n")
    (tmp / "a-file").write_text("")
    (tmp / "model").mkdir()  # a folder that is no model (no config.json)
    return {"T": str(tmp), "D": str(demo.root), "B": str(bad), "H": str(tmp / "home"),
            "RO": str(tmp / "a-file" / "home")}  # a home under a file: unwritable even for root


# (case, module, argv, expected substring of the one line); "{X}" fields are filled from `files`
FAST = [
    ("misspelt key", "recipes.sft", ["max_stepz=3"], "unknown key 'max_stepz'"),
    ("wrong type", "recipes.sft", ["max_steps=abc"], "SFTConfig.max_steps"),
    ("missing --config", "recipes.pretrain", ["--config", "{T}/nope.yaml"], "{T}/nope.yaml"),
    ("trl key pathor1 owns", "recipes.rl", ["trl.remove_unused_columns=true"], "trl.remove_unused_columns", "trl"),
    ("unknown init", "recipes.sft", ["init=nosuch:latest"], "init=nosuch:latest"),
    ("pathoclip bad key", "pathoclip.train", ["epochz=1"], "unknown key 'epochz'"),
    ("pathoclip bad type", "pathoclip.train", ["batch_size=abc"], "CLIPTrainConfig.batch_size"),
    ("slide_nav bad key", "recipes.slide_nav", ["bogus=1"], "unknown key 'bogus'"),
    ("slide_r1 bad key", "recipes.slide_r1", ["bogus=1"], "unknown key 'bogus'"),
    ("patho_r1 unknown stage", "recipes.patho_r1", ["stages=[pretrain,sfft]"], "sfft"),
    ("medvlm_r1 bad key", "recipes.medvlm_r1", ["bogus=1"], "unknown key 'bogus'"),
    ("med_r1 bad key", "recipes.med_r1", ["bogus=1"], "unknown key 'bogus'"),
    ("eval --limit abc", "evaluation.run", ["--model", "rl:latest", "--limit", "abc"], "limit"),
    ("eval --limit 0", "evaluation.run", ["--model", "rl:latest", "--limit", "0"], "limit must be >= 1"),
    ("eval unknown model", "evaluation.run", ["--model", "rl:latest", "--suite", "demo-mcq"], "rl:latest"),
    ("eval unwritable home", "evaluation.run", ["--model", "{T}/model", "--suite", "demo-mcq"], "{RO}"),
    ("registry show missing", "stages.registry", ["show", "sft:nosuch"], "sft:nosuch"),
    ("slides info non-slide", "corpora.slides.__main__", ["info", "{B}/notaslide.txt"], "notaslide.txt"),
    ("slides info missing", "corpora.slides.__main__", ["info", "{T}/nope.svs"], "nope.svs"),
    ("validate missing file", "corpora.validate", ["{T}/nope.jsonl"], "nope.jsonl"),
    ("report missing ref", "evaluation.report", ["rl:nosuch"], "rl:nosuch"),
    ("browse missing ref", "evaluation.browse.__main__", ["rl:nosuch"], "rl:nosuch"),
    ("sft unwritable home", "recipes.sft", ["max_steps=1"], "set PATHOR1_HOME"),
]
# the data checks: the corpora readers and validation import (datasets, accelerate) once for the group
DATA = [  # the RL cases first: each must be answered before TRL's trainer imports (was ~8 s CPU more each)
    ("rl before sft", "recipes.rl", ["data={D}"], "init=sft:latest: no checkpoint for 'sft:latest'"),
    ("unknown reward", "recipes.rl", ["init=tiny:qwen2_vl", "data={D}", "rewards=[format,acuracy]"], "'acuracy'",
     "stages.rl.trainer"),
    ("rl missing data file", "recipes.rl", ["init=tiny:qwen2_vl", "data={T}/nope.jsonl"], "{T}/nope.jsonl",
     "stages.rl.trainer"),
    ("rl data bad line", "recipes.rl", ["init=tiny:qwen2_vl", "data={D}/rl_badline.jsonl"], "rl_badline.jsonl:2",
     "stages.rl.trainer"),
    ("rl corrupt image", "recipes.rl", ["init=tiny:qwen2_vl", "data={B}/rl.jsonl"], "x.png", "stages.rl.trainer"),
    ("missing data file", "recipes.sft", ["init=tiny:qwen2_vl", "data={T}/nope.jsonl"], "{T}/nope.jsonl"),
    ("data bad line", "recipes.sft", ["init=tiny:qwen2_vl", "data={D}/sft_badline.jsonl"], "sft_badline.jsonl:2",
     "stages.engine"),
    ("eval missing --data", "evaluation.run", ["--model", "{T}/model", "--suite", "qa", "--data", "{T}/nope.jsonl"],
     "nope.jsonl"),
]
# past the data checks, inside the engine (its imports: ~8 s CPU): slow tier
ENGINE = [
    ("eval_fraction leaves no training data", "recipes.sft",
     ["init=tiny:qwen2_vl", "data={D}/sft.jsonl", "eval_fraction=0.99"], "eval_fraction=0.99"),
]


def run_group(cases, files) -> list[tuple[str, dict, str]]:
    fill = lambda s: s.format(**files)  # noqa: E731
    calls = [(module, [fill(a) for a in argv], files["RO"] if "unwritable" in case else files["H"])
             for case, module, argv, *_ in cases]
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(calls)], capture_output=True, text=True,
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                                         "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return [(case, result, fill(expected), *unloaded) for (case, _, _, expected, *unloaded), result in zip(cases, results)]


def check(case: str, result: dict, expected: str, unloaded: str = "") -> None:
    progress = ("%|", " examples [")  # datasets' and tqdm's progress bars while the data is read and checked
    lines = [line for line in result["err"].splitlines() if line.strip() and not any(p in line for p in progress)]
    assert result["code"] == 2, f"{case}: exit {result['code']}\n{result['err'][-2000:]}"
    assert "Traceback" not in result["err"], f"{case}:\n{result['err'][-2000:]}"
    assert len(lines) == 1 and "error: " in lines[0], f"{case}: {len(lines)} lines:\n" + "\n".join(lines)
    assert expected in lines[0], f"{case}: {expected!r} not named in {lines[0]!r}"
    assert unloaded not in result["loaded"], f"{case}: answered only after {unloaded} was imported"


def check_all(cases, files) -> None:
    failures = []
    for case, result, expected, *unloaded in run_group(cases, files):
        try:
            check(case, result, expected, *unloaded)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n\n".join(failures)
    assert not (Path(files["H"]) / "base").exists()  # no tiny policy was built


def test_first_hour_config_registry_and_argument_mistakes(files):
    check_all(FAST, files)


def test_first_hour_data_mistakes_before_any_model(files):
    check_all(DATA, files)


@pytest.mark.slow
def test_first_hour_eval_fraction_without_training_data_before_the_model(files):
    check_all(ENGINE, files)
