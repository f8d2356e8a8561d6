"""Notebook sources: the six notebooks are written as jupytext percent-format scripts in
`notebooks/src/` (`# %%` code cells, `# %% [markdown]` cells, `# %% tags=["parameters"]`), so they diff
and review as code and open directly in JupyterLab ("Open With > Notebook", jupytext's extension);
`build_notebook` turns one into the committed `.ipynb` (outputs empty), with `src/_hosted_install.py` as the
first code cell (it installs the kit on Colab or Kaggle and does nothing on a local kernel). tests/test_notebooks.py checks
that every committed notebook equals its built source, and that each parameters cell holds plain
literals only and no later cell reassigns a parameter (papermill injects overrides in a new cell after it).
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

KERNELSPEC = {"display_name": "SInternal (.venv)", "language": "python", "name": "sinternal"}
HOSTED_INSTALL = "_hosted_install.py"  # notebooks/src/: the first code cell of every notebook (hosted services)


def build_notebook(src: str | Path) -> nbformat.NotebookNode:
    """Build an output-free notebook from a percent-format source file (read by jupytext)."""
    import jupytext  # here, not at the top: only building needs it

    nb = jupytext.read(str(src), fmt="py:percent")
    hosted = Path(src).with_name(HOSTED_INSTALL)
    if hosted.is_file():  # the same install cell in every notebook, after the title: one source, no copies
        nb.cells.insert(1, nbformat.v4.new_code_cell(hosted.read_text(encoding="utf-8").rstrip("\n"),
                                                     metadata={"tags": ["hosted-install"]}))
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}  # no pairing metadata
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: a rebuild of an unchanged source is byte-identical
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def write_notebook(nb: nbformat.NotebookNode, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def build_all(notebook_dir: str | Path) -> list[Path]:
    """Rebuild notebooks/NN_*.ipynb from notebooks/src/NN_*.py."""
    notebook_dir = Path(notebook_dir)
    return [write_notebook(build_notebook(src), notebook_dir / f"{src.stem}.ipynb")
            for src in sorted((notebook_dir / "src").glob("[0-9][0-9]_*.py"))]


def strip_outputs(path: str | Path) -> None:
    """Remove outputs and execution counts from a notebook file in place."""
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.write(nb, str(path))
