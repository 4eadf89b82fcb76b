"""Evaluation with the slide viewer: the same environment RL trains with (corpora.slides.viewer.SlideViewer), a
greedy multi-turn loop, each question's navigation recorded with its prediction.

Why a loop of our own: TRL's tool loop lives inside GRPOTrainer (training only), and transformers' ``generate`` runs
one turn. Per turn, every question still navigating is rendered with the model's chat template (the tools' schemas
in the system turn, earlier views as images in ``tool`` messages, as TRL renders them), generated in batches,
parsed with the tokenizer's response template (TRL's ``parse_response``: the parser TRL trains with), and its tool
calls run; a turn without a call -- or the last allowed turn -- is the answer. ``budget=0`` is the thumbnail-only
baseline: the same prompt and overview with no tools offered, so the paired comparison isolates the navigation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tqdm.auto import tqdm

from corpora.slides.viewer import ViewerSettings
from evaluation.config import check_tools
from evaluation.generate import Completion, eos_ids


@dataclass
class NavCompletion(Completion):
    """A completion (the final answer turn) plus the question's navigation: ``SlideViewer.record`` (views with
    their coordinates and µm/px, refusals, region listings) and ``turns`` (assistant turns generated); ``messages``
    is the whole conversation (user turn with the overview, assistant tool calls, tool results with their views,
    the answer), what recipes.distill writes as a navigation trace."""

    navigation: dict = field(default_factory=dict)
    messages: list = field(default_factory=list, repr=False)


def _turns(limits: ViewerSettings) -> int:
    return 0 if limits.budget == 0 else limits.turns()  # budget 0: the thumbnail-only baseline, no tools offered


def _tool_result_content(result):
    # the form TRL's tool loop gives a tool message: a list of content blocks as it is, anything else as text
    return result if isinstance(result, list) else str(result)


def _call(env, call: dict):
    function = call.get("function", call)
    name, arguments = function.get("name"), function.get("arguments") or {}
    tool = {"zoom": env.zoom, "tissue_regions": env.tissue_regions}.get(name)
    try:
        if tool is None:
            raise ValueError(f"Tool {name} not found.")
        return name, tool(**arguments)
    except Exception as e:  # noqa: BLE001 - as TRL does: the model sees {"error": ...} and may try again
        return name, {"error": str(e)}


def navigate_many(model, processor, samples: list[dict], limits: ViewerSettings, *, template: str = "cot",
                  max_new_tokens: int = 256, batch_size: int = 8, progress: bool = True,
                  sampling: dict | None = None) -> list[list[NavCompletion]]:
    """Greedy answers to slide questions (rows of ``corpora.slides.viewer.slide_questions``), each navigating its
    slide with a fresh ``SlideViewer``; ``max_new_tokens`` bounds the tokens the model writes over all its turns.
    ``sampling``: ``generate``'s sampling settings (do_sample, temperature, ...) instead of greedy decoding, as
    recipes.distill samples a teacher's navigations (seed torch before the call)."""
    import torch
    from trl.chat_template_utils import add_response_schema, parse_response

    from corpora.prompts import render_prompt

    tokenizer = processor.tokenizer
    if limits.budget and getattr(tokenizer, "response_template", None) is None \
            and getattr(tokenizer, "response_schema", None) is None:
        add_response_schema(processor)  # raises for a template TRL cannot parse tool calls of
    eos, pad_id = eos_ids(model, processor), tokenizer.pad_token_id
    decoding = sampling or {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    envs, conversations = [], []
    for s in samples:
        env = limits.viewer()
        observation = env.reset(slide=s["slide"], id=s["id"])
        text = render_prompt(template, s["question"], s.get("options") or [])
        if limits.budget:
            text += observation
        conversations.append([{"role": "user", "content": [{"type": "image", "image": env.overview},
                                                             {"type": "text", "text": text}]}])
        envs.append(env)
    tools = [envs[0].zoom, envs[0].tissue_regions] if limits.budget and envs else None
    final: list[NavCompletion | None] = [None] * len(samples)
    used, turns = [0] * len(samples), [0] * len(samples)
    active = list(range(len(samples)))
    bar = tqdm(total=len(samples), desc="navigate", unit="question", disable=not progress)
    for turn in range(_turns(limits) + 1):
        if not active:
            break
        still = []
        for start in range(0, len(active), batch_size):
            idx = active[start:start + batch_size]
            inputs = processor.apply_chat_template([conversations[i] for i in idx], tools=tools,
                                                   add_generation_prompt=True, tokenize=True, return_dict=True,
                                                   processor_kwargs={"padding": True, "return_tensors": "pt"}
                                                   ).to(model.device)
            room = max(1, max_new_tokens - min(used[i] for i in idx))
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=room, pad_token_id=pad_id, **decoding)
            prompt_len = inputs["input_ids"].shape[1]
            for j, i in enumerate(idx):
                toks = out[j, prompt_len:].tolist()
                stop = next((k for k, t in enumerate(toks) if t in eos), None)
                toks = toks[: (stop + 1 if stop is not None else len(toks))][: max(1, max_new_tokens - used[i])]
                used[i] += len(toks)
                turns[i] += 1
                prefix = [t for t, m in zip(inputs["input_ids"][j].tolist(), inputs["attention_mask"][j].tolist()) if m]
                parsed = parse_response(tokenizer, toks, prefix=prefix, tools=tools) if tools else {}
                calls = parsed.get("tool_calls")
                if calls and turn < _turns(limits) and used[i] < max_new_tokens:
                    message = {"role": "assistant", "content": parsed.get("content") or "", "tool_calls": calls}
                    conversations[i].append(message)
                    for call in calls:
                        name, result = _call(envs[i], call)
                        conversations[i].append({"role": "tool", "name": name,
                                                 "content": _tool_result_content(result)})
                    still.append(i)
                    continue
                text = tokenizer.decode(toks, skip_special_tokens=True)
                conversations[i].append({"role": "assistant", "content": text})
                final[i] = NavCompletion(text=text, n_tokens=used[i], navigation={**envs[i].record, "turns": turns[i]},
                                         messages=conversations[i])
                bar.update(1)
        active = still
    bar.close()
    for env in envs:
        env._close()
    return [[c] for c in final]  # type: ignore[list-item]


