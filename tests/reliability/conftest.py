"""Reliability suite fixtures and the result collector behind benchmarks/reliability_summary.py.

Tests declare what they exercised through the `tally` fixture: `tally.fault(n)` (faults injected:
kills, corruptions, failing responses), `tally.inputs(n)` (hostile or malformed inputs tried),
`tally.scanned(files, leaks)` (secret scan). A fault or input counts as survived / handled only when
its test passes. With $SINTERNAL_RELIABILITY_JSON set, every test's outcome, duration and tallies are
written there at the end of the session.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rel_helpers import SMALL_02, TINY_RECIPE  # noqa: E402

REPORT_ENV = "SINTERNAL_RELIABILITY_JSON"
_RESULTS: dict[str, dict] = {}


class Tally:
    """Counters one test fills in; read by the report hook."""

    def __init__(self) -> None:
        self.faults = 0
        self.bad_inputs = 0
        self.files_scanned = 0
        self.leaks = 0
        self.notes: dict[str, object] = {}

    def note(self, key: str, value: object) -> None:
        """A measured value worth reporting (e.g. a loss difference after resume)."""
        self.notes[key] = value

    def fault(self, n: int = 1) -> None:
        self.faults += n

    def inputs(self, n: int = 1) -> None:
        self.bad_inputs += n

    def scanned(self, files: int, leaks: int) -> None:
        self.files_scanned += files
        self.leaks += leaks


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Tally:
    t = Tally()
    request.node._rel_tally = t
    return t


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        t = getattr(item, "_rel_tally", None) or Tally()
        _RESULTS[item.nodeid] = {
            "part": Path(str(item.fspath)).stem.removeprefix("test_"),
            "outcome": ("xfailed" if rep.skipped else "xpassed") if hasattr(rep, "wasxfail") else rep.outcome,
            "duration_s": round(rep.duration, 2), "faults": t.faults, "bad_inputs": t.bad_inputs,
            "files_scanned": t.files_scanned, "leaks": t.leaks, "notes": t.notes,
        }
    elif rep.when == "teardown" and not rep.passed and item.nodeid in _RESULTS:
        _RESULTS[item.nodeid]["outcome"] = "failed"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(REPORT_ENV)
    if path and _RESULTS:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"finished_at": time.time(), "exitstatus": int(exitstatus),
                                          "tests": _RESULTS}, indent=1) + "\n")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch):
    """One torch thread here and in child processes / kernels: on a busy 2-core machine, two threads
    made the tiny model's sampling 15x slower (lock contention). Restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference_02(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted stage-02 run of the small tiny recipe (in process); returns its run folder."""
    import torch

    from sinternal_lib.build_data import run as run_build_data

    torch.set_num_threads(1)
    from sinternal_lib.config import load_recipe
    from sinternal_lib.runs import open_run

    root = tmp_path_factory.mktemp("ref_runs")
    run = open_run(load_recipe(TINY_RECIPE, dict(SMALL_02)), "reference", root)
    run_build_data(run, log=lambda s: None)
    return run.path


@pytest.fixture
def ref_copy(reference_02: Path, tmp_path: Path) -> Path:
    """A private copy of the reference run folder (tests that corrupt files work on this)."""
    dst = tmp_path / "runs" / "reference"
    shutil.copytree(reference_02, dst)
    return dst
