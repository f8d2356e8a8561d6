"""Benchmark: the kit's generation against the machine's roofline, transformers' `generate` and llama.cpp.

One run prints, side by side:
- the machine: matmul peak in fp32 and bf16 (GFLOP/s), memory bandwidth (GB/s, a large tensor copy), and
  what `precision` picks for `auto` (the dtype the CPU recipe generates with);
- the model: FLOPs per generated token (2 x the weights a token passes through, LM head included,
  attention scores not counted) and bytes of weights read per decode step;
- for each dtype (fp32 and the `auto` pick) and engine ("hf": `model.generate`, the engine before
  2026-12-05; "kit": `decoding.decode`; at the goal batch only, the levers undone one at a time:
  "kit-torch-ops" the kit's decode step without its native kernels (which only sampling takes), "kit-concat" that
  without its reserved KV cache, "kit-hf-step" each step through the model's forward instead of the kit's
  decode step, "kit-unpacked" also without packed Linear weights), tokens/s at batch 1, 8, 32, 64 for
  * sampling: temperature 1, exactly 48 new tokens (stop tokens ignored, so both engines do equal work),
  * verification: greedy, the verifier prompt of the CPU recipe (spec system prompt shared by every row),
    at most 40 new tokens, stopping at the end-of-turn token as the pipeline does,
  * sampling_top_p: as sampling with top-p 0.95 (how the stages sample), at the goal batch only,
  each as a share of the roofline min(compute: peak / FLOPs per token, memory: batch x bandwidth / weight
  bytes), and prefill tokens/s (one forward over 8 verifier prompts); for the kit at the goal batch also the
  seconds its prefill takes alone and the share of its decode steps without it (where the goal figure goes);
- llama.cpp on the bundled Q4_1 GGUF (bench_llamacpp.py, when llama-cpp-python is installed) on this
  file's 16 chat prompts, single stream and batched.
Goals (issue 15) are printed with met / not met. Results: benchmarks/results/generation.{json,md}. Run:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_generation.py [--batch-sizes 1 8 32 64] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import benchlib as bl  # noqa: E402

PROMPTS = [  # 16 everyday chat prompts (also bench_llamacpp.py's)
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
ANSWERS = ["I'm sorry, but I can't help with that.",
           "Sure. Here is an overview: first gather what you need, then follow the steps one by one."]


def bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    """Best-of copy bandwidth (read + write bytes / s) of a `mb` MB fp32 tensor."""
    src = torch.empty(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def chat_rows(tok, prompts):
    from sinternal_lib import sampling

    return [sampling._encode(tok, p, None) for p in prompts]


def verifier_messages(recipe, n: int) -> list[list[dict]]:
    """`n` verifier prompts of the recipe's spec: embedded harmful and benign prompts, a refusal or a reply."""
    from sinternal_lib.datasets import load_embedded
    from sinternal_lib.spec import spec_text
    from sinternal_lib.verification import build_verification_messages

    spec = spec_text(recipe)
    recs = load_embedded("harmful") + load_embedded("benign")
    return [build_verification_messages(spec, recs[i % len(recs)].prompt, ANSWERS[i % 2]) for i in range(n)]


def verifier_rows(tok, recipe, n: int):
    from sinternal_lib.sampling import _chat_text

    return [tok(_chat_text(tok, m), add_special_tokens=False)["input_ids"] for m in verifier_messages(recipe, n)]


def run_engine(engine: str, model, tok, rows, *, max_new: int, sample: bool, stop: bool,
               top_p: float = 1.0) -> tuple[int, float]:
    """(generated tokens, seconds) for one batch of rows."""
    from sinternal_lib import sampling
    from sinternal_lib.decoding import decode

    stop_ids = sampling._stop_ids(model, tok)
    pad = sampling._pad_id(tok, stop_ids)
    t0 = time.perf_counter()
    with torch.inference_mode():
        if engine.startswith("kit"):  # kit-concat: without the reserved KV cache (session 11);
            # kit-unpacked: without packed Linear weights (session 14); kit-hf-step: each step through the
            # model's forward, not the kit's decode step (session 15); kit-torch-ops: the kit's step without its
            # native kernels (session 17)
            out = decode(model, rows, max_new_tokens=max_new, stop_ids=stop_ids if stop else set(), pad_id=pad,
                         do_sample=sample, temperature=1.0, top_p=top_p, seed=0,
                         reserve_cache=engine != "kit-concat", packed=engine != "kit-unpacked",
                         own_step=engine != "kit-hf-step", native=engine == "kit")
            n = sum(len(ids) + s for ids, s in out)
        else:
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            kw = dict(do_sample=True, temperature=1.0, top_p=top_p, top_k=0) if sample else \
                dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            torch.manual_seed(0)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, pad_token_id=pad,
                                 eos_token_id=sorted(stop_ids) if stop else None,
                                 min_new_tokens=None if stop else max_new, **kw)
            gen = out[:, width:].tolist()
            n = sum(next((j + 1 for j, t in enumerate(r) if t in stop_ids), len(r)) if stop else len(r) for r in gen)
    return n, time.perf_counter() - t0


