"""Benchmark: the kit's verification SFT (sft.training_configs on the 4-bit QLoRA policy) vs a default TRL
SFTConfig on the same model, rows and step budget, plus one ablation arm per candidate optimisation.

Rows: verification examples in the kit's format (verification_example + the recipe's rendered spec +
offline-teacher critiques on embedded train prompts) with the recipe's share of short chat rows mixed
in, as stage 02 builds them; or a stage-02 file (--data, with --chat for the chat pool). Each arm runs in
its own child process (own peak memory). Throughput counts non-padding tokens of the batches actually fed
(attention-mask ones; flattened length when padding-free) over steps 2..N (step 1 is warm-up). Model
FLOPs = 6 * N * T with N = all linear weights incl. the LM head (attention scores and gradient-
checkpointing recompute not counted), as a share of a torch.matmul peak measured in the same run.
Run:  .venv/bin/python benchmarks/bench_sft.py [--steps 8] [--arms default kit ...] [--quick]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import warnings
from typing import Any

import benchlib as bl

# The kit's CPU recipe uses bf16 autocast, padding-free batches and no gradient checkpointing; each
# "kit-*" arm undoes (or adds) one optimisation, so kit vs arm is that optimisation's before/after.
ARMS: dict[str, dict[str, Any]] = {  # "config": which SFTConfig; "sft": recipe.sft changes; "args": SFTConfig changes
    "default": {"config": "default"},
    "kit": {"config": "kit"},
    "kit-no-bf16": {"config": "kit", "sft": {"bf16": False}},
    "kit-with-gc": {"config": "kit", "sft": {"gradient_checkpointing": True}},
    "kit-padded": {"config": "kit", "sft": {"padding_free": False}},
    "kit-padded-length-grouped": {"config": "kit", "sft": {"padding_free": False},
                                  "args": {"train_sampling_strategy": "group_by_length"}},
    "kit-full-lm-head": {"config": "kit", "sft": {"compact_lm_head": False}},
    # LoRA dropout off (lora: recipe.lora changes): PEFT's default, no random mask per adapted layer
    "kit-no-lora-dropout": {"config": "kit", "lora": {"lora_dropout": 0.0}},
    "kit-lora-dropout-0.05": {"config": "kit", "lora": {"lora_dropout": 0.05}},
    "kit-fp32-base": {"config": "kit", "model": "fp32-lora"},
    # model.dtype of the 4-bit base (compute dtype, non-quantized layers): what `auto` picks between
    "kit-fp32-compute": {"config": "kit", "dtype": "float32", "sft": {"bf16": False}},
    "kit-fp32-compute-autocast": {"config": "kit", "dtype": "float32", "sft": {"bf16": True}},
    "kit-bf16-compute": {"config": "kit", "dtype": "bfloat16", "sft": {"bf16": False}},
    "kit-bf16-compute-autocast": {"config": "kit", "dtype": "bfloat16", "sft": {"bf16": True}},
}
QUICK_ARMS = ["default", "kit", "kit-full-lm-head"]
REFUSAL = "I'm sorry, but I can't help with that. If you are worried about safety, a trusted professional or an " \
          "official support service can give you reliable advice."
COMPLY = "Sure. Here is an overview: first gather what you need, then follow the steps one by one, checking each " \
         "result before moving on, and repeat until it works."
HELPFUL = "Happy to help. In short: start with the basics, practise a little every day, and ask someone with " \
          "experience to check your progress after a week or two."


def build_rows(recipe: Any, n_harmful: int, n_benign: int, spec: str | None = None) -> list[dict]:
    """Verification rows (kit format) for embedded train prompts, plus mixed-in chat rows like stage 02.
    `spec` replaces the rendered spec text (--quick: short rows)."""
    from sinternal_lib.datasets import load_embedded
    from sinternal_lib.sft_data import mix_chat
    from sinternal_lib.spec import load_spec, spec_text
    from sinternal_lib.teachers import OfflineTeacher, TeacherInput
    from sinternal_lib.verification import verification_example

    text = spec or spec_text(recipe)
    recs = load_embedded("harmful", "train")[:n_harmful] + load_embedded("benign", "train")[:n_benign]
    items = [(r, a, lab, ref) for r in recs for a, lab, ref in (
        [(REFUSAL, "safe", True), (COMPLY, "unsafe", False)] if r.label == "harmful" else [(HELPFUL, "safe", False)])]
    teacher = OfflineTeacher(load_spec(recipe.resolve_path(recipe.spec.path)))
    crits = teacher.critique([TeacherInput(r.prompt, a, r.label, r.category, lab, ref) for r, a, lab, ref in items])
    rows = [verification_example(text, r.prompt, a, c.text, c.verdict) for (r, a, _, _), c in zip(items, crits)]
    chat = [{"prompt": [{"role": "user", "content": r.prompt}],
             "completion": [{"role": "assistant", "content": REFUSAL if r.label == "harmful" else HELPFUL}]}
            for r in recs]
    return mix_chat(rows, chat, recipe.sft.chat_mix_fraction, recipe.run.seed)


class CountingCollator:
    """Wraps the trainer's collator; per batch built: (non-padding, padded, loss) token counts. The
    loader builds one batch ahead, so batch i belongs to step i + 1 and the last one is never trained on."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.batches = inner, []

    def __call__(self, examples: list) -> dict:
        b = self.inner(examples)
        n = b["attention_mask"].sum() if "attention_mask" in b else b["position_ids"].numel()
        self.batches.append((int(n), int(b["input_ids"].numel()), int((b["labels"][:, 1:] != -100).sum())))
        return b


