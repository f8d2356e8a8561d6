"""Notebook hygiene: committed notebooks equal their sources, carry no outputs, have one parameters
cell of plain literals that papermill can read, and no later cell reassigns a parameter; the runner
names the failing notebook and cell and keeps the partial copy.

Run: .venv/bin/pytest -q tests/test_notebooks.py
"""

import ast
import json

import nbformat
import papermill as pm
import pytest

from sinternal_lib.cli import NOTEBOOK_DIR, run_notebooks
from sinternal_lib.notebooks import build_notebook
from sinternal_lib.stages import STAGES

SOURCES = sorted((NOTEBOOK_DIR / "src").glob("[0-9][0-9]_*.py"))


def parameter_names(nb: nbformat.NotebookNode) -> list[str]:
    """Names assigned in the `parameters` cell; raises if it holds anything but `name = literal`."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected exactly one cell tagged 'parameters', found {len(cells)}")
    names = []
    for node in ast.parse(cells[0].source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"parameters cell line {node.lineno}: only `name = literal` is allowed")
        ast.literal_eval(node.value)  # raises ValueError for anything that is not a plain literal
        names.append(node.targets[0].id)
    return names


def reassigned_parameters(nb: nbformat.NotebookNode) -> list[str]:
    """Parameter names assigned again in any later cell (they would silently beat papermill's values)."""
    names = set(parameter_names(nb))
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    bad = []
    for c in nb.cells[idx + 1:]:
        if c.cell_type != "code" or "injected-parameters" in c.get("metadata", {}).get("tags", []):
            continue
        for node in ast.walk(ast.parse(c.source)):
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            elif isinstance(node, (ast.For, ast.comprehension)):
                targets = [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and n.id in names:
                        bad.append(n.id)
    return sorted(set(bad))


def test_every_stage_has_a_notebook_source():
    assert [s.stem for s in SOURCES] == [info.notebook for info in STAGES.values()]


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_matches_source_and_has_no_outputs(src):
    committed = json.loads((NOTEBOOK_DIR / f"{src.stem}.ipynb").read_text())
    built = json.loads(json.dumps(build_notebook(src)))
    assert committed == built, f"run `python -m sinternal_lib build-notebooks` after editing {src.name}"
    assert not any(c.get("outputs") for c in committed["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_parameters_cell_is_plain_and_not_reassigned(src):
    nb = nbformat.read(str(NOTEBOOK_DIR / f"{src.stem}.ipynb"), as_version=4)
    names = parameter_names(nb)
    assert {"recipe", "run_name", "overrides", "runs_root"} <= set(names)
    assert reassigned_parameters(nb) == []
    inspected = pm.inspect_notebook(str(NOTEBOOK_DIR / f"{src.stem}.ipynb"))
    assert set(inspected) == set(names), "papermill could not parse every parameter line"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and all(k in first.source for k in ("What this shows", "Inputs", "Outputs", "Runtime"))
    assert "## Reading group" in nb.cells[-1].source or any("## Reading group" in c.source for c in nb.cells[-2:])


def test_reassignment_is_detected():
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("recipe = 'x'  # r\nseed = 1  # s")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("seed = 2\nfor recipe in []: pass")]
    assert reassigned_parameters(nb) == ["recipe", "seed"]
    bad = nbformat.v4.new_code_cell("seed = 1 + 1")
    bad.metadata["tags"] = ["parameters"]
    nb.cells = [bad]
    with pytest.raises(ValueError):
        parameter_names(nb)


def test_runner_failure_names_notebook_and_cell_and_keeps_copy(tmp_path, stand_in_notebook):
    # A real notebook that fails in its third cell, run by the real runner.
    stand_in_notebook("raise RuntimeError('boom here')", before=("# t",))
    lines: list[str] = []
    code = run_notebooks("configs/tests/tiny.yaml", "fail", only=["01"], root=str(tmp_path / "runs"), log=lines.append)
    assert code == 1
    msg = "\n".join(lines)
    assert "01_diagnose" in msg and "FAILED" in msg and "cell" in msg and "boom here" in msg
    kept = tmp_path / "runs" / "fail" / "notebooks" / "01_diagnose.ipynb"
    assert kept.is_file() and "boom here" in kept.read_text()


HOSTED = (NOTEBOOK_DIR / "src" / "_hosted_install.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_first_code_cell_is_the_hosted_install_cell(src):
    first = next(c for c in build_notebook(src).cells if c.cell_type == "code")
    assert first.source == HOSTED.rstrip("\n") and first.metadata["tags"] == ["hosted-install"]


def _run_install_cell(tmp_path, env_extra, block_kit=False):
    import os
    import subprocess
    import sys

    code = ("import sys, os\n" + ("sys.modules['sinternal_lib'] = None\n" if block_kit else "")
            + "before = (os.getcwd(), list(sys.path))\n" + HOSTED
            + "\nprint('unchanged' if (os.getcwd(), list(sys.path)) == before else 'changed')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("KAGGLE_KERNEL_RUN_TYPE", "SINTERNAL_KIT_SOURCE")}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, **env_extra},
                          capture_output=True, text=True)


def test_hosted_install_cell_is_inert_on_a_local_kernel(tmp_path):
    # even where the kit were not importable: no hosted service detected, nothing is fetched or changed
    p = _run_install_cell(tmp_path, {}, block_kit=True)
    assert p.returncode == 0 and p.stdout.strip() == "unchanged", p.stderr
    assert not any(tmp_path.iterdir())


def test_hosted_install_cell_says_what_to_set_when_the_kit_is_missing(tmp_path):
    p = _run_install_cell(tmp_path, {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, block_kit=True)
    assert p.returncode != 0 and "set SINTERNAL_KIT_SOURCE to the kit's git URL" in p.stderr
    # installed already (an earlier run of the cell): nothing happens
    p = _run_install_cell(tmp_path, {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"})
    assert p.returncode == 0 and p.stdout.strip() == "unchanged", p.stderr
