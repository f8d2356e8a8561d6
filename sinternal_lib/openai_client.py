"""A tiny OpenAI-compatible chat client (stdlib only) shared by the API teacher and the API judge.

`chat_completion` POSTs to `<base_url>/chat/completions` with bounded retries: 429 (honouring
Retry-After), 5xx, timeouts and connection errors are retried with exponential backoff; other 4xx
(bad key, unknown model) fail at once. Failures raise `APIError` with a clear message. The API key is
sent only in the Authorization header; it is never logged, stored or put in an error message.
"""

from __future__ import annotations

import email.utils
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

MAX_RETRY_AFTER_S = 120.0


class APIError(RuntimeError):
    """A chat request that failed for good. `status` is the HTTP status (None for network errors);
    `fatal` is True for errors that retrying cannot fix (401/403/404/400: configuration)."""

    def __init__(self, message: str, status: int | None = None, fatal: bool = False):
        super().__init__(message)
        self.status, self.fatal = status, fatal


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (number of seconds or an HTTP date), capped; None if absent."""
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
            return min(max(when - time.time(), 0.0), MAX_RETRY_AFTER_S)
        except (TypeError, ValueError):
            return None


def chat_completion(base_url: str, api_key: str | None, model: str, messages: list[dict[str, str]],
                    timeout_s: float = 60, max_retries: int = 4, backoff_s: float = 1.0,
                    stats: dict[str, int] | None = None, **gen: Any) -> tuple[str, dict[str, int]]:
    """One chat completion; returns (assistant text, usage dict with prompt/completion tokens).

    `gen` is passed through in the request body (temperature, max_tokens, ...). At most
    `max_retries` retries follow the first attempt; waits are Retry-After when the server sends it,
    else backoff_s * 2**attempt. If `stats` is given, its "retries" counter is incremented per retry.
    """
    if not base_url:
        raise APIError("no API base URL configured", fatal=True)
    url = base_url.rstrip("/") + "/chat/completions"
    body = json.dumps({"model": model, "messages": messages, **gen}).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = ""
    for attempt in range(max_retries + 1):
        wait = backoff_s * (2 ** attempt)
        try:
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw = resp.read().decode("utf-8", "replace")
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                raise APIError(f"reply from {url} is not JSON: {_redact(raw[:200], api_key)}", status=200)
            try:
                text = data["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise APIError(f"malformed reply from {url}: no choices[0].message.content", status=200)
            usage = data.get("usage") or {}
            return text, {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                          "completion_tokens": int(usage.get("completion_tokens") or 0)}
        except urllib.error.HTTPError as e:
            detail = _redact(e.read().decode("utf-8", "replace")[:300], api_key)
            last = f"HTTP {e.code} from {url}: {detail}"
            if e.code != 429 and e.code < 500:
                raise APIError(last, status=e.code, fatal=True) from None
            if e.code == 429:
                ra = _retry_after(e.headers.get("Retry-After"))
                wait = ra if ra is not None else wait
            status = e.code
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
            last, status = f"network error calling {url}: {_redact(str(e), api_key)}", None
        if attempt < max_retries:
            if stats is not None:
                stats["retries"] = stats.get("retries", 0) + 1
            time.sleep(wait)
    raise APIError(f"gave up after {max_retries + 1} attempts; last error: {last}", status=status)
