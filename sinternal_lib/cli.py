"""Headless runner: execute the six notebooks in order with papermill into `runs/<run>/notebooks/`.

    python -m sinternal_lib run --recipe configs/cpu-smollm2.yaml --run-name demo [--only 03] [--set k=v]
    python -m sinternal_lib report --run-name demo
    python -m sinternal_lib prepare-model [NAME]

First the power plan (per claim the n the recipe gives and the effect it can detect: `power_plan.py`;
also written to `runs/<run>/power_plan.json`), then one progress line per notebook with its time. A
stage whose manifest matches its current config and inputs is skipped (`--force` redoes it). Without
`--force` a finished stage of another config is never replaced: the runner stops before the first notebook
and names the changed keys; a finished stage that is redone is kept per config and restored when its
config comes back (`kept_stages`). On failure the runner names the notebook and the failing cell and keeps
the partly executed copy. The run folder is locked while the runner works on it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import load_recipe, parse_override_strings
from .memory_fit import format_fit, recipe_fit
from .power_plan import format_power_plan, write_power_plan
from .recipe_checks import RecipeError
from .recipe_sections import REPO_ROOT
from .report import headline, render_report
from .kept_stages import prepare, refusal
from .runs import Run, RunLocked, StageIncomplete, read_manifest, stage_for
from .stages import STAGES, stage_info

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
KERNEL = "sinternal"


def _precision_line(recipe) -> str:
    """What the recipe's `auto` precision fields become on this machine (precision.format_precision)."""
    from .models import pick_device  # torch loads only when a run starts: the CLI's other commands stay light
    from .precision import format_precision, precision_record  # the same reason

    return format_precision(precision_record(pick_device(recipe.model.device), recipe))


def notebook_path(stage: str) -> Path:
    return NOTEBOOK_DIR / f"{STAGES[stage].notebook}.ipynb"


class UsageError(ValueError):
    """A command-line argument the runner cannot use (printed as one line, exit code 2)."""


def _select(only: list[str] | None, default: list[str] | None = None) -> list[str]:
    """The stages named by --only (names, numbers or folders), else `default` (the recipe's run.stages)."""
    if not only:
        return [s for s in STAGES if default is None or s in default]
    chosen = set()
    for o in only:
        try:
            chosen.add(stage_info(o).name)
        except KeyError:
            raise UsageError(f"--only {o!r}: no such stage; use a name, number or folder: "
                             f"{', '.join(s.folder for s in STAGES.values())}") from None
    return [s for s in STAGES if s in chosen]


def executed_ok(path: Path) -> bool:
    """True when an executed notebook copy exists and papermill recorded no exception in it."""
    if not path.is_file():
        return False
    import nbformat  # here, not at the top: only the runner reads notebooks (a second to import)

    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception:
        return False
    return not nb.metadata.get("papermill", {}).get("exception")


