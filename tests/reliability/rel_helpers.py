"""Shared pieces of the reliability suite: a scriptable fake OpenAI-compatible server on 127.0.0.1,
the small stage-02 recipe the suite runs, and file-tree hashing.

The fake server answers judge requests (rubric system prompt) and teacher requests (everything else)
with well-formed replies unless a `fault(kind, body)` callback returns a fault to inject: "timeout",
"r429" (Retry-After: 0), "r500", "truncated" (cut JSON), "nochoices" (empty choice list), "null" (content
null), "refusal" (the service model refuses), "html" (a 200 with an HTML body), "range" (rubric numbers
out of range), "r401" (bad key). Every request is counted
per kind and per fault, so tests can check that retries stay bounded.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

SECRET = "sk-RELIABILITY-7f3a9c-DO-NOT-LEAK"
TINY_RECIPE = "configs/tests/tiny.yaml"
# Stage 02 shrunk further: 6 prompts x 2 samples in batches of 4 (3 sampling batches, so a kill can
# land between batches), 8 new tokens, 3 held-out prompts.
SMALL_02 = {
    "build_data.num_harmful_prompts": 4, "build_data.num_benign_prompts": 2, "build_data.num_samples": 2,
    "build_data.max_new_tokens": 8, "build_data.batch_size": 4, "build_data.heldout_num_prompts": 2,
    "build_data.heldout_num_pairs": 2,
}
API_OVERRIDES = {"teacher.backend": "api", "teacher.api_model": "fake", "judge.backend": "api",
                 "judge.api_model": "fake", "judge.max_retries": 2, "teacher.max_retries": 2,
                 "judge.timeout_s": 5, "teacher.timeout_s": 5}
# Files whose bytes must match between an interrupted+resumed run and an uninterrupted one.
DATA_FILES = ("judged_self.jsonl", "verification/sinternal.jsonl", "verification/verdict_only.jsonl",
              "verification/critique_only.jsonl", "answer_centric.jsonl", "heldout_pairs.jsonl")
SAMPLE_FILES = ("samples_self.jsonl", "samples_heldout.jsonl")

JUDGE_OK = "refusal: 0\nconvincing: 3\nspecific: 3"
JUDGE_REFUSE = "refusal: 1\nconvincing: 1\nspecific: 1"


def judge_reply(user: str) -> str:
    """Rubric reply: a refusal for about half the answers (by hash, so mixed pairs exist), else JUDGE_OK."""
    return JUDGE_REFUSE if hashlib.sha256(user.encode()).digest()[0] % 2 else JUDGE_OK


def tree_hash(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (lock files included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def sorted_lines(path: Path) -> list[str]:
    return sorted(path.read_text(encoding="utf-8").splitlines())


class FakeAPI:
    """State of the fake server: counts, seen Authorization headers, and the fault callback."""

    def __init__(self, fault: Callable[[str, dict], str | None] | None = None, delay_s: float = 1.0) -> None:
        self.fault = fault
        self.delay_s = delay_s  # how long a "timeout" fault sleeps before answering
        self.counts: dict[str, int] = {}
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        self.url = ""

    def total(self, prefix: str = "") -> int:
        with self.lock:
            return sum(v for k, v in self.counts.items() if k.startswith(prefix))

    def bump(self, key: str) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1


def _make_handler(state: FakeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client gave up (timeout): nothing to do
                pass

        def _reply(self, text: str | None) -> None:
            body = {"choices": [{"message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
            self._send(200, json.dumps(body).encode())

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            system = body.get("messages", [{}])[0].get("content", "")
            kind = "judge" if system.startswith("You grade an AI assistant") else "teacher"
            with state.lock:
                state.auth.add(self.headers.get("Authorization", ""))
            fault = state.fault(kind, body) if state.fault else None
            state.bump(f"{kind}:{fault or 'ok'}")
            auth = self.headers.get("Authorization", "")
            if fault == "timeout":
                time.sleep(state.delay_s)
                self._reply(JUDGE_OK)
            elif fault == "r429":  # the body echoes the key: clients must not copy it anywhere
                self._send(429, json.dumps({"error": f"rate limited for {auth}"}).encode(), {"Retry-After": "0"})
            elif fault == "range":  # well-formed rubric, numbers out of range
                self._reply("refusal: 7\nconvincing: 9\nspecific: 0")
            elif fault == "r401":
                self._send(401, json.dumps({"error": f"invalid key {auth}"}).encode())
            elif fault == "r500":
                self._send(500, json.dumps({"error": f"internal error, key {auth}"}).encode())
            elif fault == "truncated":
                self._send(200, b'{"choices": [{"message": {"content": "refusal: 0\\nconvin')
            elif fault == "nochoices":
                self._send(200, b'{"choices": []}')
            elif fault == "null":
                self._reply(None)
            elif fault == "refusal":
                self._reply("I'm sorry, but I can't help with that request.")
            elif fault == "html":
                self._send(200, b"<html><body>502 Bad Gateway</body></html>")
            elif kind == "judge":
                user = body["messages"][-1]["content"]
                self._reply(judge_reply(user))
            else:
                user = body["messages"][-1]["content"]
                verdict = "safe" if len(user) % 2 else "unsafe"
                self._reply(f"The answer is assessed against the spec rules.\nVerdict: {verdict}")
    return Handler


@contextmanager
def fake_api(fault: Callable[[str, dict], str | None] | None = None, delay_s: float = 1.0) -> Iterator[FakeAPI]:
    """Run the fake server in a thread for the duration of the block; yields its state (`.url` ends in /v1)."""
    state = FakeAPI(fault, delay_s)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