def measure(engine, model, tok, rows_all, batch: int, *, max_new, sample, stop, min_rows: int = 4, top_p: float = 1.0):
    """tokens/s over max(batch, min_rows) rows in batches of `batch`."""
    rows = [rows_all[i % len(rows_all)] for i in range(max(batch, min_rows))]
    n = dt = 0.0
    for i in range(0, len(rows), batch):
        k, t = run_engine(engine, model, tok, rows[i:i + batch], max_new=max_new, sample=sample, stop=stop,
                          top_p=top_p)
        n, dt = n + k, dt + t
    return int(n), dt


def forced_choice_arms(model, tok, recipe, n: int, batch: int) -> dict:
    """Forced-choice scoring of `n` verifier prompts: the kit's one forward per prompt (shared spec prefix
    once) vs one full sequence per prompt and choice (the scorer before 2026-12-06); seconds and the largest
    difference in P(unsafe)."""
    from sinternal_lib import forced_choice as fc

    items = [fc.choice_token_ids(tok, fc.verdict_context(tok, m)) for m in verifier_messages(recipe, n)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out, secs = {}, {}
    for name, fn, bs in (("one_forward", fc._single_token_scores, batch),
                         ("two_sequences", fc._two_sequence_scores, 2 * batch)):  # same prompts per forward
        t0 = time.perf_counter()
        out[name] = fn(model, items, pad, bs)
        secs[name] = time.perf_counter() - t0
    return {"prompts": n, "batch": batch, "seconds": {k: round(v, 4) for k, v in secs.items()},
            "speedup": round(secs["two_sequences"] / secs["one_forward"], 2),  # unrounded: a tiny model takes ms
            "max_abs_diff": max(abs(x - y) for x, y in zip(out["one_forward"], out["two_sequences"]))}


def prefill_seconds(model, tok, rows) -> float:
    """Seconds the decode loop's prefill of `rows` takes alone (deduplication and shared-prefix split included,
    packed weights as in `decode`), best of 2: what the goal batch's figure spends before its first step."""
    from sinternal_lib import sampling
    from sinternal_lib.decoding import prefill
    from sinternal_lib.packed_linear import packed_linears

    pad = sampling._pad_id(tok, sampling._stop_ids(model, tok))
    with torch.inference_mode(), packed_linears(model):
        return min(_timed(lambda: prefill(model, rows, pad_id=pad)) for _ in range(2))


def prefill_tps(model, rows) -> float:
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        dt = min(_timed(lambda: model(input_ids=ids, attention_mask=mask, logits_to_keep=1)) for _ in range(2))
    return sum(map(len, rows)) / dt


def llamacpp(max_new: int, batch_sizes) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_llamacpp.py"), "--max-new-tokens", str(max_new),
           "--batch-sizes", *[str(b) for b in batch_sizes if b <= 32]]
    p = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (p.stderr or p.stdout)[-500:]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="cpu-smollm2")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "auto"])
    ap.add_argument("--engines", nargs="+",
                    default=["hf", "kit", "kit-torch-ops", "kit-concat", "kit-hf-step", "kit-unpacked"],
                    help="kit-torch-ops (the kit's decode step without its native kernels), kit-concat (that, "
                         "without its reserved KV cache), kit-hf-step (the model's forward for each step) and "
                         "kit-unpacked (that, without packed Linear weights) run at the goal batch only")
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny random model, batch 1 and 4, 8 tokens (tests)")
    ap.add_argument("--out-dir", default=None)
    a = ap.parse_args(argv)
    from sinternal_lib.config import load_recipe
    from sinternal_lib.models import load_model, tiny_model
    from sinternal_lib.precision import precision_record, resolve_dtype

    out_dir = bl.out_dir(a.out_dir, a.quick)
    recipe = load_recipe("configs/tests/tiny.yaml" if a.quick else a.recipe)
    sizes = [1, 4] if a.quick else a.batch_sizes
    n_sample, n_verify = (8, 8) if a.quick else (48, 40)
    peak = bl.matmul_peak(256 if a.quick else 2048, 2 if a.quick else 5)
    gf = peak.get("gflops", {})
    bw = bandwidth_gbs(64 if a.quick else 512)
    prec = precision_record("cpu")
    result = {"benchmark": "generation: kit engine vs roofline, transformers generate and llama.cpp",
              "machine": {**bl.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "torch_threads": torch.get_num_threads()},
              "decode_kernels": prec["decode_kernels"],  # at the top level too: which kernels the kit arms ran
              "precision": prec, "matmul_peak": peak, "bandwidth_gbs": round(bw, 1),
              "rows": [], "prefill": []}
    print(f"cpu capability {result['machine']['cpu_capability']}, matmul peak {gf} GFLOP/s, bandwidth {bw:.0f} GB/s, "
          f"decode kernels {result['decode_kernels']}")
    for dtype in dict.fromkeys(resolve_dtype(d) for d in a.dtypes):
        if a.quick:
            model, tok = tiny_model()
            model = model.to(getattr(torch, dtype))
        else:
            model, tok = load_model(recipe.model.policy, dtype=dtype, device="cpu")
        model.eval()
        n_params = bl.model_flops_params(model.config)
        flops_tok = 2 * n_params
        wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        compute_tps = gf.get("bfloat16" if dtype == "bfloat16" else "float32", 0) * 1e9 / flops_tok
        chat = chat_rows(tok, PROMPTS)
        verify = verifier_rows(tok, recipe, 64)
        run_engine("kit", model, tok, chat[:2], max_new=4, sample=True, stop=False)  # warm-up
        result["prefill"].append({"dtype": dtype, "prefill_tokens_per_s": round(prefill_tps(model, verify[:8]), 1)})
        fcr = forced_choice_arms(model, tok, recipe, 8 if a.quick else 64, 4 if a.quick else 32)
        result.setdefault("forced_choice", []).append({"dtype": dtype, **fcr})
        print(f"  {dtype:8} forced choice, {fcr['prompts']} prompts: {fcr['seconds']} ({fcr['speedup']}x)", flush=True)
        goal_b = 4 if a.quick else 32
        for task, rows, max_new, sample, stop, top_p, bs in (
                ("sampling", chat, n_sample, True, False, 1.0, sizes),
                ("verification", verify, n_verify, False, True, 1.0, sizes),
                # as stages 01, 02 and 06 sample (top-p 0.95), at the goal batch only: the nucleus search
                ("sampling_top_p", chat, n_sample, True, False, 0.95, [goal_b])):
            for b in bs:
                roof = min(compute_tps, b * bw * 1e9 / wbytes)
                for engine in a.engines:
                    if engine in LEVER_ARMS and b != goal_b:
                        continue
                    n, dt = measure(engine, model, tok, rows, b, max_new=max_new, sample=sample, stop=stop,
                                    top_p=top_p)
                    tps = n / dt
                    r = {"dtype": dtype, "task": task, "engine": engine, "batch": b, "tokens": n,
                         "seconds": round(dt, 2), "tokens_per_s": round(tps, 1), "roofline_tps": round(roof, 1),
                         "roofline_pct": round(100 * tps / roof, 1), "gflop_per_token": round(flops_tok / 1e9, 3)}
                    if engine == "kit" and b == goal_b:  # where the rest of the goal figure goes: prefill vs steps
                        ps = prefill_seconds(model, tok, [rows[i % len(rows)] for i in range(b)])
                        r.update(prefill_s=round(ps, 3), decode_only_tokens_per_s=round(n / max(dt - ps, 1e-9), 1))
                        r["decode_only_roofline_pct"] = round(100 * r["decode_only_tokens_per_s"] / roof, 1)
                    result["rows"].append(r)
                    print(f"  {dtype:8} {task:12} {engine:4} batch {b:3}: {tps:7.1f} tokens/s "
                          f"({r['roofline_pct']:.0f}% of roofline {roof:.0f})", flush=True)
        del model
    if not (a.quick or a.no_llamacpp):
        result["llamacpp"] = llamacpp(n_sample, sizes)
    result["goals"] = goals(result["rows"], result.get("llamacpp"), 4 if a.quick else 32)
    result["ratios"] = [{"what": g["what"], "ratio": g["value"], "goal": g["goal"], "met": g["met"]}
                        for g in result["goals"]]  # read by bench_all's summary
    result["ratios"] += [{"what": f"forced choice ({r['dtype']}): one forward per prompt vs two sequences",
                          "ratio": r["speedup"], "goal": None, "met": None} for r in result["forced_choice"]]
    result["quick"] = a.quick
    for g in result["goals"]:
        print(f"- {g['what']}: {g['value']} (goal {g['goal'] or '-'}): {_said(g['met'], g['value'])}")
    cols = ["dtype", "task", "engine", "batch", "tokens", "seconds", "tokens_per_s", "roofline_tps", "roofline_pct"]
    notes = [f"cpu capability {result['machine']['cpu_capability']}; matmul peak {gf} GFLOP/s; "
             f"copy bandwidth {result['bandwidth_gbs']} GB/s; auto picks {resolve_dtype('auto')}",
             f"prefill tokens/s (8 verifier prompts, one forward): {result['prefill']}",
             f"forced choice (seconds, speedup, max |P diff|): {result['forced_choice']}",
             *[f"{g['what']}: {g['value']} (goal {g['goal'] or '-'}): {_said(g['met'], g['value'])}"
               for g in result["goals"]]]
    if result.get("llamacpp"):
        notes.append(f"llama.cpp (Q4_1 GGUF): {json.dumps(result['llamacpp'])[:600]}")
    bl.write_results("generation", result, result["rows"], cols, out_dir, notes)
    return result


