"""EvalConfig: one typed config for evaluation.run, evaluation.table, evaluation.matrix and the recipes, loaded
like every stage config (defaults -> --config YAML -> key=value), with the familiar flags as aliases; the
profiles' prompts and answer extraction."""
import json

import pytest

from corpora.prompts import render_prompt
from evaluation.config import EvalConfig, flags_to_overrides, load_config
from evaluation.profiles import PROFILES, get_profile, grade_with, vlmeval_choice
from stages.config import ConfigError


def test_flags_and_key_values_set_the_same_fields(tmp_path):
    yaml_file = tmp_path / "eval.yaml"
    yaml_file.write_text("suite: pathmmu\nbatch_size: 4\ndecoding:\n  max_new_tokens: 512\njudge:\n  model: qwen\n")
    cfg = load_config(["--config", str(yaml_file), "--max-new-tokens", "64", "split=all", "--no-progress",
                       "--profile=med-r1"], prog="t")
    assert (cfg.suite, cfg.batch_size, cfg.decoding.max_new_tokens, cfg.split, cfg.progress, cfg.profile,
            cfg.judge.model) == ("pathmmu", 4, 64, "all", False, "med-r1", "qwen")
    kw = cfg.evaluate_kwargs()
    assert kw["max_new_tokens"] == 64 and kw["profile"] == "med-r1" and kw["split"] == "all"
    assert kw["template"] is None and kw["device"] is None  # empty = the default, not the empty string
    assert flags_to_overrides(["--top-p", "0.9", "x=1"]) == ["decoding.top_p=0.9", "x=1"]


def test_one_set_of_defaults():
    from recipes.pipeline import recipe_eval

    cli, recipe = load_config([], prog="t"), recipe_eval()
    assert type(cli) is type(recipe) is EvalConfig
    assert (cli.batch_size, cli.decoding.max_new_tokens) == (8, 256)
    # the recipes' CPU demo budget is a visible override of the same class, not a second default
    assert (recipe.batch_size, recipe.decoding.max_new_tokens, recipe.template) == (32, 96, "cot")


@pytest.mark.parametrize("argv,fragment", [
    (["batch_size=0"], "batch_size must be >= 1"),
    (["decoding.top_p=2"], "top_p must be in (0, 1]"),
    (["profile=lmms"], "unknown profile 'lmms'; known: pathor1, vlmevalkit, medvlm-r1, med-r1"),
    (["backend=tensorrt"], "backend"),
    (["--max-new-tokens"], "--max-new-tokens expects a value"),
])
def test_bad_values_are_one_config_error(argv, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(argv, prog="t")
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_run_cli_bad_config_exits_2_in_one_line(capsys):
    from evaluation.run import main

    assert main(["--model", "x", "decoding.samples=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "samples must be >= 1" in err and "\n" not in err


def test_profiles_ask_with_the_harness_prompt():
    q, opts = "What imaging technique is utilized?", ["X-ray", "MRI"]
    assert render_prompt("med_r1", q, opts).startswith("What imaging technique is utilized? A)X-ray, B)MRI Think")
    assert render_prompt("medvlm_r1_paper", q, opts).startswith(f"{q}\nA) X-ray\nB) MRI\nYour task:\n1. Think")
    assert render_prompt("vlmevalkit", q, opts) == (f"Question: {q}\nOptions:\nA. X-ray\nB. MRI\n"
                                                    "Please select the correct answer from the options above.")
    assert {p.template for p in PROFILES.values()} == {None, "vlmevalkit", "medvlm_r1_paper", "med_r1"}


@pytest.mark.parametrize("profile,completion,correct", [
    ("medvlm-r1", "<think>x</think><answer>B</answer>", True),
    ("medvlm-r1", "<think>x</think><answer>B) MRI</answer>", False),  # the harness wants one capital letter
    ("pathor1", "<think>x</think><answer>B) MRI</answer>", True),  # ours maps "B) MRI" to B
    ("med-r1", "<think>x</think><answer> B </answer>", True),
    ("med-r1", "<answer>MRI</answer>", False),  # one word, but not the letter
    ("vlmevalkit", "The answer is B.", True),
    ("vlmevalkit", "MRI, clearly", True),  # no letter: the one option text it contains
    ("vlmevalkit", "A or B", False),  # two letters: ambiguous (VLMEvalKit would ask its LLM extractor)
])
def test_each_profile_extracts_answers_like_its_harness(profile, completion, correct):
    how = get_profile(profile)
    g = grade_with(how, completion, "B", "mcq", ["X-ray", "MRI"], template=how.template or "cot")
    assert g.correct is correct


def test_vlmeval_yes_no_and_choice():
    how = get_profile("vlmevalkit")
    assert grade_with(how, "Yes, it is.", "yes", "yesno", template="vlmevalkit").correct
    assert not grade_with(how, "yes and no", "yes", "yesno", template="vlmevalkit").correct
    assert vlmeval_choice("(C) Pneumonia", ["a", "b", "Pneumonia"]) == "C"


def test_profile_is_recorded_and_fixes_the_template(tiny_model_dir, tmp_path):
    from evaluation.run import evaluate
    from tests.evaluation.release_fixtures import pathmmu

    root = pathmmu(tmp_path)
    m = evaluate(tiny_model_dir(), "pathmmu", root, limit=2, max_new_tokens=4, progress=False, profile="vlmevalkit",
                 out=tmp_path / "out")
    settings = json.loads((tmp_path / "out" / "metrics.json").read_text())["settings"]
    assert m["template"] == "vlmevalkit" and settings["profile"]["name"] == "vlmevalkit"
    assert settings["profile"]["extraction"] == "vlmeval" and settings["skipped"]["split 'val' (reading test)"] == 1
    with pytest.raises(ValueError, match=r"--profile med-r1 asks with its own prompt \(med_r1\); found --template cot"):
        evaluate(tiny_model_dir(), "pathmmu", root, limit=1, progress=False, profile="med-r1", template="cot")
