"""The import graph of sinternal_lib: module-level sibling imports form no cycle, a sibling import inside
a function says why on its line (an import cycle or import cost), the record schema (`datasets`) never
imports the loaders, and the light modules (CLI, report, recipes, run folders, views) import no torch.

Run: .venv/bin/pytest -q tests/test_imports.py
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = "sinternal_lib"
ROOT = Path(__file__).resolve().parents[1] / PKG


def module_files() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = module_files()


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> set[str]:
    """The sibling modules an import statement of `module` loads (submodules named in `from x import y` too)."""
    is_pkg = MODULES[module].name == "__init__.py"
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        names = [".".join(base + ([node.module] if node.module else []))]
    else:
        names = [node.module or ""]
    out = set()
    for name in names:
        if name != PKG and not name.startswith(PKG + "."):
            continue
        if isinstance(node, ast.ImportFrom):
            subs = {f"{name}.{a.name}" for a in node.names} & set(MODULES)
            out |= subs or {name}
        else:
            out.add(name)
    return {t for t in out if t in MODULES}


def _with_parents(target: str, importer: str) -> set[str]:
    """Importing a.b.c runs the packages a.b first, unless the importer is already inside them."""
    parts = target.split(".")
    parents = {".".join(parts[:i]) for i in range(2, len(parts))}
    return {target} | {p for p in parents if not importer.startswith(p + ".") and importer != p}


def module_level_graph() -> dict[str, set[str]]:
    """{module: sibling modules it imports when it is imported} (statements outside functions and
    classes, including under a top-level `if`/`try`; `if TYPE_CHECKING:` blocks are left out)."""
    graph: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges: set[str] = set()
        todo = list(tree.body)
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _targets(node, mod):
                    edges |= _with_parents(t, mod)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            elif isinstance(node, (ast.If, ast.Try)):
                todo += node.body + node.orelse + getattr(node, "finalbody", [])
                todo += [s for h in getattr(node, "handlers", []) for s in h.body]
        graph[mod] = edges - {mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_graph_is_parsed():
    graph = module_level_graph()
    assert {"sinternal_lib.config", "sinternal_lib.runs", "sinternal_lib.stages", "sinternal_lib.views"} <= set(graph)
    assert "sinternal_lib.stages" in graph["sinternal_lib.runs"]
    assert "sinternal_lib.recipe_checks" in graph["sinternal_lib.config"]
    assert "sinternal_lib.judges.base" in graph["sinternal_lib.judges"]
    assert "sinternal_lib.loaders" in graph["sinternal_lib.evaluate"]  # a package counts with its __init__


def test_finds_a_cycle_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_module_level_imports_have_no_cycle():
    assert find_cycle(module_level_graph()) is None


def test_datasets_never_imports_loaders():
    """datasets is the record schema the loaders build on; anywhere in the file, not just at the top."""
    tree = ast.parse(MODULES[f"{PKG}.datasets"].read_text(encoding="utf-8"))
    hits = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
            and any(t == f"{PKG}.loaders" or t.startswith(f"{PKG}.loaders.") for t in _targets(n, f"{PKG}.datasets"))]
    assert hits == []


def test_sibling_imports_inside_functions_say_why():
    """A sibling import kept inside a function carries a comment on its line (cycle or import cost)."""
    silent = []
    for mod, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        top = set(map(id, ast.parse(text).body))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)) and _targets(sub, mod) and id(sub) not in top \
                            and "#" not in lines[sub.lineno - 1]:
                        silent.append(f"{path.name}:{sub.lineno}: {lines[sub.lineno - 1].strip()}")
    assert silent == []


def test_light_modules_import_no_torch():
    """The CLI, report, recipes, run folders and views load in well under a second: no torch, pandas or
    transformers at import time (they come in lazily where a table or a model is needed)."""
    code = ("import sys, sinternal_lib.cli, sinternal_lib.report, sinternal_lib.config, sinternal_lib.runs, "
            "sinternal_lib.views, sinternal_lib.metrics, sinternal_lib.math_grading, sinternal_lib.judges; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent).stdout.strip()
    assert out == "[]"
