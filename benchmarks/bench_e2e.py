"""Benchmark: the time of each stage of `make reproduce` on the embedded recipe, against the 10-minute goal.

Without --run it reports the `timings` section of a finished run's metrics.json (default
runs/cpu-smollm2; every stage of the recipe's `run.stages` must be there), naming the file and its modification time. With --run
it runs `python -m sinternal_lib run --recipe R --run-name bench-e2e` into a temporary runs root and
times the whole command too (the difference to the stage sum is notebook start-up and report writing).
It also measures how long one model load takes (generation weights, and the 4-bit base prepared for
training, to which the trainer adds the LoRA) and counts the loads a reproduce does, an upper bound for
what reusing loaded models could save.
Run:  .venv/bin/python benchmarks/bench_e2e.py [--run] [--run-dir runs/cpu-smollm2] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib as bl

from sinternal_lib.stages import STAGES  # the one stage table (names in pipeline order)

GOAL_S = 600.0


def load_times(recipe: Any, repeats: int = 2) -> dict:
    """Seconds per model load (best of `repeats`, after a first cold one), in a child process."""
    def work() -> dict:
        from sinternal_lib.models import load_policy

        out: dict[str, list[float]] = {"generation_load_s": [], "training_load_s": []}
        for _ in range(repeats):
            for key, kw in (("generation_load_s", {}), ("training_load_s", {"for_training": True})):
                t0 = time.perf_counter()
                model, _ = load_policy(recipe, **kw)
                out[key].append(round(time.perf_counter() - t0, 2))
                del model
        return {k: {"first": v[0], "best": min(v)} for k, v in out.items()}

    return bl.run_in_child(work)


def load_counts(recipe: Any) -> dict:
    """Model loads in one reproduce, counted from the stage code (diagnose and build_data: one per model;
    sft: base eval + train and eval per variant; grpo: one per init; evaluate: one per checkpoint)."""
    gen = (1 + len(recipe.model.others)) + 1 + (1 + len(recipe.sft.variants)) + len(recipe.evaluate.checkpoints)
    return {"generation_loads": gen, "training_loads": len(recipe.sft.variants) + len(recipe.grpo.inits)}


def read_timings(run_dir: Path, stages: list[str]) -> tuple[dict, str | None]:
    """(stage seconds, None) from a run's metrics.json, or ({}, why not); `stages`: the recipe's run.stages."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}, f"{path} not found: run `make reproduce` first, or pass --run"
    t = json.loads(path.read_text(encoding="utf-8")).get("timings", {})
    missing = [s for s in stages if s not in t]
    return t, (f"{path} lacks timings for {missing}: the run is not finished" if missing else None)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="cpu-smollm2")
    ap.add_argument("--run-dir", default=None, help="finished run folder (default runs/<recipe run name>)")
    ap.add_argument("--run", action="store_true", help="run the whole pipeline now into a temp folder and time it")
    ap.add_argument("--no-load-times", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny recipe for the load timing; never --run (tests)")
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results (--quick: a temp folder)")
    a = ap.parse_args(argv)
    a.out_dir = str(bl.out_dir(a.out_dir, a.quick))
    from sinternal_lib.config import load_recipe

    recipe = load_recipe(a.recipe)
    stages = [s for s in STAGES if s in recipe.run.stages]  # what `make reproduce` runs for this recipe
    run_dir = Path(a.run_dir) if a.run_dir else bl.ROOT / recipe.run.output_root / recipe.run.name
    command_s, source = None, None
    if a.run and not a.quick:
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as root:
            cmd = [sys.executable, "-m", "sinternal_lib", "run", "--recipe", a.recipe, "--run-name", "bench-e2e",
                   "--runs-root", root]
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, cwd=bl.ROOT).returncode
            command_s = round(time.perf_counter() - t0, 1)
            timings, why = read_timings(Path(root) / "bench-e2e", stages)
            why = why or (f"`{' '.join(cmd[1:])}` exited with {rc}" if rc else None)
            source = f"measured now: {' '.join(cmd[1:4])} (exit {rc})"
    else:
        timings, why = read_timings(run_dir, stages)
        if not why:
            mtime = dt.datetime.fromtimestamp((run_dir / "metrics.json").stat().st_mtime).isoformat(timespec="seconds")
            env = run_dir / "env.json"
            commit = json.loads(env.read_text()).get("git", {}) if env.is_file() else {}
            source = f"{run_dir / 'metrics.json'} (modified {mtime}, commit {commit.get('commit')}, " \
                     f"dirty {commit.get('dirty')})"
    total = round(sum(timings.get(s, 0) for s in stages), 1) if not why else None
    rows = [{"stage": s, "seconds": timings.get(s), "share": bl.ratio(timings.get(s), total)} for s in stages]
    rows.append({"stage": "total (stages)", "seconds": total, "share": 1.0 if total else None})
    if command_s is not None:
        rows.append({"stage": "whole command", "seconds": command_s, "share": bl.ratio(command_s, total)})
    loads = {} if a.no_load_times else load_times(load_recipe("configs/tests/tiny.yaml") if a.quick else recipe)
    counts = load_counts(recipe)
    loads = {k: v for k, v in loads.items() if k.endswith("_load_s") or k == "error"}
    if "generation_load_s" in loads:
        counts["load_s_upper_bound"] = round(counts["generation_loads"] * loads["generation_load_s"]["best"]
                                             + counts["training_loads"] * loads["training_load_s"]["best"], 1)
    r = bl.ratio(total, GOAL_S)
    ratios = [{"what": f"make reproduce wall time vs the {GOAL_S / 60:.0f}-minute goal ({recipe.run.name})",
               "ratio": r, "goal": "<= 1.0", "met": None if r is None else r <= 1.0}]
    result = {"benchmark": "end to end: make reproduce stage times", "recipe": a.recipe, "source": source,
              "missing": why, "timings_s": timings, "total_s": total, "command_s": command_s, "goal_s": GOAL_S,
              "goal_met": None if total is None else total <= GOAL_S, "model_loads": counts, "load_times": loads,
              "quick": a.quick, "machine": bl.machine(), "ratios": ratios}
    notes = [f"source: {source or why}",
             f"goal {GOAL_S:.0f} s: " + ("no finished run" if total is None else
                                         f"{'met' if total <= GOAL_S else 'NOT met'} ({total:.0f} s)"),
             f"model loads per reproduce: {counts}; one load: {loads or 'not measured'}"]
    bl.write_results("e2e", result, rows, ["stage", "seconds", "share"], a.out_dir, notes)
    return result


if __name__ == "__main__":
    main()
