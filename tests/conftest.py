"""Shared pytest fixtures: the shared real-data folder, a tiny random model, a temp run folder.

Run: HF_HUB_OFFLINE=1 .venv/bin/pytest -q
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (`make test`) each worker gets its share of the cores, set before torch is imported and
    # inherited by the notebooks' kernels and launched jobs: two workers of 2 threads each on 2 cores ran the
    # suite no faster than one process (592 vs 610 s), one thread each in 346 s (docs/LOG.md, 2026-12-06, session 12).
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS: no affinity
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // _workers)))
REPO_ROOT = Path(__file__).resolve().parents[1]

HOW_TO_GET_DATA = (
    "real benchmark files not found: set SINTERNAL_SHARED_DATA to a folder holding them "
    "(docs/READING_GROUP.md, 'The optional benchmark data', names each file and its public source), "
    "or place that folder at ../shared/data beside the clone"
)


def _shared_data_dir() -> Path | None:
    env = os.environ.get("SINTERNAL_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    cand = REPO_ROOT.parent / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real public datasets; skips (with how to get it) where it is absent."""
    d = _shared_data_dir()
    if d is None:
        pytest.skip(HOW_TO_GET_DATA)
    return d


@pytest.fixture
def stand_in_notebook(tmp_path, monkeypatch):
    """Point the runner (`cli.NOTEBOOK_DIR`) at a folder whose only notebook, 01_diagnose, has the runner's
    parameters cell followed by `cells` (code strings; `before`: markdown shown above the parameters), so
    the real runner runs a stage cheaply."""
    import nbformat

    import sinternal_lib.cli as cli

    def make(*cells: str, before: tuple[str, ...] = ()) -> Path:
        nbdir = tmp_path / "nbs"
        nbdir.mkdir(exist_ok=True)
        nb = nbformat.v4.new_notebook()
        p = nbformat.v4.new_code_cell("recipe = 'x'  # r\nrun_name = None  # n\noverrides = {}  # o\nruns_root = None  # r")
        p.metadata["tags"] = ["parameters"]
        nb.cells = [*(nbformat.v4.new_markdown_cell(m) for m in before), p,
                    *(nbformat.v4.new_code_cell(c) for c in cells)]
        nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                       "language_info": {"name": "python"}}
        nbformat.write(nb, str(nbdir / "01_diagnose.ipynb"))
        monkeypatch.setattr(cli, "NOTEBOOK_DIR", nbdir)
        return nbdir

    return make
