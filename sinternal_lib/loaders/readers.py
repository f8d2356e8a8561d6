"""Row readers for benchmark files: CSV, JSONL and JSON, all yielding `Row` tuples.

Each row carries its 1-based data-row number and a location text ("<file> row N (line M)") that
error messages quote, so a malformed row is reported where the user can find it. UTF-8 BOMs and
CRLF line endings are accepted. `file_rows` picks the reader by suffix, turns decoding/parse
errors into ValueError naming the file, and checks the required columns.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from sinternal_lib import jsonl

Row = tuple[int, str, dict[str, Any]]  # (1-based data row, location text, fields)


def read_csv(path: Path) -> tuple[list[str], list[Row]]:
    """CSV rows with BOM/CRLF handled; location text carries the file line number."""
    # utf-8-sig drops a BOM so it cannot leak into the first header; newline="" keeps quoted newlines.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = [(i, f"{path} row {i} (line {reader.line_num})", dict(r)) for i, r in enumerate(reader, 1)]
    return header, rows


def read_jsonl(path: Path) -> tuple[list[str], list[Row]]:
    """One JSON object per line (through the kit's one JSONL reader); the header is the union of keys."""
    keys: dict[str, None] = {}  # a dict keeps first-seen key order
    rows: list[Row] = []
    for line, obj in jsonl.read_numbered(path, fix="correct the line or fetch a fresh copy of the benchmark file"):
        keys.update(dict.fromkeys(obj))
        rows.append((len(rows) + 1, f"{path} row {len(rows) + 1} (line {line})", obj))
    return list(keys), rows


def read_json(path: Path) -> tuple[list[str], list[Row], dict[str, Any]]:
    """A JSON list of objects, or a JBB artifact {parameters, jailbreaks: [...]}; returns its parameters too."""
    with open(path, encoding="utf-8-sig") as f:
        data = json.load(f)
    params: dict[str, Any] = {}
    if isinstance(data, dict):
        params = data.get("parameters") or {}
        data = data.get("jailbreaks")
        if data is None:
            raise ValueError(f"{path}: expected a list or a {{parameters, jailbreaks}} object")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of objects, got {type(data).__name__}")
    keys: dict[str, None] = {}
    for i, obj in enumerate(data, 1):
        if obj is not None and not isinstance(obj, dict):
            raise ValueError(f"{path} row {i}: expected a JSON object, got {type(obj).__name__}")
        keys.update(dict.fromkeys(obj or {}))
    return list(keys), [(i, f"{path} row {i}", obj or {}) for i, obj in enumerate(data, 1)], params


def file_rows(path: Path, required: tuple[str, ...]) -> tuple[list[Row], dict[str, Any]]:
    """(rows, file-level parameters) of one file; any read/parse failure is a ValueError naming it."""
    try:
        return _file_rows_unchecked(path, required)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e}); re-save the file as UTF-8") from e
    except (csv.Error, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from e


def _file_rows_unchecked(path: Path, required: tuple[str, ...]) -> tuple[list[Row], dict[str, Any]]:
    params: dict[str, Any] = {}
    if path.suffix == ".csv":
        header, rows = read_csv(path)
    elif path.suffix == ".jsonl":
        header, rows = read_jsonl(path)
    else:
        header, rows, params = read_json(path)
    for col in required:
        if rows and col not in header:  # an empty file has no header to check; it loads as zero rows
            raise ValueError(f"missing column {col!r} in {path}; found: {header}")
    return rows, params


def is_blank(v: Any) -> bool:
    """True for None or a whitespace-only string (an empty CSV cell, a JSON null)."""
    return v is None or (isinstance(v, str) and not v.strip())
