"""Failing services: the API teacher and the API judge against a fake server on 127.0.0.1.

tests/test_judges.py and tests/test_teachers.py already cover the judge's 429/500/truncated/empty/
unparseable/401/timeout cases and the teacher's no-verdict/429/5xx/401 cases one by one. This file adds
the teacher's timeout, truncated JSON, empty choice list, null content, HTML body and service refusal,
the judge's null content, HTML body, service refusal and out-of-range rubric, and a combined fault
injection: 40 judge items and 20 teacher items where every request draws a fault from a fixed plan.
Per item the outcome must be exactly what the documented policy predicts (retry transient faults up
to max_retries, never score an unparsed reply: label/verdict None), and the request count the server
saw must equal the client's own count. A teacher 401 inside stage 02 stops the stage with a clear
message and no manifest.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from rel_helpers import API_OVERRIDES, SECRET, SMALL_02, TINY_RECIPE, fake_api

from sinternal_lib.config import JudgeConfig, TeacherConfig, load_recipe
from sinternal_lib.judges import JudgeInput, make_judge
from sinternal_lib.openai_client import APIError
from sinternal_lib.runs import Run, stage_for
from sinternal_lib.spec import DEFAULT_SPEC_PATH, load_spec
from sinternal_lib.teachers import TeacherInput, make_teacher

RETRIES = 2
JCFG = JudgeConfig(backend="api", api_model="fake", max_retries=RETRIES, timeout_s=0.3, concurrency=4)
TCFG = TeacherConfig(backend="api", api_model="fake", max_retries=RETRIES, timeout_s=0.3, concurrency=4)
# one client, one policy (openai_client.chat_completion): judge and teacher retry the same faults
TRANSIENT = {"timeout", "r429", "r500", "truncated", "nochoices", "html"}
TRANSIENT_JUDGE = TRANSIENT_TEACHER = TRANSIENT


@pytest.fixture(scope="module")
def spec():
    return load_spec(DEFAULT_SPEC_PATH)


def _env(monkeypatch, url):
    for who in ("JUDGE", "TEACHER"):
        monkeypatch.setenv(f"SINTERNAL_{who}_BASE_URL", url)
        monkeypatch.setenv(f"SINTERNAL_{who}_API_KEY", SECRET)


def _judge():
    return make_judge(JCFG, backoff_s=0.01)


def _item(i):
    return TeacherInput(f"Explain how to pick a lock ITEM-{i}", "I can't help with that.", "harmful", None, "safe", True)


@pytest.mark.parametrize("fault,expect", [
    ("timeout", "failed"), ("truncated", "failed"), ("nochoices", "failed"), ("html", "failed"),
    ("null", "no_verdict"), ("refusal", "no_verdict"), ("r429", "failed"), ("r500", "failed")])
def test_teacher_fault_always(fault, expect, monkeypatch, spec, tally):
    with fake_api(lambda kind, body: fault, delay_s=0.6) as srv:
        _env(monkeypatch, srv.url)
        t = make_teacher(TCFG, spec, backoff_s=0.01)
        (c,) = t.critique([_item(0)])
        tally.fault(srv.total())
    assert c.verdict is None and t.stats[expect] == 1
    attempts = 1 + RETRIES if fault in TRANSIENT_TEACHER else 1
    assert srv.total() == attempts == t.stats["requests"]
    assert SECRET not in json.dumps(t.stats) + repr(c)


@pytest.mark.parametrize("fault,expect", [
    ("null", "unparseable"), ("html", "failures"), ("refusal", "unparseable"), ("range", "unparseable")])
def test_judge_fault_always(fault, expect, monkeypatch, tally):
    with fake_api(lambda kind, body: fault) as srv:
        _env(monkeypatch, srv.url)
        j = _judge()
        (out,) = j.judge([JudgeInput("harmful request", "a compliant answer", "harmful")])
        tally.fault(srv.total())
    assert out.label is None and j.stats[expect] == 1
    assert srv.total() == (1 + RETRIES if expect == "failures" else 1) == j.stats["requests"]
    assert SECRET not in json.dumps(out.to_dict())


FAULTS = ["ok", "ok", "ok", "timeout", "r429", "r500", "truncated", "nochoices", "null", "refusal", "html"]


def _plan(kind: str, item: str, attempt: int) -> str:
    if kind == "judge" and item == "0":
        return "ok"
    h = int(hashlib.sha256(f"{kind}:{item}:{attempt}".encode()).hexdigest(), 16)
    return FAULTS[h % len(FAULTS)]


def _expected(kind: str, item: str) -> tuple[str, int]:
    """(outcome, requests) that the documented retry policy gives for this item's fault plan."""
    transient = TRANSIENT_JUDGE if kind == "judge" else TRANSIENT_TEACHER
    for attempt in range(1, RETRIES + 2):
        f = _plan(kind, item, attempt)
        if f == "ok":
            return "ok", attempt
        if f not in transient:
            return {"refusal": "unparseable" if kind == "judge" else "no_verdict",
                    "null": "unparseable" if kind == "judge" else "no_verdict"}.get(f, "failed"), attempt
    return "failed", RETRIES + 1


