"""The one JSONL module: atomic write, fsynced append, strict read, and the torn-tail policy of read_resumable.

Run: .venv/bin/pytest -q tests/test_jsonl.py
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from sinternal_lib import jsonl

ROWS = [{"a": 1}, {"b": "ü", "c": [1, 2.5, None]}, {"d": {"e": True}}]


def test_round_trip(tmp_path):
    p = jsonl.write(ROWS, tmp_path / "sub" / "x.jsonl")
    assert p == tmp_path / "sub" / "x.jsonl"
    assert jsonl.read(p) == ROWS
    assert p.read_text(encoding="utf-8").count("\n") == len(ROWS) and "ü" in p.read_text(encoding="utf-8")
    p.write_text('\n{"a": 1}\n   \n{"b": 2}\n\n')  # blank lines are ignored
    assert jsonl.read(p) == [{"a": 1}, {"b": 2}]
    assert jsonl.read(jsonl.write([], tmp_path / "empty.jsonl")) == []
    jsonl.write([{"p": Path("/x"), "n": np.float32(0.5), "v": np.arange(2)}], p)  # paths and numpy encode
    assert jsonl.read(p) == [{"p": "/x", "n": 0.5, "v": [0, 1]}]


def test_write_is_atomic_and_failed_write_keeps_old_file(tmp_path):
    p = jsonl.write(ROWS, tmp_path / "x.jsonl")
    old = p.read_bytes()
    jsonl.write(ROWS[:1], p)
    assert [f.name for f in tmp_path.iterdir()] == ["x.jsonl"]  # no temp file left behind
    jsonl.write(ROWS, p)

    def rows():  # fails mid-way, after a good row has been produced
        yield {"ok": 1}
        yield {"bad": object()}

    with pytest.raises(TypeError, match="object"):
        jsonl.write(rows(), p)
    assert p.read_bytes() == old
    assert [f.name for f in tmp_path.iterdir()] == ["x.jsonl"]


def test_append(tmp_path):
    p = tmp_path / "new" / "a.jsonl"
    jsonl.append(ROWS[:1], p)  # creates file and folder
    jsonl.append(ROWS[1:], p)
    jsonl.append([], p)
    assert jsonl.read(p) == ROWS
    with pytest.raises(TypeError):
        jsonl.append([{"x": 1}, {"y": object()}], p)
    assert jsonl.read(p) == ROWS  # an unserialisable batch appends nothing, not half a batch


@pytest.mark.parametrize("bad", [b'{"b": \n', b"[1, 2]\n", b"\xff\n"])
def test_malformed_middle_line_raises_with_file_and_line(tmp_path, bad):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n' + bad + b'{"c": 3}\n')
    for reader in (jsonl.read, jsonl.read_resumable):
        with pytest.raises(ValueError, match=re.escape(f"{p}:2") + ".*fix or delete the file"):
            reader(p)


def test_read_resumable_drops_torn_tail_truncates_file_and_append_continues(tmp_path):
    p = jsonl.write(ROWS, tmp_path / "s.jsonl")
    good = p.read_bytes()
    p.write_bytes(good + '{"e": "torn ü'.encode()[:-1])  # killed mid-write, even mid-character
    with pytest.raises(ValueError, match=re.escape(f"{p}:4")):
        jsonl.read(p)  # finished files get no leniency
    with pytest.warns(UserWarning, match=re.escape(str(p)) + ".*truncated final line 4.*regenerated"):
        assert jsonl.read_resumable(p, repair=False) == ROWS
    assert p.read_bytes() != good  # repair=False leaves the file alone
    with pytest.warns(UserWarning, match="truncated final line"):
        assert jsonl.read_resumable(p) == ROWS
    assert p.read_bytes() == good  # cut back to the last complete line
    jsonl.append([{"e": 5}], p)
    assert jsonl.read(p) == ROWS + [{"e": 5}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file: no warning, no change
        assert jsonl.read_resumable(p) == ROWS + [{"e": 5}]


def test_read_resumable_keeps_complete_last_line_without_newline(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"a": 1}\n{"b": 2}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert jsonl.read_resumable(p) == [{"a": 1}, {"b": 2}]
    jsonl.append([{"c": 3}], p)  # the missing newline was added first
    assert jsonl.read(p) == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert jsonl.read_resumable(tmp_path / "missing.jsonl") == []


def test_complete_but_invalid_last_line_with_newline_is_corruption(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"a": 1}\n{"b": \n')
    before = p.read_bytes()
    with pytest.raises(ValueError, match=re.escape(f"{p}:2")):
        jsonl.read_resumable(p)
    assert p.read_bytes() == before  # nothing cut on corruption