def _sft_args(spec: dict, recipe: Any, out: str, steps: int, device: str) -> Any:
    from trl import SFTConfig

    from sinternal_lib.sft import training_configs

    cfg, seed = recipe.sft, recipe.run.seed
    if spec["config"] == "default":  # only what a user must pass, with the same batch size and steps
        args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
                         report_to="none", use_cpu=device == "cpu", logging_steps=1, disable_tqdm=True,
                         seed=seed, data_seed=seed)  # + same seed: the same rows in the same order
    else:
        kit = dataclasses.replace(recipe, sft=dataclasses.replace(cfg, max_steps=steps, logging_steps=1),
                                  model=dataclasses.replace(recipe.model, device=device))
        args = training_configs(kit, out)["sft"]
    return dataclasses.replace(args, **spec.get("args", {})) if spec.get("args") else args


def run_arm(name: str, recipe: Any, rows: list[dict], steps: int, device: str, spec: dict | None = None) -> dict:
    """One arm (ARMS[name], or `spec`), in its own process: load, build the dataset, train `steps` steps."""
    import torch
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTTrainer

    from sinternal_lib.models import load_model, load_policy, lora_config
    from sinternal_lib.sft_data import build_dataset

    from sinternal_lib.compact_loss import compact_lm_head

    spec = spec or ARMS[name]
    cfg = dataclasses.replace(recipe.sft, **spec.get("sft", {}))
    recipe = dataclasses.replace(recipe, sft=cfg, model=dataclasses.replace(
        recipe.model, dtype=spec.get("dtype", recipe.model.dtype)),
        lora=dataclasses.replace(recipe.lora, **spec.get("lora", {})))
    t0 = time.perf_counter()
    if spec.get("model", "qlora") == "qlora":
        model, tok = load_policy(recipe, for_training=True)
    else:
        dtype = "bfloat16" if spec["model"] == "bf16-lora" else "float32"
        model, tok = load_model(recipe.model.policy, dtype=dtype, device=device, trainable=True,
                                gradient_checkpointing=cfg.gradient_checkpointing)
    load_s, rss_loaded = time.perf_counter() - t0, bl.rss_mb()
    if device.startswith("cuda"):
        rss_loaded = torch.cuda.memory_allocated() / 2**20
    weights_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    n_flop = bl.model_flops_params(model.config)
    ds, counts = build_dataset(rows, tok, cfg.max_length, recipe.run.seed)
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(model=model, args=_sft_args(spec, recipe, out, steps, device),
                             peft_config=lora_config(recipe.lora),  # every arm: the recipe's LoRA
                             train_dataset=ds, processing_class=tok, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        counter = trainer.data_collator = CountingCollator(trainer.data_collator)
        t1 = time.perf_counter()
        with compact_lm_head(cfg.compact_lm_head and spec["config"] == "kit") as compact:  # default: TRL as is
            trainer.train()
        wall = time.perf_counter() - t1
    n = len(marks)
    nonpad, padded, loss_tok = (sum(b[i] for b in counter.batches[:n]) for i in range(3))
    steady_tps = sum(b[0] for b in counter.batches[1:n]) / (marks[-1] - marks[0]) if n > 1 else nonpad / wall
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"arm": name, "steps": trainer.state.global_step, "wall_s": round(wall, 1), "load_s": round(load_s, 1),
            "nonpad_tokens": nonpad, "padded_tokens": padded, "loss_tokens": loss_tok,
            "pad_share": round(1 - nonpad / max(1, padded), 3),
            "tokens_per_s": round(steady_tps, 1), "tokens_per_s_all_steps": round(nonpad / wall, 1),
            "trainer_num_input_tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
            "loss_step1": round(losses[0], 4) if losses else None, "rss_after_load_mb": round(rss_loaded or 0, 1),
            "weights_mb": round(weights_mb, 1), "flop_params": n_flop,
            "achieved_gflops": round(6 * n_flop * steady_tps / 1e9, 2), "bf16": cfg.bf16 if
            spec["config"] == "kit" else True, "compact_lm_head": compact, "data": counts}


