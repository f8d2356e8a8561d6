"""Notebook tables read from stage files: the chat side-by-side redacts what the judge called unsafe."""

from __future__ import annotations

from sinternal_lib import jsonl, views


def test_side_by_side_redacts_unsafe_answers(tmp_path):
    for model, (text, label) in {"base": ("SECRET harmful steps", "unsafe"), "sinternal": ("I can't help.", "safe")}.items():
        jsonl.write([{"id": "h1", "prompt": "harmful?", "label": "harmful", "response": text, "judge_label": label}],
                    tmp_path / model / "chat_eval.jsonl")
    t = views.side_by_side(tmp_path, ["base", "sinternal"], n=1)
    assert t.loc[0, "base"].startswith("[redacted: unsafe completion") and "SECRET" not in t.to_string()
    assert t.loc[0, "sinternal"] == "I can't help."
    assert views.side_by_side(tmp_path, ["base"], n=1, show_unsafe=True).loc[0, "base"] == "SECRET harmful steps"