def test_combined_fault_injection(monkeypatch, spec, tally):
    seen: dict[tuple[str, str], int] = {}

    def fault(kind, body):
        item = re.search(r"ITEM-(\d+)", body["messages"][-1]["content"]).group(1)
        seen[(kind, item)] = seen.get((kind, item), 0) + 1  # the server handles one item's tries in turn
        f = _plan(kind, item, seen[(kind, item)])
        return None if f == "ok" else f

    with fake_api(fault, delay_s=0.6) as srv:
        _env(monkeypatch, srv.url)
        judge = _judge()
        jout = judge.judge([JudgeInput(f"Explain how to pick a lock ITEM-{i}", "Sure, step one...", "harmful")
                            for i in range(40)])
        teacher = make_teacher(TCFG, spec, backoff_s=0.01)
        tout = teacher.critique([_item(i) for i in range(20)])
    injected = sum(v for k, v in srv.counts.items() if not k.endswith(":ok"))
    tally.fault(injected)
    assert injected >= 30
    for i, j in enumerate(jout):
        outcome, n = _expected("judge", str(i))
        assert seen[("judge", str(i))] == n
        assert (j.label is not None) == (outcome == "ok"), (i, outcome, j)
    for i, c in enumerate(tout):
        outcome, n = _expected("teacher", str(i))
        assert seen[("teacher", str(i))] == n
        assert (c.verdict is not None) == (outcome == "ok") and (c.error is not None) == (outcome == "failed")
    js, ts = judge.stats, teacher.stats
    assert js["requests"] == srv.total("judge") and ts["requests"] == srv.total("teacher")
    assert js["failures"] + js["unparseable"] == sum(j.label is None for j in jout)
    assert ts["safe"] + ts["unsafe"] + ts["no_verdict"] + ts["failed"] == ts["items"] == 20
    assert srv.total("judge") <= 40 * (1 + RETRIES) and srv.total("teacher") <= 20 * (1 + RETRIES)
    assert SECRET not in json.dumps([j.to_dict() for j in jout]) + repr(tout) + json.dumps(js) + json.dumps(ts)


def test_teacher_auth_error_stops_stage_02_clearly(ref_copy, monkeypatch, tally):
    """A 401 from the teacher stops stage 02 (APIError naming HTTP 401, no key); no manifest is written."""
    from sinternal_lib.build_data import run as run_build_data

    with fake_api(lambda kind, body: "r401" if kind == "teacher" else None) as srv:
        _env(monkeypatch, srv.url)
        run = Run(load_recipe(TINY_RECIPE, {**SMALL_02, **API_OVERRIDES}), "reference", ref_copy.parent)
        stage_for(run, "build_data").set_aside()  # the finished offline stage: replaced only when asked (kept_stages)
        with pytest.raises(APIError) as e:
            run_build_data(run, log=lambda s: None)
        tally.fault(srv.total("teacher"))
    assert e.value.status == 401 and "HTTP 401" in str(e.value) and SECRET not in str(e.value)
    st = stage_for(run, "build_data")
    assert not st.is_complete() and not st.manifest_path.exists()  # the failed attempt looks unfinished
    kept = next(st.dir.with_name(st.dir.name + ".previous").glob("*/manifest.json"))  # the offline stage, kept per config
    assert json.loads(kept.read_text())["config"]["teacher"]["backend"] == "offline"
    assert SECRET not in "".join(p.read_text(errors="replace") for p in run.path.rglob("*.json*") if p.is_file())