def views_summary(rows: list[dict]) -> dict:
    """``views_per_question`` (mean views over the questions), and the share of questions with at least one view."""
    views = [len((r.get("navigation") or {}).get("views", [])) for r in rows]
    n = len(views) or 1
    return {"views_per_question": sum(views) / n, "questions_with_views": sum(v > 0 for v in views) / n,
            "views_total": sum(views)}


# ----------------------------------------------------------------------------------------------- evaluation.run
def tool_limits(tools: str | None, view_budget: int = 4, **viewer) -> ViewerSettings | None:
    """``--tools slide_view --view-budget N [--view-size S --overview-size O]`` as ViewerSettings (None without
    --tools)."""
    if not tools:
        return None
    check_tools(tools, view_budget)
    return ViewerSettings(budget=view_budget, **viewer)


def tool_records(suite: str, data, limits: ViewerSettings) -> list[dict]:
    """The questions of a slide QA file (suite ``qa``: records naming a ``slide``), without images: the tool loop
    shows each slide's overview itself, and predictions.jsonl stays JSON."""
    from corpora.slides.viewer import slide_questions

    if suite != "qa":
        raise ValueError(f"--tools slide_view reads a QA file whose records name a slide: use --suite qa --data F, "
                         f"found --suite {suite}")
    return [{**r, "images": []} for r in slide_questions(data, overview_size=8)]


class ToolGenerator:
    """evaluation.run's generator for ``--tools``: greedy navigation (``navigate_many``) on the transformers path."""

    def __init__(self, model_path, device, dtype: str, batch_size: int, progress: bool, limits: ViewerSettings):
        from evaluation.generate import load_model

        self.model, self.processor = load_model(model_path, device=device, dtype=dtype)
        self.dtype = str(self.model.dtype).removeprefix("torch.")
        self.batch_size, self.progress, self.limits = batch_size, progress, limits

    def __call__(self, samples: list[dict], decoding, template: str) -> list[list[NavCompletion]]:
        if not decoding.greedy:
            raise ValueError("--tools evaluates greedy answers; drop --samples")
        return navigate_many(self.model, self.processor, samples, self.limits, template=template,
                             max_new_tokens=decoding.max_new_tokens, batch_size=self.batch_size,
                             progress=self.progress)

    def record(self) -> dict:
        from dataclasses import asdict

        return {"env": "slide_view", **asdict(self.limits), "turns": _turns(self.limits)}


def add_navigation(rows: list[dict], completions: list[NavCompletion]) -> None:
    """Each prediction row gets its ``navigation`` (SlideViewer.record + turns) and ``views`` (count)."""
    for row, c in zip(rows, completions):
        row["navigation"] = c.navigation
        row["views"] = len(c.navigation.get("views", []))
