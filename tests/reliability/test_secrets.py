"""Secrets: API keys come from env vars and must appear in no file a run writes.

Stage 02 runs through the real runner (`cli.run_notebooks(..., only=["02"])`, papermill, executed
notebook) with teacher.backend=api and judge.backend=api against the fake server, both keys set to a
distinctive value. The server injects faults whose error bodies echo the Authorization header (429s,
a 500, a service refusal), so error paths are exercised too. Then every file under the run folder
(executed notebook, manifest, env.json, recipe.yaml, metrics, judge cache, data files) and the runner's
log are scanned for the key. The same test then corrupts the stage's manifest and reruns the runner:
it must say so, redo the stage (not trust it), end complete, and still leak nothing; a third call skips.
"""

from __future__ import annotations

import json

import pytest
from rel_helpers import API_OVERRIDES, SECRET, SMALL_02, TINY_RECIPE, fake_api

from sinternal_lib.cli import run_notebooks
from sinternal_lib.config import load_recipe
from sinternal_lib.runs import Run, stage_for


pytestmark = pytest.mark.slow  # executes notebook 02 twice through the runner


def _scan(folder, extra: str) -> tuple[int, list[str]]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    hits = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    return len(files), hits + (["runner log"] if SECRET in extra else [])


def test_api_keys_never_written_by_a_run(tmp_path, monkeypatch, tally):
    plan = {"judge": ["r429", "r429", "refusal"], "teacher": ["r500", "refusal"]}

    def fault(kind, body):
        return plan[kind].pop(0) if plan[kind] else None

    logs: list[str] = []
    overrides = {**SMALL_02, **API_OVERRIDES}
    with fake_api(fault) as srv:
        for who in ("TEACHER", "JUDGE"):
            monkeypatch.setenv(f"SINTERNAL_{who}_API_KEY", SECRET)
            monkeypatch.setenv(f"SINTERNAL_{who}_BASE_URL", srv.url)
        rc = run_notebooks(TINY_RECIPE, "secret", only=["02"], overrides=overrides, root=str(tmp_path), log=logs.append)
        assert rc == 0, "\n".join(logs)
        first = dict(srv.counts)
        tally.fault(sum(v for k, v in first.items() if not k.endswith(":ok")))
        run = Run(load_recipe(TINY_RECIPE, overrides), "secret", tmp_path)
        st = stage_for(run, "build_data")
        assert st.is_complete() and (run.path / "notebooks" / "02_build_data.ipynb").is_file()
        assert srv.auth == {f"Bearer {SECRET}"}  # the key really was used, in the header only
        data = run.read_metrics()["build_data"]
        teacher = data["selection"]["teacher"]
        assert teacher["requests"] == srv.total("teacher") and teacher["retries"] == 1
        assert teacher["no_verdict"] == 1 and data["funnel"]["ignored_no_label"] >= 1  # counted, not scored
        n, leaks = _scan(run.path, "\n".join(logs))
        tally.scanned(n, len(leaks))
        assert not leaks, leaks

        # a corrupt manifest: the runner names it, redoes the stage, and still writes no key
        st.manifest_path.write_text("{half a manifest")
        tally.fault()
        logs.clear()
        assert run_notebooks(TINY_RECIPE, "secret", only=["02"], overrides=overrides, root=str(tmp_path),
                             log=logs.append) == 0, "\n".join(logs)
        text = "\n".join(logs)
        assert "manifest.json is corrupt" in text and "redoing the stage" in text and " done in " in text
        assert stage_for(run, "build_data").is_complete()
        assert json.loads(st.manifest_path.read_text())["config"]["judge"]["backend"] == "api"
        n, leaks = _scan(run.path, text)
        tally.scanned(n, len(leaks))
        assert not leaks, leaks
        logs.clear()
        assert run_notebooks(TINY_RECIPE, "secret", only=["02"], overrides=overrides, root=str(tmp_path),
                             log=logs.append) == 0
        assert "skipped" in "\n".join(logs)