def _kernel_name() -> str:
    """The kit's registered kernel when present, else the current interpreter's `python3`."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    return KERNEL if KERNEL in specs else "python3"


def run_notebooks(
    recipe_ref: str,
    run_name: str | None = None,
    only: list[str] | None = None,
    overrides: dict | None = None,
    force: bool = False,
    root: str | None = None,
    log=print,
) -> int:
    """Run the selected notebooks; return 0 on success, 1 on the first failing notebook."""
    import papermill as pm  # here, not at the top: papermill takes seconds; report/build commands need none
    from papermill.exceptions import PapermillExecutionError

    recipe = load_recipe(recipe_ref, overrides)
    stages = _select(only, recipe.run.stages)
    run = Run(recipe, run_name, root)
    try:
        run.acquire()  # before writing anything: a refused runner must not touch a run in progress
    except RunLocked as e:
        log(f"error: {e}")
        return 2
    refused = [] if force else [e for e in (refusal(stage_for(run, s), runner=True) for s in stages) if e]
    for e in refused:  # before writing anything: the finished run stays as it was
        log(f"error: {e}")
    if refused:
        run.release()
        return 2
    run.write_env()
    out_dir = run.path / "notebooks"
    out_dir.mkdir(exist_ok=True)
    kernel = _kernel_name()
    log(f"run '{run.name}' -> {run.path}  (recipe {Path(recipe.source).name}, kernel {kernel})")
    total = time.time()
    try:
        try:
            log(format_power_plan(write_power_plan(run)))
        except Exception as e:  # the plan is advice: a fault in it must not stop the stages
            log(f"power plan not computed ({type(e).__name__}: {e})")
        try:  # what `auto` becomes on this machine, before the first stage measures it again in its kernel
            log(_precision_line(recipe))
        except Exception as e:  # noqa: BLE001 - advice only, like the power plan
            log(f"precision not probed ({type(e).__name__}: {e})")
        if str(recipe.model.device).startswith("cuda"):  # will training fit the GPU? said before any model loads
            log(format_fit(recipe_fit(recipe, _gpu_gib())))
        for stage in stages:
            nb = notebook_path(stage)
            out = out_dir / nb.name
            st = stage_for(run, stage)
            try:
                read_manifest(st.dir)
            except StageIncomplete as e:  # corrupt manifest: say so, drop it and redo the stage
                log(f"  {nb.stem:<32} {e}; redoing the stage")
                st.invalidate()
            if (note := prepare(st, force)):  # a kept copy of this config comes back, or the finished one is kept
                log(f"  {nb.stem:<32} {note}")
            complete = st.is_complete()
            if not force and complete and executed_ok(out):
                log(f"  {nb.stem:<32} skipped (finished, config and inputs unchanged)")
                continue
            if force:
                st.invalidate()
            t0 = time.time()
            params = {"recipe": str(Path(recipe.source)), "run_name": run.name,
                      "overrides": dict(overrides or {}), "runs_root": str(run.path.parent)}
            try:
                pm.execute_notebook(
                    str(nb), str(out), parameters=params, kernel_name=kernel, cwd=str(NOTEBOOK_DIR),
                    progress_bar=False, log_output=False, request_save_on_cell_execute=True,
                )
            except PapermillExecutionError as e:
                log(f"  {nb.stem:<32} FAILED after {time.time() - t0:.0f}s in cell {e.cell_index} "
                    f"(execution count {e.exec_count}): {e.ename}: {e.evalue}")
                log(f"  the partly executed notebook is kept at {out}")
                return 1
            log(f"  {nb.stem:<32} done in {time.time() - t0:.0f}s")
        log(f"all done in {time.time() - total:.0f}s")
        report = run.path / "report.md"
        if report.is_file():
            log(f"report: {report}")
            for line in headline(run):
                log(f"  {line}")
        return 0
    finally:
        run.release()


def _gpu_gib() -> float | None:
    """Memory of the first visible CUDA GPU in GiB (None without one)."""
    import torch  # here: only a CUDA recipe asks, and torch takes seconds to import

    return torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sinternal_lib", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute the notebooks headless into runs/<run>/")
    r.add_argument("--recipe", default="cpu-smollm2", help="recipe name under configs/ or a path")
    r.add_argument("--run-name", default=None, help="run folder name (default: the recipe's run.name)")
    r.add_argument("--only", action="append", help="stage to run (e.g. 03 or sft); repeatable")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="recipe override")
    r.add_argument("--force", action="store_true", help="redo stages even when finished, and replace finished stages of another config (kept in <stage>.previous/)")
    r.add_argument("--runs-root", default=None, help="folder holding run folders (default: recipe run.output_root)")
    rep = sub.add_parser("report", help="render runs/<run>/report.md from metrics.json")
    rep.add_argument("--run-name", required=True)
    rep.add_argument("--recipe", default=None)
    rep.add_argument("--runs-root", default=None)
    rep.add_argument("--show-unsafe", action="store_true", help="do not redact unsafe completions")
    pm_ = sub.add_parser("prepare-model", help="convert a bundled model into the cache once")
    pm_.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    fit = sub.add_parser("fit", help="estimate the peak GPU memory of a recipe's training stages (no download)")
    fit.add_argument("--recipe", default="gpu-ds-r1-qwen-7b", help="recipe name under configs/ or a path")
    fit.add_argument("--gpu-gib", type=float, default=None,
                     help="GPU memory to check against, in GiB (default: the recipe's run.gpu_memory_gib)")
    fit.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="recipe override")
    sub.add_parser("strip-notebooks", help="remove outputs from notebooks/*.ipynb")
    sub.add_parser("build-notebooks", help="rebuild notebooks/*.ipynb from notebooks/src/*.py")
    a = p.parse_args(argv)
    try:
        if a.cmd == "run":
            return run_notebooks(a.recipe, a.run_name, a.only, parse_override_strings(a.set), a.force, a.runs_root)
        if a.cmd == "report":
            runs_root = Path(a.runs_root) if a.runs_root else REPO_ROOT / "runs"
            recipe_file = a.recipe or runs_root / a.run_name / "recipe.yaml"
            run = Run(load_recipe(recipe_file), a.run_name, runs_root)
            path = render_report(run, show_unsafe=a.show_unsafe)
            print(f"report: {path}")
            for line in headline(run):
                print(f"  {line}")
            return 0
        if a.cmd == "fit":
            over = parse_override_strings(a.set)
            # the estimate itself is what `fit` shows, so a stated size the settings exceed must not refuse the load
            recipe = load_recipe(a.recipe, {**over, "run.gpu_memory_gib": None})
            gib = a.gpu_gib if a.gpu_gib is not None else over.get("run.gpu_memory_gib",
                                                                     load_recipe(a.recipe).run.gpu_memory_gib)
            rows = recipe_fit(recipe, gib)
            print(format_fit(rows, gib))
            return 1 if any(r["fits"] is False for r in rows) else 0
        if a.cmd == "prepare-model":
            from .models import prepare_bundled  # here, not at the top: models imports torch (seconds)

            print(f"model ready: {prepare_bundled(a.name)}")
            return 0
        if a.cmd == "build-notebooks":
            from .notebooks import build_all  # here, not at the top: nbformat and jupytext take a second

            for nb in build_all(NOTEBOOK_DIR):
                print(f"built {nb.relative_to(REPO_ROOT)}")
            return 0
        if a.cmd == "strip-notebooks":
            from .notebooks import strip_outputs  # nbformat: see build-notebooks

            for nb in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
                strip_outputs(nb)
                print(f"stripped {nb.name}")
            return 0
    except RecipeError as e:
        print(f"recipe error: {e}", file=sys.stderr)
        return 2
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
