"""JSONL files: the one reader/writer every stage uses, with one policy for bad lines.

- `read` / `read_numbered`: finished files; a malformed line raises ValueError naming file:line and what to do.
- `write`: whole files, atomically (temp file + fsync + rename), so readers never see half a file.
- `append`: rows a stage adds as it goes (samples, scores, caches); flushed and fsynced per call.
- `read_resumable`: files a killed process may have been appending to. Only a torn last line (no
  trailing newline and not parseable) is dropped, with a warning, and cut from the file so the next
  append starts clean; a bad line anywhere else is corruption and raises like `read`.
Every row is a JSON object; blank lines are ignored.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

__all__ = ["read", "read_numbered", "write", "append", "read_resumable"]

_FIX = "fix or delete the file (the stage that wrote it rebuilds it)"


def _default(o: Any) -> Any:
    """Encode paths and numpy/torch scalars; anything else is a bug in the caller and raises."""
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if callable(getattr(o, "tolist", None)):  # numpy scalars and arrays, torch tensors
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _encode(rows: Iterable[dict]) -> str:
    """All rows as JSONL text (one line each); raises before anything is written."""
    return "".join(json.dumps(r, ensure_ascii=False, default=_default) + "\n" for r in rows)


def _parse(path: Path, i: int, raw: bytes, fix: str = _FIX) -> dict:
    """One line as a dict; ValueError naming `path:i` and the fix otherwise."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}:{i}: malformed JSONL line ({e}); {fix}") from e
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}; {fix}")
    return row


def _rows(path: Path, lines: list[bytes]) -> list[dict]:
    return [_parse(path, i, raw) for i, raw in enumerate(lines, 1) if raw.strip()]


def read_numbered(path: str | os.PathLike, fix: str = _FIX) -> list[tuple[int, dict]]:
    """(line number, row) for each non-blank line of a finished file; a UTF-8 byte-order mark at the start
    is accepted (files written by other tools, e.g. upstream benchmarks); errors as `read`, ending in `fix`."""
    path = Path(path)
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    return [(i, _parse(path, i, raw, fix)) for i, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]


def read(path: str | os.PathLike) -> list[dict]:
    """Rows of a finished JSONL file; a malformed line raises ValueError naming file and line."""
    return [row for _, row in read_numbered(path)]


def write(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Replace `path` with `rows` atomically; on any error the old file is left as it was."""
    path = Path(path)
    text = _encode(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def append(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Append one line per row, then flush and fsync (an unserialisable row appends nothing)."""
    path = Path(path)
    text = _encode(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        if text:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return path


def read_resumable(path: str | os.PathLike, *, repair: bool = True) -> list[dict]:
    """Rows of a file a killed process may have been appending to ([] when it does not exist).

    A torn last line (no trailing newline, not parseable) is dropped with a warning and, when `repair`,
    cut from the file; a complete last line lacking only its newline gets one. Any other bad line raises
    ValueError naming file and line. Pass repair=False to inspect a file without changing it."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    rows = _rows(path, lines)
    if not tail.strip():
        return rows
    try:
        rows.append(_parse(path, len(lines) + 1, tail))
        fix = b"\n"  # complete row, only its newline missing
    except ValueError:
        warnings.warn(f"{path}: dropping truncated final line {len(lines) + 1} (interrupted write); "
                      "it will be regenerated", stacklevel=2)
        fix = None
    if repair:
        with open(path, "r+b") as f:
            if fix is None:
                f.truncate(len(data) - len(tail))
            else:
                f.seek(0, os.SEEK_END)
                f.write(fix)
            f.flush()
            os.fsync(f.fileno())
    return rows
