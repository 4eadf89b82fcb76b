"""A loopback OpenAI-compatible stub (127.0.0.1 only) for the endpoint, judge and distill tests.

The request's `model` field picks the behaviour, so one server serves every case:
  ok         -> "Matches. Score: 8" (or `reply` set on the server)
  slow       -> sleeps `slow_s` before answering (timeouts)
  malformed  -> a reply with no score
  notjson    -> HTTP 200 with a body that is not JSON
  flaky      -> HTTP 503 for the first `flaky_failures` requests, then ok
  busy       -> sleeps `busy_s` and records how many requests were in flight at once
  unauthorised -> HTTP 401
  teacher    -> `teacher(body) -> list[str]` chooses the choices (n of them); `serve_model(path)` makes one that
                answers with a real checkpoint (the tiny VLM)
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubServer:
    def __init__(self):
        self.requests: list[dict] = []  # {"headers": {...}, "body": {...}}
        self.reply = "Matches the reference. Score: 8"
        self.slow_s, self.busy_s, self.flaky_failures = 2.0, 0.15, 2
        self.teacher = None
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append({"headers": dict(self.headers), "body": body})
                    count = len(server.requests)
                server.handle(self, body, count)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def _send(self, h, status: int, payload) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    @staticmethod
    def completion(texts) -> dict:
        return {"id": "x", "object": "chat.completion", "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)]}

    def handle(self, h, body, count) -> None:
        model = body["model"]
        if model == "slow":
            time.sleep(self.slow_s)
        if model == "busy":
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            time.sleep(self.busy_s)
            with self._lock:
                self.in_flight -= 1
        if model == "notjson":
            return self._send(h, 200, b"<html>gateway</html>")
        if model == "unauthorised":
            return self._send(h, 401, {"error": "bad key"})
        if model == "flaky" and count <= self.flaky_failures:
            return self._send(h, 503, {"error": "overloaded"})
        if model == "malformed":
            return self._send(h, 200, self.completion(["I think it is roughly right."]))
        if model == "teacher":
            return self._send(h, 200, self.completion(self.teacher(body)))
        self._send(h, 200, self.completion([self.reply] * int(body.get("n", 1))))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_model(path):
    """A `teacher(body)` for StubServer that answers with a real checkpoint (the tiny VLM): the OpenAI messages'
    data-URL images are decoded, the turn goes through the model's chat template, `n` samples are drawn."""
    import base64
    import io

    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(path))
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(str(path)).eval()
    lock = threading.Lock()  # one generation at a time: the server is threaded

    def teacher(body):
        [message] = body["messages"]
        parts = message["content"] if isinstance(message["content"], list) else [{"type": "text", "text": message["content"]}]
        images = [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))).convert("RGB")
                  for p in parts if p["type"] == "image_url"]
        content = [{"type": "image"} if p["type"] == "image_url" else p for p in parts]
        text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        n = int(body.get("n", 1))
        inputs = processor(text=[text] * n, images=images * n or None, padding=True, return_tensors="pt")
        with lock, torch.inference_mode():
            torch.manual_seed(int(body.get("seed", 0)))
            out = model.generate(**inputs, do_sample=True, temperature=body.get("temperature", 1.0), top_k=0,
                                 top_p=body.get("top_p", 1.0), max_new_tokens=body.get("max_tokens", 64),
                                 pad_token_id=processor.tokenizer.pad_token_id)
        return [processor.tokenizer.decode(row, skip_special_tokens=True).strip()
                for row in out[:, inputs["input_ids"].shape[1]:]]

    return teacher
