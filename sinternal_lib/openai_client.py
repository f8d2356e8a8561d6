"""The one OpenAI-compatible chat client (stdlib urllib only), used by the API judge and the API teacher.

`chat_completion` POSTs to `<base_url>/chat/completions` under one retry policy: 408, 429 and 5xx
(honouring Retry-After, delta-seconds or HTTP-date), timeouts, connection errors and malformed 200
bodies (not JSON, or no choices[0].message.content) are retried up to `max_retries` times with
exponential backoff; every wait is capped at MAX_WAIT_S. 401/403, other 4xx, a missing or bad base URL
are fatal at once (`APIError.fatal`); auth errors name the env var that holds the key. A null content
is a served, empty reply (""), left to the caller's parser. The key goes only in the Authorization
header: it is redacted from server text and never logged, stored or put in an error message.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

MAX_WAIT_S = 120.0  # cap on any single wait, Retry-After or backoff
RETRY_STATUS = frozenset({408, 429})  # 4xx that are transient; every 5xx is too


class APIError(RuntimeError):
    """A chat request that failed for good. `status` is the HTTP status (None for network errors);
    `fatal` is True when retrying or moving on to the next item cannot help (auth, bad model, bad URL)."""

    def __init__(self, message: str, status: int | None = None, fatal: bool = False):
        super().__init__(message)
        self.status, self.fatal = status, fatal


class _Malformed(Exception):
    """A 200 reply whose body is not a chat completion (transient: proxies truncate, gateways send HTML)."""


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped; None if absent/unreadable."""
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), MAX_WAIT_S)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(when - time.time(), 0.0), MAX_WAIT_S)


def _parse(raw: bytes) -> tuple[str, dict[str, int]]:
    """(content, usage) from a 200 body; raises _Malformed when it is not a chat completion."""
    try:
        data = json.loads(raw.decode("utf-8"))
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise _Malformed(f"malformed reply ({type(e).__name__}): {raw[:120].decode('utf-8', 'replace')}") from None
    if content is not None and not isinstance(content, str):
        raise _Malformed(f"malformed reply: content is {type(content).__name__}, not text")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    counts = {}
    for k in ("prompt_tokens", "completion_tokens"):
        try:
            counts[k] = int(usage.get(k) or 0)
        except (TypeError, ValueError):
            counts[k] = 0
    return content or "", counts


def _fatal_message(code: int, url: str, detail: str, api_key: str | None, key_env: str | None) -> str:
    if code in (401, 403):
        where = key_env or "the API key"
        hint = f"check {where}" if api_key else f"no API key was sent; set {where}"
        return f"HTTP {code} from {url}: {hint} (server said: {detail})"
    return f"HTTP {code} from {url}: {detail} (check the model name and base URL)"


def chat_completion(base_url: str, api_key: str | None, model: str, messages: list[dict[str, str]],
                    timeout_s: float = 60, max_retries: int = 4, backoff_s: float = 1.0,
                    stats: dict[str, int] | None = None, key_env: str | None = None,
                    **gen: Any) -> tuple[str, dict[str, int]]:
    """One chat completion; returns (assistant text, usage dict with prompt/completion tokens).

    `gen` goes into the request body (temperature, max_tokens, ...). At most `max_retries` retries
    follow the first attempt; a wait is Retry-After when the server sends one, else
    backoff_s * 2**attempt, both capped at MAX_WAIT_S. `key_env` names the key's env var for auth
    error messages. If `stats` is given, its "requests" and "retries" counters are incremented.
    Raises APIError: `fatal=True` at once for configuration errors, else after the last retry.
    """
    if not base_url:
        raise APIError("no API base URL configured", fatal=True)
    url = base_url.rstrip("/") + "/chat/completions"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:  # would fail the same way on every try
        raise APIError(f"bad API base URL {base_url!r}: expected http(s)://host[:port]/path", fatal=True)
    body = json.dumps({"model": model, "messages": messages, **gen}).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    last, status = "", None
    for attempt in range(max_retries + 1):
        wait = min(backoff_s * (2 ** attempt), MAX_WAIT_S)
        if stats is not None:
            stats["requests"] = stats.get("requests", 0) + 1
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw = resp.read()
            return _parse(raw)
        except urllib.error.HTTPError as e:
            status = e.code
            try:
                detail = _redact(e.read().decode("utf-8", "replace")[:300], api_key)
            except (OSError, http.client.HTTPException):  # the error body itself was cut off
                detail = "(no readable body)"
            if e.code not in RETRY_STATUS and e.code < 500:
                raise APIError(_fatal_message(e.code, url, detail, api_key, key_env), status=e.code,
                               fatal=True) from None
            last = f"HTTP {e.code} from {url}: {detail}"
            ra = _retry_after(e.headers.get("Retry-After"))
            wait = ra if ra is not None else wait
        except _Malformed as e:
            last, status = f"{_redact(str(e), api_key)} from {url}", 200
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets, bad status lines
            last, status = f"network error calling {url}: {_redact(str(e) or type(e).__name__, api_key)}", None
        if attempt < max_retries:
            if stats is not None:
                stats["retries"] = stats.get("retries", 0) + 1
            time.sleep(wait)
    raise APIError(f"gave up after {max_retries + 1} attempts; last error: {last}", status=status)