# (arm without the lever, arm with it, the lever): each row of the summary undoes one lever
LEVERS = (("kit-torch-ops", "kit", "native kernels vs torch ops in the decode step (sampling only)"),
          ("kit-concat", "kit-torch-ops", "reserved KV cache vs concatenated"),
          ("kit-hf-step", "kit-torch-ops", "the kit's decode step vs the model's forward"),
          ("kit-unpacked", "kit-hf-step", "packed Linear weights vs F.linear"))
LEVER_ARMS = {arm for arm, _, _ in LEVERS}


def _said(met: bool | None, value: float | None) -> str:
    return "not measured" if value is None else "-" if met is None else "met" if met else "NOT met"


def goals(rows: list[dict], llama: dict | None, b: int) -> list[dict]:
    """Issue 15's generation goals from this run's rows (None where an arm is missing)."""
    def pick(task, engine, dtype=None):
        c = [r for r in rows if r["task"] == task and r["engine"] == engine and r["batch"] == b
             and (dtype is None or r["dtype"] == dtype)]
        return max(c, key=lambda r: r["tokens_per_s"]) if c else None

    out = []
    before = {t: pick(t, "hf", "float32") for t in ("sampling", "verification")}
    best = {t: pick(t, "kit") for t in ("sampling", "verification")}
    s = best["sampling"]
    out.append({"what": f"kit sampling tokens/s at batch {b}, share of roofline (%)",
                "value": s and s["roofline_pct"], "goal": ">= 40", "met": bl.met(s and s["roofline_pct"], 40)})
    out.append({"what": f"kit sampling at batch {b}, its decode steps only (the prefill timed alone and taken out), "
                        "share of roofline (%)", "value": s and s.get("decode_only_roofline_pct"), "goal": None,
                "met": None})
    for task, want in (("sampling", 3.0), ("verification", 4.0)):
        k, h = best[task], before[task]
        x = bl.ratio(k and k["tokens_per_s"], h and h["tokens_per_s"])
        out.append({"what": f"kit {task} tokens/s at batch {b} vs the previous engine (hf generate, fp32)",
                    "value": x, "goal": f">= {want}", "met": bl.met(x, want)})
    lb = None
    if llama and not llama.get("skipped") and not llama.get("error"):
        lb = max((llama.get("batched_tokens_per_s") or {}).values(), default=None)
    x = bl.ratio(s and s["tokens_per_s"], lb)
    out.append({"what": "kit best sampling tokens/s vs llama.cpp best batched (Q4_1)", "value": x, "goal": ">= 1.0",
                "met": bl.met(x, 1.0)})
    for task in ("sampling", "verification"):
        k = pick(task, "kit")
        for arm, base, lever in LEVERS:
            w = pick(task, base, k["dtype"]) if k else None
            c = k and pick(task, arm, k["dtype"])
            out.append({"what": f"kit {task} tokens/s at batch {b}, {lever} (same dtype)",
                        "value": bl.ratio(w and w["tokens_per_s"], c and c["tokens_per_s"]), "goal": None,
                        "met": None})
    k = pick("sampling_top_p", "kit")
    h = k and pick("sampling_top_p", "hf", k["dtype"])
    x = bl.ratio(k and k["tokens_per_s"], h and h["tokens_per_s"])
    out.append({"what": f"kit sampling tokens/s with top-p 0.95 at batch {b} vs generate, same dtype", "value": x,
                "goal": None, "met": None})
    return out


if __name__ == "__main__":
    main()
