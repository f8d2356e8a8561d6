"""Executes every notebook (01-06) headless on the tiny test recipe through the runner (papermill), then
checks the run folder: executed copies, manifests, metrics.json sections and the report. The run goes through
benchmarks/gpu_pipeline.py's `run_pipeline` (on the CPU here), so the GPU check's pipeline path is the one tested.

Run: .venv/bin/pytest -q tests/notebooks
"""

import json
import sys
from pathlib import Path

import pytest

from sinternal_lib.cli import run_notebooks
from sinternal_lib.stages import STAGES

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_pipeline  # noqa: E402 - benchmarks/ is not a package

PIPELINE: dict = {}  # what gpu_pipeline.run_pipeline returned for the module's run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    res = PIPELINE.setdefault("res", gpu_pipeline.run_pipeline("cpu", root=str(root), run_name="nb-test"))
    return res["exit_code"], root / "nb-test", res["log"]


@pytest.mark.slow
def test_all_notebooks_execute_on_tiny_recipe(tiny_run):
    code, path, lines = tiny_run
    assert code == 0, "\n".join(lines)
    assert set(PIPELINE["res"]["stage_s"]) == set(STAGES), "gpu_pipeline's per-stage seconds miss a stage"
    for stage, info in STAGES.items():
        assert (path / "notebooks" / f"{info.notebook}.ipynb").is_file()
        assert (path / info.folder / "manifest.json").is_file(), f"stage {stage} did not finish"
    metrics = json.loads((path / "metrics.json").read_text())
    for section in ("diagnose", "build_data", "sft", "grpo", "evaluate", "self_verification", "timings", "attempts"):
        assert section in metrics, f"metrics.json lacks '{section}'"
    report = (path / "report.md").read_text()
    assert report.startswith("# SInternal report card")
    assert "## Beyond the paper" in report and "### Does the verifier follow a swapped spec?" in report
    assert "has not run in this run" not in report.split("## Beyond the paper")[1].split("## Stages")[0]


@pytest.mark.slow
def test_second_run_skips_finished_stages(tiny_run):
    code, path, _ = tiny_run
    assert code == 0
    lines: list[str] = []
    assert run_notebooks("configs/tests/tiny.yaml", "nb-test", root=str(path.parent), log=lines.append) == 0
    assert sum("skipped" in ln for ln in lines) == len(STAGES)


@pytest.mark.slow
def test_figures_render_inline(tiny_run):
    """Every notebook shows its figures in the executed copy (PNG outputs), not only as saved files."""
    code, path, _ = tiny_run
    assert code == 0
    for info in STAGES.values():
        nb = json.loads((path / "notebooks" / f"{info.notebook}.ipynb").read_text())
        pngs = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
        assert pngs >= 1, f"{info.notebook}: no figure rendered inline"


def _markdown_outputs(nb_path):
    nb = json.loads(nb_path.read_text())
    return ["".join(o["data"]["text/markdown"]) for c in nb["cells"] for o in c.get("outputs", [])
            if "text/markdown" in o.get("data", {})]


@pytest.mark.slow
def test_results_prose_equals_the_runs_numbers(tiny_run):
    """The sentences the notebooks show are the ones the run's metrics.json gives (narrative.py), not text
    written by hand for another run."""
    from sinternal_lib import narrative
    from sinternal_lib.config import load_recipe

    code, path, _ = tiny_run
    assert code == 0
    metrics = json.loads((path / "metrics.json").read_text())
    policy = load_recipe("configs/tests/tiny.yaml").model.policy
    nbs = path / "notebooks"
    assert narrative.diagnosis(metrics["diagnose"], policy) in _markdown_outputs(nbs / "01_diagnose.ipynb")
    assert narrative.sft_results(metrics["sft"]) in _markdown_outputs(nbs / "03_sft.ipynb")
    assert narrative.grpo_results(metrics["grpo"]) in _markdown_outputs(nbs / "04_grpo.ipynb")
    assert narrative.self_verification_results(metrics["self_verification"]) in \
        _markdown_outputs(nbs / "06_self_verification.ipynb")


@pytest.mark.slow
def test_training_stages_launched_across_two_processes_from_the_notebooks(tiny_run, tmp_path):
    """Notebooks 03 and 04 with `run.launcher: ddp` on 2 CPU processes (gloo), through papermill: the SInternal
    variant and the GRPO init from it train as launched jobs, the stages finish with their manifests and the
    same files as in one process, and a rerun skips them (tests/test_launch.py compares the losses with one
    process). One variant and one init: every launched job costs two interpreters importing torch and TRL,
    and the loop over the others is the one-process path's."""
    import shutil

    code, path, _ = tiny_run
    assert code == 0
    trained = {STAGES[s].folder for s in ("sft", "grpo", "evaluate", "self_verification")}
    shutil.copytree(path, tmp_path / "nb-ddp", ignore=lambda d, names: [
        n for n in names if d == str(path) and (n in trained or n == "notebooks" or n.startswith("report"))])
    over = {"run.launcher": "ddp", "run.num_processes": 2, "sft.variants": ["sinternal"], "grpo.inits": ["sinternal"]}
    lines: list[str] = []
    code = run_notebooks("configs/tests/tiny.yaml", "nb-ddp", only=["sft", "grpo"], overrides=over,
                         root=str(tmp_path), log=lines.append)
    assert code == 0, "\n".join(lines)
    ddp = tmp_path / "nb-ddp"
    for stage, arms in (("sft", ["sinternal"]), ("grpo", ["sinternal"])):
        folder = STAGES[stage].folder
        assert (ddp / folder / "manifest.json").is_file(), f"stage {stage} did not finish"
        for arm in arms:
            summary = json.loads((ddp / folder / arm / "summary.json").read_text())
            assert summary["launcher"] == {"launcher": "ddp", "num_processes": 2}, (stage, arm)
            one = {p.name for p in (path / folder / arm).iterdir() if p.name != "checkpoints"}
            assert one <= {p.name for p in (ddp / folder / arm).iterdir()}, (stage, arm)
    lines = []
    assert run_notebooks("configs/tests/tiny.yaml", "nb-ddp", only=["sft", "grpo"], overrides=over,
                         root=str(tmp_path), log=lines.append) == 0
    assert sum("skipped" in ln for ln in lines) == 2, lines
