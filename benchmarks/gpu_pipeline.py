"""GPU pipeline check: the kit's own runner, all six stages through papermill, on the tiny recipe with
`model.device: cuda`, timed per stage; then, from a gpu_check JSON measured at the 7B shape (optional), an
estimate of the 7B recipe's wall time on that GPU from its measured per-token costs.

No network, no download: the tiny recipe's model is built from a config with random weights. On a machine
without CUDA, `--device cpu` runs the same path on the CPU: the test suite's notebook test
(tests/notebooks/test_run_notebooks.py) runs its tiny-recipe run through `run_pipeline`, so this path is tested
at no extra cost. Writes gpu_pipeline.json and gpu_pipeline.md under --out.

With `--engine vllm` the stages generate through vLLM (`model.generation_engine: vllm`, GRPO through TRL's
colocate vLLM); where vLLM does not import, the JSON says why and nothing runs. vLLM's CPU attention refuses
the tiny model's head size, so on CPU pass `--policy smollm2-135m-instruct` (docs/LOG.md, 2026-12-06, session 10).

Run:  python benchmarks/gpu_pipeline.py --out DIR [--device cuda] [--engine hf|vllm] [--policy REF]
                                       [--gpu-check benchmarks/results/<7b>.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib as bl  # also sets HF_HUB_OFFLINE=1

TINY = "configs/tests/tiny.yaml"


def run_pipeline(device: str, engine: str = "hf", policy: str | None = None, *, root: str | None = None,
                 run_name: str = "gpu-pipeline") -> dict[str, Any]:
    """All stages of the tiny recipe through the runner on `device` with generation `engine`; per-stage seconds
    from metrics.json. The run folder goes under `root` (kept) or a temporary folder (removed)."""
    from sinternal_lib.cli import run_notebooks

    lines: list[str] = []
    over = {"model.device": device, "model.generation_engine": engine} | ({"model.policy": policy} if policy else {})
    with tempfile.TemporaryDirectory() as tmp:
        base = root or tmp
        t0 = time.perf_counter()
        code = run_notebooks(TINY, run_name, overrides=over, root=base, log=lines.append)
        wall = time.perf_counter() - t0
        metrics_path = Path(base) / run_name / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return {"exit_code": code, "wall_s": round(wall, 1), "stage_s": metrics.get("timings", {}), "log": lines}


def recipe_time_estimate(gpu_check: dict[str, Any], recipe_name: str = "gpu-ds-r1-qwen-7b") -> dict[str, Any]:
    """Hours for the recipe's generation and training, from a gpu_check run at the recipe's model shape:
    generated tokens / measured batched sampling tokens/s, trained tokens / measured 4-bit LoRA tokens/s.
    Rough: assumes completions average half of their token limit and the judge and teacher cost nothing."""
    from sinternal_lib.config import load_recipe

    r = load_recipe(recipe_name)
    gen_tps = (gpu_check.get("sampling") or {}).get("batched_16", [None, None])[1]
    train_tps = ((gpu_check.get("memory") or {}).get("4bit") or {}).get("tokens_per_s")
    if not gen_tps or not train_tps:
        return {"note": "the gpu_check JSON lacks sampling (batched_16) or the 4-bit memory arm"}
    b, s, g, e = r.build_data, r.sft, r.grpo, r.evaluate
    gen_tokens = {
        "build_data": (b.num_harmful_prompts + b.num_benign_prompts) * b.num_samples * b.max_new_tokens / 2,
        "grpo rollouts": len(g.inits) * g.max_steps * g.per_device_train_batch_size * g.gradient_accumulation_steps
        * g.max_completion_length / 2,
        "evaluate (about 2,000 prompts per checkpoint)": 2000 * 8 * e.max_new_tokens / 2,
    }
    n_sft_rows = 6000 * s.num_train_epochs * len(s.variants)
    train_tokens = {"sft": n_sft_rows * s.max_length / 4,  # rows average about a quarter of the length limit
                    "grpo updates": gen_tokens["grpo rollouts"]}
    hours = {k: round(v / gen_tps / 3600, 1) for k, v in gen_tokens.items()}
    hours.update({f"{k} (training)": round(v / train_tps / 3600, 1) for k, v in train_tokens.items()})
    return {"recipe": recipe_name, "generation_tokens_per_s": gen_tps, "training_tokens_per_s": train_tps,
            "hours": hours, "total_hours": round(sum(hours.values()), 1),
            "assumptions": "completions at half their limit; SFT rows at a quarter of max_length; 6,000 examples; "
                           "judge, teacher and model loading not counted"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="model.generation_engine of the run")
    ap.add_argument("--policy", default=None, help="model.policy instead of the tiny random model")
    ap.add_argument("--gpu-check", default=None, help="a gpu_check.json measured at the 7B shape, for the estimate")
    a = ap.parse_args(argv)
    from sinternal_lib.vllm_engine import vllm_available

    why_not = vllm_available() if a.engine == "vllm" else None
    pipeline = ({"exit_code": None, "skipped": why_not, "wall_s": None, "stage_s": {}} if why_not
                else run_pipeline(a.device, a.engine, a.policy))
    res: dict[str, Any] = {"benchmark": "GPU pipeline check (tiny recipe, all stages, runner + papermill)",
                           "device": a.device, "engine": a.engine, "policy": a.policy, "machine": bl.machine(),
                           "pipeline": {k: v for k, v in pipeline.items() if k != "log"}
                           | ({"log_tail": pipeline["log"][-12:]} if "log" in pipeline else {})}
    if a.gpu_check:
        res["estimate_7b"] = recipe_time_estimate(json.loads(Path(a.gpu_check).read_text()))
    rows = [{"stage": k, "seconds": v} for k, v in res["pipeline"]["stage_s"].items()]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_pipeline.json").write_text(json.dumps(res, indent=1, default=str))
    md = [f"# {res['benchmark']}", "", f"device {a.device}; engine {a.engine}; exit code {res['pipeline']['exit_code']}; "
          f"wall {res['pipeline']['wall_s']} s" + (f"; not run: {why_not}" if why_not else ""), "",
          "| stage | seconds |", "|---|---|"]
    md += [f"| {r['stage']} | {r['seconds']} |" for r in rows]
    if "estimate_7b" in res:
        md += ["", "Estimated hours of the 7B recipe on this GPU:", "", "```", json.dumps(res["estimate_7b"], indent=1), "```"]
    (out / "gpu_pipeline.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return res


if __name__ == "__main__":
    main()
