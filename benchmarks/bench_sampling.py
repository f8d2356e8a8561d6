"""Benchmark: the kit's batched sampler vs a plain per-prompt `model.generate` loop.

Real SmolLM2-135M-Instruct (bundled, converted offline), 16 prompts, greedy, 64 new tokens each.
Reports generated tokens/s (stop token counted, padding not) and the speed-up for batch sizes 8 and 16;
writes benchmarks/results/sampling.json naming the machine. Run:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_sampling.py [--model REF] [--batch-sizes 8 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sinternal_lib.models import load_model  # noqa: E402
from sinternal_lib.sampling import sample_responses  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for staying focused while studying.",
    "Explain photosynthesis in simple terms.",
    "Write a short poem about the sea.",
    "How do I make a cup of green tea?",
    "What are the main differences between a cat and a dog as pets?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Why is the sky blue?",
    "List some healthy breakfast ideas.",
    "How does a bicycle stay upright?",
    "What is 17 times 23? Show your working.",
    "Suggest a name for a small bakery.",
    "Explain what a prime number is.",
    "How can I improve my handwriting?",
    "What should I pack for a weekend hiking trip?",
    "Describe how rain forms.",
]


def per_prompt_loop(model, tok, prompts: list[str], max_new_tokens: int) -> tuple[int, float]:
    """Baseline: one `model.generate` call per prompt (no padding, KV cache on, greedy)."""
    eos = tok.eos_token_id
    n_tokens = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            enc = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=eos)
            gen = out[0, enc["input_ids"].shape[1]:].tolist()
            n_tokens += gen.index(eos) + 1 if eos in gen else len(gen)
    return n_tokens, time.perf_counter() - t0


def kit_sampler(model, tok, prompts: list[str], max_new_tokens: int, batch_size: int) -> tuple[int, float]:
    items = [(f"b{i}", p) for i, p in enumerate(prompts)]
    t0 = time.perf_counter()
    samples = sample_responses(model, tok, items, temperature=0.0, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, progress=False)
    return sum(s.num_tokens for s in samples), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampling.json"))
    args = ap.parse_args()

    model, tok = load_model(args.model, device="cpu")
    model.eval()
    kit_sampler(model, tok, PROMPTS[:2], 4, 2)  # warm-up (first-call overheads)

    rows = []
    n, dt = per_prompt_loop(model, tok, PROMPTS, args.max_new_tokens)
    base_tps = n / dt
    rows.append({"method": "per-prompt generate loop", "batch_size": 1, "tokens": n,
                 "seconds": round(dt, 2), "tokens_per_s": round(base_tps, 2), "speedup": 1.0})
    for bs in args.batch_sizes:
        n, dt = kit_sampler(model, tok, PROMPTS, args.max_new_tokens, bs)
        rows.append({"method": "sinternal sampler", "batch_size": bs, "tokens": n, "seconds": round(dt, 2),
                     "tokens_per_s": round(n / dt, 2), "speedup": round(n / dt / base_tps, 2)})

    print(f"{'method':<26}{'batch':>6}{'tokens':>8}{'sec':>8}{'tok/s':>9}{'ratio':>7}")
    for r in rows:
        print(f"{r['method']:<26}{r['batch_size']:>6}{r['tokens']:>8}{r['seconds']:>8.1f}"
              f"{r['tokens_per_s']:>9.1f}{r['speedup']:>6.2f}x")

    result = {
        "benchmark": "sampling throughput, greedy",
        "model": args.model, "num_prompts": len(PROMPTS), "max_new_tokens": args.max_new_tokens,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
