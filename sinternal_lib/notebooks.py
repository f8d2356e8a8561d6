"""Notebook sources: the five notebooks are written as jupytext percent-format scripts in
`notebooks/src/` (`# %%` code cells, `# %% [markdown]` cells, `# %% tags=["parameters"]`), so they diff
and review as code and open directly in JupyterLab ("Open With > Notebook", jupytext's extension);
`build_notebook` turns one into the committed `.ipynb` (outputs empty). A test checks that every
committed notebook equals its built source, and that each parameters cell holds plain literals only and
no later cell reassigns a parameter (papermill injects overrides in a new cell after it).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat

KERNELSPEC = {"display_name": "SInternal (.venv)", "language": "python", "name": "sinternal"}


def build_notebook(src: str | Path) -> nbformat.NotebookNode:
    """Build an output-free notebook from a percent-format source file (read by jupytext)."""
    import jupytext

    nb = jupytext.read(str(src), fmt="py:percent")
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
