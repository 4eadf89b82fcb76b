"""Prompt templates: rendered from files, and every template's response passes its own format check."""
import pytest

from corpora.grading import format_ok, grade
from corpora.prompts import render_prompt, render_response, template_names

OPTS = ["normal colonic mucosa", "adenocarcinoma", "lymphoma", "fibrous stroma"]
REASONING = "The nuclei are densely packed and enlarged. Crowded irregular glands are present. This indicates adenocarcinoma."


def test_shipped_templates():
    assert template_names() == ["caption", "chain_of_draft", "cot", "med_r1", "medvlm_r1", "medvlm_r1_paper", "nothink",
                                "vlmevalkit"]


def test_cot_prompt_and_response_exact():
    assert render_prompt("cot", "What is the diagnosis?", OPTS) == (
        "What is the diagnosis?\nA. normal colonic mucosa\nB. adenocarcinoma\nC. lymphoma\nD. fibrous stroma\n"
        "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    )
    assert render_response("cot", REASONING, "B") == f"<think>{REASONING}</think><answer>B</answer>"


def test_yesno_prompt_has_no_option_lines():
    assert render_prompt("nothink", "Are glands present?", []) == (
        "Are glands present?\nOutput the final answer in <answer> </answer> tags."
    )


def test_chain_of_draft_compresses_each_step():
    assert render_response("chain_of_draft", REASONING, "B") == (
        "<think>nuclei densely packed enlarged; Crowded irregular glands; indicates adenocarcinoma</think>"
        "<answer>B</answer>"
    )


def test_caption_template_is_plain_text():
    assert render_prompt("caption", "", []) == "Describe this histopathology image."
    assert render_response("caption", "", "Pink stroma.") == "Pink stroma."


@pytest.mark.parametrize("template", ["cot", "nothink", "chain_of_draft", "caption"])
def test_every_template_target_passes_its_own_format_check(template):
    # The SFT target of a template must be exactly what the RL format reward and evaluation accept.
    target = render_response(template, REASONING, "B")
    assert format_ok(target, template)
    if template != "caption":
        g = grade(target, "B", "mcq", OPTS, template=template)
        assert (g.correct, g.extracted, g.format_ok) == (True, "B", True)


def test_unknown_template_names_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown prompt template 'r1'; available: caption, chain_of_draft, cot, med_r1, medvlm_r1, "
                                         r"medvlm_r1_paper, nothink, vlmevalkit"):
        render_prompt("r1", "q", [])


def test_user_content_puts_images_first():
    from corpora.chat import user_content

    assert user_content("Q?", 2) == [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q?"}]
    assert user_content("Q?", 0) == [{"type": "text", "text": "Q?"}]


def test_a_template_can_declare_the_response_format_it_asks_for():
    from corpora.grading import format_ok
    from corpora.prompts import response_format

    assert response_format("medvlm_r1") == "cot"  # declared in the file
    assert response_format("nothink") == "nothink"  # no declaration: its own name
    target = render_response("medvlm_r1", "dense nuclei", "B")
    assert format_ok(target, "medvlm_r1")
    assert not format_ok("<answer>B</answer>", "medvlm_r1")  # cot format: the <think> part is required
