"""Determinism and isolation.

- Two runs of stage 02 with the same recipe and seed on CPU write byte-identical data files and samples,
  equal manifest output hashes and equal `data` metrics (timings aside).
- Runs with different names never touch each other's files (the other run folder is hashed before/after).
- A second process starting a run that another process holds is refused with a clear message, writes
  nothing into that run folder, and the lock dies with its holder (a SIGKILLed runner leaves no stale lock).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from rel_helpers import DATA_FILES, SAMPLE_FILES, SMALL_02, TINY_RECIPE, tree_hash

from sinternal_lib.cli import run_notebooks
from sinternal_lib.config import REPO_ROOT, load_recipe
from sinternal_lib.runs import Run, open_run


def test_same_seed_same_bytes_and_runs_isolated(reference_02, tally):
    from sinternal_lib.build_data import run as run_build_data

    before = tree_hash(reference_02)
    run = open_run(load_recipe(TINY_RECIPE, dict(SMALL_02)), "again", reference_02.parent)
    run_build_data(run, log=lambda s: None)
    tally.fault()  # a second writer in the same runs root
    assert tree_hash(reference_02) == before  # the other run's files are untouched
    a, b = reference_02 / "02_build_data", run.path / "02_build_data"
    for f in DATA_FILES + SAMPLE_FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["output_hashes"] == mb["output_hashes"] and ma["config_hash"] == mb["config_hash"]
    ref_metrics = json.loads((reference_02 / "metrics.json").read_text())
    assert run.read_metrics()["build_data"] == ref_metrics["build_data"]
    assert set(run.read_metrics()) == set(ref_metrics)  # only "timings" values may differ


HOLDER = r"""
import sys, time
from sinternal_lib.config import load_recipe
from sinternal_lib.runs import Run
r = Run(load_recipe(sys.argv[1]), "busy", sys.argv[2])
r.acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_second_process_refused_and_lock_dies_with_holder(tmp_path, tally):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, TINY_RECIPE, str(tmp_path)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert holder.stdout.readline().strip() == "held"
        folder = tmp_path / "busy"
        (folder / "recipe.yaml").write_text("# the holder's recipe\n")
        before = tree_hash(folder)
        logs: list[str] = []
        rc = run_notebooks(TINY_RECIPE, "busy", only=["02"], overrides={"build_data.num_samples": 3},
                           root=str(tmp_path), log=logs.append)
        tally.fault()
        assert rc == 2 and "in use by another process" in logs[-1] and "busy" in logs[-1]
        assert tree_hash(folder) == before  # the refused runner wrote nothing into the held run
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    tally.fault()  # the holder was SIGKILLed while holding the lock
    r = Run(load_recipe(TINY_RECIPE), "busy", tmp_path)
    r.acquire()  # flock is released by the kernel when its holder dies: no stale lock to clean up
    r.release()
