"""Training across several processes: the stage stays in the notebook, its trainer runs in a launched job.

`run.launcher` picks how (`run.num_processes` how many):
- `single`: in the notebook's own process (the default; what every CPU recipe does);
- `ddp`: `torch.distributed.run` (torchrun) starts the processes; transformers' Trainer joins them into one
  DistributedDataParallel job (NCCL on GPUs, gloo on CPU, which is how the test suite runs it);
- `zero2`, `zero3`, `fsdp`: `accelerate launch --config_file configs/accelerate/<launcher>.yaml` (DeepSpeed
  ZeRO-2 / ZeRO-3, or FSDP; DeepSpeed must be installed: `pip install deepspeed`).

SFT: the notebook writes the job's inputs into the variant's folder (`launch_recipe.yaml`, `train_rows.jsonl`),
runs `python -m sinternal_lib.launch sft <folder>` through the launcher as a subprocess (so papermill and Lab
see one cell that waits), and reads back what rank 0 wrote: the adapter, `loss.csv` and `train_stats.json`.
GRPO: the same with `grpo <init folder>` (`launch_init.json` says which init); every process rolls out its
share of a step, the reward logs gather them all, rank 0 writes `rewards.csv`, the adapter and `summary.json`.
Resume, checkpoints and the run folder are those of a single process: the job trains with the same
`sft.train_variant` / `grpo.train_prepared`. A failed job raises with the tail of its log (`launch.log`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from . import jsonl
from .config import apply_overrides, dump_recipe, load_recipe
from .recipe_sections import CONFIG_DIR, Recipe
from .runs import atomic_write_json

JOB, ROWS, STATS, LOG = "launch_recipe.yaml", "train_rows.jsonl", "train_stats.json", "launch.log"
INIT = "launch_init.json"  # a GRPO job: which init, from which adapter and checkpoint
ACCELERATE = {name: CONFIG_DIR / "accelerate" / f"{name}.yaml" for name in ("zero2", "zero3", "fsdp")}


def launch_command(launcher: str, num_processes: int, args: Sequence[str]) -> list[str]:
    """The command line that starts `python -m sinternal_lib.launch <args>` in `num_processes` processes."""
    worker = ["-m", "sinternal_lib.launch", *args]
    if launcher == "ddp":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
                *worker]
    if launcher in ACCELERATE:
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE[launcher]),
                f"--num_processes={num_processes}", *worker]
    raise ValueError(f"run.launcher {launcher!r} does not launch processes (ddp, zero2, zero3 or fsdp do)")


def _run_job(recipe: Recipe, args: list[str], folder: Path) -> None:
    cmd = launch_command(recipe.run.launcher, recipe.run.num_processes, args)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CONFIG_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    with open(folder / LOG, "w", encoding="utf-8") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=CONFIG_DIR.parent).returncode
    if code != 0:
        tail = (folder / LOG).read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{recipe.run.launcher} job ({recipe.run.num_processes} processes) failed with exit code "
                           f"{code}; its log: {folder / LOG}\n...{tail}")


def train_variant_launched(recipe: Recipe, rows: list[dict], out_dir: str | os.PathLike) -> dict[str, Any]:
    """`sft.train_variant` for one variant in `recipe.run.num_processes` processes; returns rank 0's stats."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl.write(rows, out / ROWS)
    dump_recipe(recipe, out / JOB)
    (out / STATS).unlink(missing_ok=True)
    _run_job(recipe, ["sft", str(out)], out)
    return json.loads((out / STATS).read_text(encoding="utf-8"))


def train_init_launched(recipe: Recipe, init: str, out_dir: str | os.PathLike, *, adapter: str | os.PathLike | None,
                        last: str | None, judge_cache: str | os.PathLike | None) -> dict[str, Any]:
    """`grpo.train_prepared` for one init in `recipe.run.num_processes` processes; returns rank 0's summary.
    Each process rolls out and scores its share of the step; the reward logs gather all of them (rank 0
    writes), and only rank 0 caches judgements (`judge_cache`), so no two processes append to one file."""
    out = Path(out_dir)
    dump_recipe(recipe, out / JOB)
    (out / INIT).write_text(json.dumps({"init": init, "adapter": str(adapter) if adapter else None, "last": last,
                                        "judge_cache": str(judge_cache) if judge_cache else None}), encoding="utf-8")
    _run_job(recipe, ["grpo", str(out)], out)
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def _worker_grpo(folder: Path) -> None:
    """One process of a GRPO job: the single-process training code; rank 0 writes (grpo.train_prepared)."""
    from .grpo import train_prepared  # here: torch, transformers and trl load in the worker, not on import
    from .judges import make_judge  # here: the judge backends load models on import

    recipe = load_recipe(folder / JOB)  # train_prepared trains in this process whatever run.launcher says
    job = json.loads((folder / INIT).read_text(encoding="utf-8"))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    judge = make_judge(recipe.judge, cache_dir=job["judge_cache"] if rank0 else None)
    summary = train_prepared(recipe, job["init"], folder, adapter=job["adapter"], judge=judge, last=job["last"])
    if rank0:
        summary["launcher"] = {"launcher": recipe.run.launcher, "num_processes": int(os.environ.get("WORLD_SIZE", "1"))}
        atomic_write_json(folder / "summary.json", summary)  # as train_prepared: a torn summary never looks finished


def _worker_sft(folder: Path) -> None:
    """One process of the job: train with the single-process code; rank 0 writes the stats."""
    from .sft import train_variant  # here: torch, transformers and trl load in the worker, not on import

    launched = load_recipe(folder / JOB)
    # this process is one of the job's: it trains as a single process would, the launcher's environment
    # (RANK, WORLD_SIZE, LOCAL_RANK) makes the Trainer one of several
    recipe = apply_overrides(launched, {"run.launcher": "single", "run.num_processes": 1})
    _, _, stats = train_variant(recipe, jsonl.read(folder / ROWS), folder)
    if int(os.environ.get("RANK", "0")) == 0:
        stats["launcher"] = {"launcher": launched.run.launcher, "num_processes": int(os.environ.get("WORLD_SIZE", "1"))}
        (folder / STATS).write_text(json.dumps(stats, indent=1, default=str), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("sft", "grpo"):
        print("usage: python -m sinternal_lib.launch sft|grpo <variant or init folder>", file=sys.stderr)
        return 2
    (_worker_sft if argv[0] == "sft" else _worker_grpo)(Path(argv[1]))
    _close_process_group()
    return 0


def _close_process_group() -> None:
    """After a job's work: wait for every process, then destroy the process group, so no gloo thread is left
    running while the interpreter exits (one was: "terminate called without an active exception", SIGABRT, in a
    two-process GRPO test after both steps had finished; docs/LOG.md, 2026-12-06, session 11)."""
    import torch.distributed as dist  # here: only a launched worker needs it

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
