"""Benchmark: peak memory of 4-bit NF4 QLoRA vs bf16 LoRA (and fp32 LoRA) training on the same batches.

Every arm trains the kit's SFT (sft.training_configs, same LoRA, same rows and seed, so the same batches) for a
few steps in its own child process (bench_sft.run_arm). Peak memory: CPU peak RSS of the arm's process
(VmHWM, reset at arm start), CUDA torch.cuda.max_memory_allocated. Also reported: the weights alone
(parameter + buffer bytes, and the process's memory growth while loading), which shows why the CPU
ratio is far from the weights ratio: at 135M parameters, activations and the 49,152-word LM-head
scoring dominate the peak, and the embedding / LM head (28M weights) stays unquantized in fp32.
Run:  .venv/bin/python benchmarks/bench_memory.py [--steps 3] [--quick] [--device cuda]
"""

from __future__ import annotations

from typing import Any

import benchlib as bl
import bench_sft

ARMS: dict[str, dict[str, Any]] = {
    "qlora-4bit": {"config": "kit"},  # the kit: NF4 + double quant base, recipe dtype for the rest
    "lora-bf16": {"config": "kit", "model": "bf16-lora"},
    "lora-fp32": {"config": "kit", "model": "fp32-lora"},
}


def main(argv: list[str] | None = None) -> dict:
    a = bl.arm_parser(__doc__, ARMS, 3, "tiny random model, 2 steps, 4-bit vs bf16 (tests)").parse_args(argv)
    recipe = bl.bench_recipe(a, "sft")
    steps = 2 if a.quick else a.steps
    arms = a.arms or (["qlora-4bit", "lora-bf16"] if a.quick else list(ARMS))
    rows = bench_sft.build_rows(recipe, 4, 2, "(spec omitted in --quick)") if a.quick else \
        bench_sft.build_rows(recipe, 8, 8)
    results = []
    for name in arms:
        print(f"arm {name} ...", flush=True)
        r = bl.run_in_child(bench_sft.run_arm, name, recipe, rows, steps, a.device, ARMS[name], device=a.device)
        if "error" not in r:
            r = {k: r[k] for k in ("steps", "nonpad_tokens", "tokens_per_s", "weights_mb", "rss_start_mb",
                                   "rss_after_load_mb", "peak_mem_mb", "peak_mem_kind", "child_wall_s")}
            start = 0 if a.device.startswith("cuda") else r["rss_start_mb"]
            r["load_growth_mb"] = round(r["rss_after_load_mb"] - start, 1)
            r["training_extra_mb"] = round(r["peak_mem_mb"] - r["rss_after_load_mb"], 1)
        results.append({"arm": name, **r})
        print(f"  {r.get('error') or str(r.get('peak_mem_mb')) + ' MB peak'}", flush=True)
    base = next((r for r in results if r["arm"] == "lora-bf16" and "error" not in r), None)
    for r in results:
        r["peak_ratio_vs_bf16"] = bl.ratio(r.get("peak_mem_mb"), base and base["peak_mem_mb"])
        r["weights_ratio_vs_bf16"] = bl.ratio(r.get("weights_mb"), base and base["weights_mb"])
    q = next((r for r in results if r["arm"] == "qlora-4bit"), {})
    pr = q.get("peak_ratio_vs_bf16")
    ratios = [{"what": "peak training memory, 4-bit QLoRA vs bf16 LoRA", "ratio": pr, "goal": "<= 0.5",
               "met": None if pr is None else pr <= 0.5},
              {"what": "weights memory, 4-bit QLoRA vs bf16 LoRA", "ratio": q.get("weights_ratio_vs_bf16"),
               "goal": None, "met": None}]
    result = {"benchmark": "training memory: 4-bit QLoRA vs bf16 LoRA", "model": recipe.model.policy,
              "quick": a.quick, "steps": steps, "batch_size": recipe.sft.per_device_train_batch_size, "device": a.device,
              "qlora_compute_dtype": recipe.model.dtype, "machine": bl.machine(), "arms": results, "ratios": ratios}
    cols = ["arm", "weights_mb", "load_growth_mb", "peak_mem_mb", "training_extra_mb", "peak_ratio_vs_bf16",
            "weights_ratio_vs_bf16", "tokens_per_s", "error"]
    notes = ["weights_mb: parameter + buffer bytes after loading (4-bit layers count their packed bytes)",
             "load_growth_mb: process memory growth while loading; training_extra_mb: peak minus after-load",
             f"QLoRA keeps the embedding / tied LM head and norms in {recipe.model.dtype} (recipe model.dtype)"]
    bl.write_results("memory", result, results, cols, a.out_dir, notes)
    return result


if __name__ == "__main__":
    main()
