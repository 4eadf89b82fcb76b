"""An LLM judge for open answers, over any OpenAI-compatible endpoint: ONE implementation for the RL reward
(`rewards: [judge]`) and `evaluation.run --judge URL`.

The judge is asked with a jinja prompt (`corpora/prompts/judge/<name>.jinja` or a file path) to grade an
answer against the reference on 0..scale and to end its reply with `Score: N`; the score is returned divided
by `scale`, in [0, 1]. A failed request or a reply without a readable in-range score gives None -- never a
crash and never a silent 0 -- and the failures are counted (`failure_rate`).

    python -m corpora.judge calibrate DATA --url http://127.0.0.1:8000 --model judge [--limit 200]

reports how often the judge agrees with exact match on closed (mcq / yes-no) questions: DATA is a QA file
(each closed question is judged twice, with its right answer and with a wrong one) or an evaluation
`predictions.jsonl` (the model's answers, labelled by the scorer's `correct`).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import string
import sys
import threading
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import jinja2

from corpora.endpoint import ChatEndpoint, EndpointError, user_message

log = logging.getLogger(__name__)
PROMPT_DIR = Path(__file__).resolve().parent / "prompts" / "judge"
_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class JudgeConfig:
    url: str = _f("", "OpenAI-compatible endpoint of the judge (http://host:8000, .../v1 or .../v1/chat/completions).")
    model: str = _f("", "Model name the endpoint serves (the request's `model` field).")
    prompt: str = _f("default", "Judge prompt: a name in corpora/prompts/judge/ or a path to a .jinja file.")
    scale: int = _f(10, "The judge scores 0..scale; the reward is score / scale.")
    api_key_env: str = _f("OPENAI_API_KEY", "Environment variable holding the API key (the key itself is never stored).")
    timeout: float = _f(60.0, "Seconds per request before it counts as failed (then retried).")
    max_retries: int = _f(2, "Retries after a timeout, a connection error, HTTP 429 or 5xx (with backoff).")
    concurrency: int = _f(8, "Requests in flight at most.")
    rate_limit: float = _f(0.0, "Request starts per second at most (0 = no limit).")
    max_tokens: int = _f(128, "Tokens the judge may write.")
    images: bool = _f(False, "Send the question's images too (for a vision-language judge).")
    cache_dir: str = _f("", "Reply cache folder (default $PATHOR1_HOME/cache/chat); a rerun asks nothing twice.")

    def __post_init__(self):
        if self.url:
            try:
                from corpora.endpoint import chat_url

                chat_url(self.url)
            except EndpointError as e:
                raise ValueError(f"judge.url: {e}") from None
            if not self.model:
                raise ValueError("judge.model is empty: name the model the endpoint serves")
        if self.scale < 1:
            raise ValueError(f"judge.scale must be >= 1, got {self.scale}")
        for name in ("timeout", "concurrency", "max_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"judge.{name} must be > 0, got {getattr(self, name)}")
        if self.max_retries < 0 or self.rate_limit < 0:
            raise ValueError(f"judge.max_retries and judge.rate_limit must be >= 0, got {self.max_retries}, {self.rate_limit}")
        prompt_file(self.prompt)  # an unknown prompt fails now, not at the first reward call

    def describe(self) -> dict:
        """For manifests and metrics: the settings, and the key's variable name only."""
        return {k: v for k, v in asdict(self).items() if k not in ("cache_dir",)}


def prompt_file(prompt: str) -> Path:
    path = Path(prompt) if prompt.endswith(".jinja") else PROMPT_DIR / f"{prompt}.jinja"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.jinja")))
        raise ValueError(f"judge prompt {prompt!r}: no file {path} (shipped: {shipped}, or a path to a .jinja file)")
    return path


@lru_cache(maxsize=None)
def _template(path: str) -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(path).parent)), autoescape=False,
                             undefined=jinja2.StrictUndefined)
    env.globals["letters"] = string.ascii_uppercase
    return env.get_template(Path(path).name)


def parse_score(reply: str | None, scale: int) -> float | None:
    """The judge's `Score: N` (the last one) as N / scale; None if absent or outside 0..scale."""
    if not reply:
        return None
    found = _SCORE.findall(reply)
    text = found[-1] if found else reply.strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return value / scale if 0 <= value <= scale else None


@dataclass
class JudgeItem:
    question: str
    prediction: str
    reference: str
    options: list = field(default_factory=list)
    images: list = field(default_factory=list)


