"""A client for any OpenAI-compatible `/v1/chat/completions` endpoint (`vllm serve`, `trl vllm-serve`, a hosted
API), shared by the judge reward, `evaluation.run --judge` and `recipes.distill`.

Built on httpx (already in the environment through huggingface_hub) rather than the `openai` package: we need
one POST route, and `openai` would add four packages (jiter, distro, sniffio, its own httpx pin) for it.
What a client library would not give us and is written here: a disk cache keyed by the request's hash (a rerun
costs nothing), a bound on requests in flight, a rate limit, and retries that end in None instead of raising --
a reward must never crash a training step.

The API key is read from an environment variable at request time and only ever placed in the Authorization
header: it is not part of the cache key, not logged, and never stored on the object.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import mimetypes
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from corpora.files import write_text_atomic

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 30.0


class EndpointError(ValueError):
    """A bad endpoint setting (URL, concurrency, ...): raised at construction, never during requests."""


def chat_url(url: str) -> str:
    """`http://host:8000`, `.../v1` or `.../v1/chat/completions` -> the chat-completions URL."""
    u = url.strip().rstrip("/")
    if not u.startswith(("http://", "https://")):
        raise EndpointError(f"endpoint URL must start with http:// or https://, got {url!r}")
    if u.endswith("/chat/completions"):
        return u
    return u + ("/chat/completions" if u.endswith("/v1") else "/v1/chat/completions")


def image_data_url(image) -> str:
    """A `data:` URL for an image file path or a PIL image (PIL images are sent as PNG)."""
    if isinstance(image, (str, Path)):
        mime = mimetypes.guess_type(str(image))[0]
        if mime and mime.startswith("image/"):
            return f"data:{mime};base64,{base64.b64encode(Path(image).read_bytes()).decode()}"
        from PIL import Image

        with Image.open(image) as im:
            image = im.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def user_message(text: str, images=()) -> dict:
    """One OpenAI user turn: the images first (as data URLs), then the text -- the order our prompts use."""
    parts = [{"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}] if parts else text}


def default_cache_dir() -> Path:
    # Same root as the registry ($PATHOR1_HOME, default ./runs); corpora may not import stages.registry.home.
    return Path(os.environ.get("PATHOR1_HOME", "runs")) / "cache" / "chat"


class RateLimiter:
    """At most `rate` request starts per second across threads (0 = unlimited)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


@dataclass
class EndpointStats:
    requests: int = 0     # HTTP requests sent (retries included)
    cache_hits: int = 0
    failures: int = 0     # calls that ended in None
    retries: int = 0


class ChatEndpoint:
    """`chat(messages, **params) -> list[str] | None`: the choices' texts, or None after bounded retries.

    `params` are sent as they are (temperature, max_tokens, n, seed, ...). `chat_many` runs at most
    `concurrency` requests at once, in input order. A successful reply is cached under
    `cache_dir/<hash[:2]>/<hash>.json`, the hash covering the URL, the model and the whole request body.
    """

    def __init__(self, url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 2, backoff: float = 0.5, concurrency: int = 8, rate_limit: float = 0.0,
                 cache_dir: str | Path | None = None, cache: bool = True, transport=None):
        self.url = chat_url(url)
        if not model:
            raise EndpointError("endpoint model name is empty (the `model` field of the request)")
        if concurrency < 1 or max_retries < 0 or timeout <= 0 or rate_limit < 0 or backoff < 0:
            raise EndpointError(f"need concurrency >= 1, max_retries >= 0, timeout > 0, rate_limit >= 0, backoff >= 0; "
                                f"got {concurrency}, {max_retries}, {timeout}, {rate_limit}, {backoff}")
        self.model, self.api_key_env, self.timeout = model, api_key_env, timeout
        self.max_retries, self.backoff, self.concurrency = max_retries, backoff, concurrency
        self.cache_dir = (Path(cache_dir) if cache_dir else default_cache_dir()) if cache else None
        self.stats = EndpointStats()
        self._limiter = RateLimiter(rate_limit)
        self._lock = threading.Lock()
        self._warned: set[str] = set()  # problems already logged (_warn)
        self._client = httpx.Client(timeout=timeout, transport=transport,
                                    limits=httpx.Limits(max_connections=concurrency))

    def describe(self) -> dict:
        """What may be written to a manifest or metrics file: never the key, only the variable's name."""
        return {"url": self.url, "model": self.model, "api_key_env": self.api_key_env}

    # -- cache
    def request_key(self, body: dict) -> str:
        blob = json.dumps({"url": self.url, "body": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_file(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def _cached(self, key: str) -> list[str] | None:
        f = self._cache_file(key)
        if f is None or not f.is_file():
            return None
        try:
            return list(json.loads(f.read_text())["choices"])
        except (ValueError, KeyError, TypeError):
            return None  # a damaged entry is asked again and overwritten

    def _store(self, key: str, choices: list[str]) -> None:
        f = self._cache_file(key)
        if f is None:
            return
        f.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(f, json.dumps({"model": self.model, "choices": choices}))  # never half an entry

    # -- requests
    def _headers(self) -> dict:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _warn(self, message: str, *args) -> None:
        """Each distinct problem once: an unreachable endpoint is one warning, not one per question asked."""
        text = message % args
        with self._lock:
            seen = text in self._warned
            self._warned.add(text)
        log.log(logging.DEBUG if seen else logging.WARNING, text)

    def _post(self, body: dict) -> list[str] | None:
        for attempt in range(self.max_retries + 1):
            self._limiter.wait()
            with self._lock:
                self.stats.requests += 1
            retry_after = None
            try:
                reply = self._client.post(self.url, json=body, headers=self._headers())
            except httpx.HTTPError as e:  # timeouts and connection errors: worth another try
                problem = f"{type(e).__name__}"
            else:
                if reply.status_code == 200:
                    try:
                        return [c["message"]["content"] or "" for c in reply.json()["choices"]]
                    except (ValueError, KeyError, TypeError, IndexError):
                        self._warn("endpoint %s: malformed reply (not an OpenAI chat completion)", self.url)
                        return None
                problem = f"HTTP {reply.status_code}"
                if reply.status_code not in RETRY_STATUS:
                    self._warn("endpoint %s: %s, not retried", self.url, problem)
                    return None
                retry_after = reply.headers.get("retry-after")
            if attempt == self.max_retries:
                self._warn("endpoint %s: %s after %d attempts, giving up", self.url, problem, attempt + 1)
                return None
            with self._lock:
                self.stats.retries += 1
            delay = self.backoff * 2 ** attempt * random.uniform(0.5, 1.0)
            if retry_after and retry_after.replace(".", "", 1).isdigit():
                delay = max(delay, float(retry_after))
            log.info("endpoint %s: %s, retry %d in %.2fs", self.url, problem, attempt + 1, min(delay, MAX_BACKOFF_S))
            time.sleep(min(delay, MAX_BACKOFF_S))
        return None

    def chat(self, messages: list[dict], **params) -> list[str] | None:
        body = {"model": self.model, "messages": messages, **params}
        key = self.request_key(body)
        cached = self._cached(key)
        if cached is not None:
            with self._lock:
                self.stats.cache_hits += 1
            return cached
        choices = self._post(body)
        if choices is None:
            with self._lock:
                self.stats.failures += 1
            return None
        self._store(key, choices)
        return choices

    def chat_many(self, conversations: list[list[dict]], **params) -> list[list[str] | None]:
        if len(conversations) <= 1 or self.concurrency == 1:
            return [self.chat(m, **params) for m in conversations]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda m: self.chat(m, **params), conversations))

    def close(self) -> None:
        self._client.close()