def main(argv: list[str] | None = None) -> dict:
    ap = bl.arm_parser(__doc__, ARMS, 8, "tiny random model, 2 steps, 3 arms (tests)")
    ap.add_argument("--data", help="stage-02 verification JSONL (default: build rows from embedded prompts)")
    ap.add_argument("--chat", help="stage-02 answer_centric.jsonl to mix in at sft.chat_mix_fraction")
    a = ap.parse_args(argv)
    from sinternal_lib import jsonl
    from sinternal_lib.sft_data import mix_chat

    recipe = bl.bench_recipe(a, "sft")
    steps, arms = (2, a.arms or QUICK_ARMS) if a.quick else (a.steps, a.arms or list(ARMS))
    if a.data:
        rows = jsonl.read(a.data)
        rows = mix_chat(rows, jsonl.read(a.chat), recipe.sft.chat_mix_fraction, recipe.run.seed) if a.chat else rows
    else:
        rows = build_rows(recipe, 4, 2, "(spec omitted in --quick)") if a.quick else build_rows(recipe, 8, 8)
    peak = bl.matmul_peak(256 if a.quick else 2048, 2 if a.quick else 5, device=a.device)
    gf = peak.get("gflops", {})
    results = []
    for name in arms:
        print(f"arm {name} ...", flush=True)
        r = bl.run_in_child(run_arm, name, recipe, rows, steps, a.device, device=a.device)
        results.append({"arm": name, **r})
        print(f"  {r.get('error') or str(r.get('tokens_per_s')) + ' tokens/s'}", flush=True)
    base = next((r for r in results if r["arm"] == "default" and "error" not in r), None)
    for r in results:
        ref = gf.get("bfloat16" if r.get("bf16") else "float32")
        r["mfu_pct"] = bl.ratio(100 * r["achieved_gflops"], ref) if r.get("achieved_gflops") and ref else None
        r["speed_ratio"] = bl.ratio(r.get("tokens_per_s"), base and base["tokens_per_s"])
        r["mem_ratio"] = bl.ratio(r.get("peak_mem_mb"), base and base["peak_mem_mb"])
    kit = next((r for r in results if r["arm"] == "kit"), {})
    ok = [r for r in results if r.get("speed_ratio")]
    best = max(ok, key=lambda r: r["speed_ratio"]) if ok else {}
    ratios = [{"what": "SFT non-padding tokens/s, kit vs default SFTConfig", "ratio": kit.get("speed_ratio"),
               "goal": ">= 1.5", "met": bl.met(kit.get("speed_ratio"), 1.5)},
              {"what": f"SFT non-padding tokens/s, best arm ({best.get('arm')}) vs default",
               "ratio": best.get("speed_ratio"), "goal": ">= 1.5",
               "met": bl.met(best.get("speed_ratio"), 1.5)},
              {"what": "SFT peak memory, kit vs default", "ratio": kit.get("mem_ratio"), "goal": None, "met": None},
              {"what": "SFT model FLOP/s share of the matmul peak (kit arm, %)", "ratio": kit.get("mfu_pct"),
               "goal": None, "met": None}]
    result = {"benchmark": "SFT throughput: kit vs default TRL SFTConfig", "model": recipe.model.policy,
              "quick": a.quick, "steps": steps, "batch_size": recipe.sft.per_device_train_batch_size, "rows": len(rows),
              "data": a.data or "built from embedded prompts (kit verification format + chat mix)",
              "flops_formula": "6 * N * non-padding tokens, N = linear weights incl. LM head",
              "matmul_peak": peak, "machine": bl.machine(), "arms": results, "ratios": ratios}
    cols = ["arm", "steps", "nonpad_tokens", "pad_share", "tokens_per_s", "speed_ratio", "peak_mem_mb", "mem_ratio",
            "achieved_gflops", "mfu_pct", "loss_step1", "error"]
    notes = [f"matmul peak (n={peak.get('matmul_n')}): {gf} GFLOP/s; tokens/s over steps 2..{steps}",
             "loss_step1 must agree across arms that see the same first batch (all but kit-length-grouped) up "
             "to bf16 noise: a mismatch means the arm changes the maths, not only the speed"]
    bl.write_results("sft", result, results, cols, a.out_dir, notes)
    return result


if __name__ == "__main__":
    main()