class Judge:
    """`score_many(items) -> list[float | None]` in [0, 1]; `judge(question, prediction, reference)` for one."""

    def __init__(self, cfg: JudgeConfig, endpoint: ChatEndpoint | None = None):
        if not cfg.url and endpoint is None:
            raise ValueError("the judge needs judge.url (an OpenAI-compatible endpoint) and judge.model")
        self.cfg = cfg
        self.endpoint = endpoint or ChatEndpoint(
            cfg.url, cfg.model, api_key_env=cfg.api_key_env, timeout=cfg.timeout, max_retries=cfg.max_retries,
            concurrency=cfg.concurrency, rate_limit=cfg.rate_limit, cache_dir=cfg.cache_dir or None)
        self._template = _template(str(prompt_file(cfg.prompt)))
        self.asked = self.failed = 0
        self._lock = threading.Lock()

    @property
    def failure_rate(self) -> float:
        return self.failed / self.asked if self.asked else 0.0

    def describe(self) -> dict:
        return {**self.cfg.describe(), "url": self.endpoint.url, "asked": self.asked, "failed": self.failed,
                "failure_rate": self.failure_rate}

    def render(self, item: JudgeItem) -> str:
        return self._template.render(question=item.question, options=list(item.options or []),
                                     reference=item.reference, prediction=item.prediction, scale=self.cfg.scale).strip()

    def score_many(self, items: list[JudgeItem]) -> list[float | None]:
        conversations = [[user_message(self.render(it), it.images if self.cfg.images else ())] for it in items]
        replies = self.endpoint.chat_many(conversations, temperature=0.0, max_tokens=self.cfg.max_tokens)
        scores = []
        for reply in replies:
            score = parse_score(reply[0] if reply else None, self.cfg.scale)
            if reply and score is None:
                log.warning("judge reply has no score in 0..%d: %.200r", self.cfg.scale, reply[0])
            scores.append(score)
        with self._lock:
            self.asked += len(items)
            self.failed += sum(s is None for s in scores)
        return scores

    def __call__(self, question: str, prediction: str, reference: str) -> float | None:
        return self.score_many([JudgeItem(question, prediction, reference)])[0]


# -- calibration: agreement with exact match on closed questions
def _option_text(letter: str, options) -> str:
    i = string.ascii_uppercase.find(letter.upper())
    return f"{letter}. {options[i]}" if options and 0 <= i < len(options) else letter


def calibration_items(records: list[dict]) -> list[tuple[JudgeItem, bool]]:
    """(item, exact-match label) for every closed question. QA records give a right and a wrong candidate
    each; prediction rows (evaluation's predictions.jsonl) give the model's answer and the scorer's verdict."""
    from corpora.grading import grade

    out = []
    for r in records:
        kind, options = r.get("kind"), list(r.get("options") or [])
        if kind not in ("mcq", "yesno"):
            continue
        reference = _option_text(r["answer"], options) if kind == "mcq" else r["answer"]
        if "prediction" in r:
            candidates = [r.get("extracted") or r["prediction"]]
        elif kind == "mcq":
            wrong = string.ascii_uppercase[(string.ascii_uppercase.index(r["answer"]) + 1) % len(options)]
            candidates = [_option_text(r["answer"], options), _option_text(wrong, options)]
        else:
            candidates = [r["answer"], "no" if r["answer"] == "yes" else "yes"]
        for c in candidates:
            exact = grade(f"<answer>{c}</answer>", r["answer"], kind, options, template="nothink").correct
            out.append((JudgeItem(r["question"], c, reference, options, list(r.get("images") or [])), exact))
    return out


def calibrate(judge: Judge, records: list[dict]) -> dict:
    pairs = calibration_items(records)
    if not pairs:
        raise ValueError("no closed (mcq / yes-no) questions to calibrate on")
    scores = judge.score_many([item for item, _ in pairs])
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for s, exact in zip(scores, [e for _, e in pairs]):
        if s is not None:
            counts[("t" if (s >= 0.5) == exact else "f") + ("p" if s >= 0.5 else "n")] += 1
    scored = sum(counts.values())
    agree = (counts["tp"] + counts["tn"]) / scored if scored else None
    kappa = None
    if scored:  # Cohen's kappa: agreement beyond what the two label rates give by chance
        judge_yes, exact_yes = (counts["tp"] + counts["fp"]) / scored, (counts["tp"] + counts["fn"]) / scored
        chance = judge_yes * exact_yes + (1 - judge_yes) * (1 - exact_yes)
        kappa = (agree - chance) / (1 - chance) if chance < 1 else 1.0
    return {"n": len(pairs), "scored": scored, "agreement": agree, "kappa": kappa, "confusion": counts,
            "judge_failure_rate": (len(pairs) - scored) / len(pairs), "judge": judge.describe()}


def _read_records(path: str, limit: int | None) -> list[dict]:
    first = Path(path).read_text().lstrip().split("\n", 1)[0] if Path(path).is_file() else ""
    if first.startswith("{") and '"prediction"' in first:  # evaluation's predictions.jsonl
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    else:
        from corpora.readers import load_qa

        rows = list(load_qa(path))
    return rows[:limit] if limit else rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m corpora.judge", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("calibrate", help="the judge's agreement with exact match on closed questions (JSON)")
    c.add_argument("data", help="QA file (kind qa) or an evaluation predictions.jsonl")
    c.add_argument("--url", required=True, help="OpenAI-compatible endpoint of the judge")
    c.add_argument("--model", required=True, help="model name the endpoint serves")
    c.add_argument("--prompt", default="default", help="judge prompt name (corpora/prompts/judge) or .jinja path")
    c.add_argument("--scale", type=int, default=10)
    c.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    c.add_argument("--concurrency", type=int, default=8)
    c.add_argument("--timeout", type=float, default=60.0)
    c.add_argument("--limit", type=int, help="use only the first N records")
    c.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = JudgeConfig(url=args.url, model=args.model, prompt=args.prompt, scale=args.scale,
                          api_key_env=args.api_key_env, concurrency=args.concurrency, timeout=args.timeout)
        report = calibrate(Judge(cfg), _read_records(args.data, args.limit))
    except (ValueError, OSError) as e:
        print(f"python -m corpora.judge: error: {e}", file=sys.stderr)
        return 2
    if report["n"] and not report["scored"]:  # nothing was measured: an unreachable or wrong endpoint, not a result
        print(f"python -m corpora.judge: error: the judge at {args.url} (model {args.model}) scored none of "
              f"{report['n']} questions; check --url, --model and --api-key-env", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
