"""Benchmark: the kit's GRPO (grpo.training_configs on the 4-bit QLoRA policy) vs a default TRL GRPOConfig on the
same model, prompt mix (grpo.build_prompt_mix) and verifier reward (grpo.VerifierReward, offline matcher).

The default arm passes only what GRPO needs to be comparable: output_dir, use_cpu, report_to, the same
num_generations, max_completion_length, max_steps and completions per step (per_device_train_batch_size and
gradient_accumulation_steps), and the same seed; every arm gets the recipe's LoRA as peft_config. The kit's
arms train with the trainer grpo.build_trainer picks (grpo_rollouts.KitRolloutTrainer where the arm sets
grpo.rollouts: kit); `rollouts_by` says which rollout path ran. Each arm
runs in its own child process. Reports seconds per step (all steps, and steps 2..N without the warm-up) and generated completion tokens per second (lengths from TRL's completion_ids,
stop token included, padding not).
Run:  .venv/bin/python benchmarks/bench_grpo.py [--steps 3] [--arms default kit kit-bf16] [--quick]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import warnings
from typing import Any

import benchlib as bl

# "config": which GRPOConfig; "grpo"/"model"/"lora": recipe changes; "contiguous_head": models.load_model's
# (default: True for the kit's arms, False for the default arm, loaded as transformers does)
ARMS: dict[str, dict[str, Any]] = {
    # what a user does after QLoRA SFT: TRL's default GRPOConfig on the 4-bit policy
    "default": {"config": "default", "grpo": {"load_in_4bit": True, "gradient_checkpointing": True}},
    "kit": {"config": "kit"},  # the recipe as it stands
    # the kit before 2026-12-06 (issue 15's "today"): its GRPOConfig on the 4-bit policy, LoRA dropout 0.05,
    # rollouts by TRL's generate, gradient checkpointing on, the LM head as transformers loads it
    "kit-4bit": {"config": "kit", "grpo": {"load_in_4bit": True, "rollouts": "trl", "gradient_checkpointing": True},
                 "lora": {"lora_dropout": 0.05},
                 "contiguous_head": False, "packed": False},
    # the recipe without packed Linear weights for rollouts (before 2026-12-06, session 14)
    "kit-unpacked": {"config": "kit", "packed": False},
    # the recipe without the contiguous LM-head input (before 2026-12-06, session 12)
    "kit-plain-head": {"config": "kit", "contiguous_head": False},
    # the recipe with TRL's generate for rollouts instead of the kit's loop (grpo.rollouts: trl; before 2026-12-06,
    # session 14)
    "kit-trl-rollouts": {"config": "kit", "grpo": {"rollouts": "trl"}},
    # the recipe scoring every position through the LM head, prompt included (grpo.compact_lm_head false)
    "kit-full-lm-head": {"config": "kit", "grpo": {"compact_lm_head": False}},
    "kit-bf16": {"config": "kit", "grpo": {"bf16": True}},
    # the recipe with gradient checkpointing (TRL's default; before 2026-12-06, session 14)
    "kit-gc": {"config": "kit", "grpo": {"gradient_checkpointing": True}},
    # LoRA on the full-precision base (grpo.load_in_4bit false): rollouts without 4-bit dequantization
    "kit-fp32-base": {"config": "kit", "grpo": {"load_in_4bit": False}, "model": {"generation_dtype": "float32"}},
    "kit-bf16-base": {"config": "kit", "grpo": {"load_in_4bit": False}, "model": {"generation_dtype": "bfloat16"}},
    # LoRA dropout off (lora: recipe.lora changes): TRL rolls out with the policy in train mode, so the
    # adapters' dropout masks are drawn during generation too
    "kit-no-lora-dropout": {"config": "kit", "lora": {"lora_dropout": 0.0}},
    "kit-lora-dropout-0.05": {"config": "kit", "lora": {"lora_dropout": 0.05}},
    "kit-bf16-base-no-lora-dropout": {"config": "kit", "grpo": {"load_in_4bit": False},
                                      "model": {"generation_dtype": "bfloat16"}, "lora": {"lora_dropout": 0.0}},
}
QUICK_ARMS = ["default", "kit", "kit-4bit", "kit-trl-rollouts"]


class CountingReward:
    """The kit's reward, unchanged, that also records the generated tokens of each call (one per step)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.tokens, self.__name__ = inner, [], inner.__name__

    def __call__(self, *args: Any, completion_ids: list | None = None, **kw: Any) -> list[float]:
        self.tokens.append(sum(len(c) for c in completion_ids or []))
        return self.inner(*args, **kw)


def _grpo_args(spec: dict, recipe: Any, out: str, steps: int, device: str) -> Any:
    from trl import GRPOConfig

    from sinternal_lib.grpo import training_configs

    g = recipe.grpo
    if spec["config"] == "kit":
        kit = dataclasses.replace(recipe, grpo=dataclasses.replace(g, max_steps=steps),
                                  model=dataclasses.replace(recipe.model, device=device))
        return training_configs(kit, out)["grpo"]
    return GRPOConfig(output_dir=out, use_cpu=device == "cpu", report_to="none", num_generations=g.num_generations,
                      max_completion_length=g.max_completion_length, max_steps=steps, seed=recipe.run.seed,
                      per_device_train_batch_size=g.per_device_train_batch_size,
                      gradient_accumulation_steps=g.gradient_accumulation_steps, disable_tqdm=True)


def run_arm(name: str, recipe: Any, steps: int, device: str) -> dict:
    """One arm, in its own process: load the policy as grpo.train_from_init does, train `steps` GRPO steps."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback

    from sinternal_lib.compact_loss import compact_lm_head
    from sinternal_lib.judges import make_judge
    from sinternal_lib.models import load_model, lora_config
    from sinternal_lib.packed_linear import packed_linears
    from sinternal_lib.grpo import build_prompt_mix, trainer_class
    from sinternal_lib.grpo_rewards import VerifierReward
    from transformers import set_seed

    spec = ARMS[name]
    g = dataclasses.replace(recipe.grpo, **spec.get("grpo", {}))
    m = dataclasses.replace(recipe.model, **spec.get("model", {}))
    recipe = dataclasses.replace(recipe, grpo=g, model=m, lora=dataclasses.replace(recipe.lora, **spec.get("lora", {})))
    set_seed(recipe.run.seed)
    t0 = time.perf_counter()
    four_bit = m.load_in_4bit and g.load_in_4bit  # as grpo.training_configs / train_from_init
    # the kit's loads copy the LM head's input slice first (models.contiguous_lm_head: docs/LOG.md, 2026-12-06,
    # session 12); the default arm loads the head as transformers does
    model, tok = load_model(m.policy, dtype=m.dtype if four_bit else m.generation_dtype, device=device,
                            load_in_4bit=four_bit, trainable=True, gradient_checkpointing=g.gradient_checkpointing,
                            contiguous_head=spec.get("contiguous_head", spec["config"] == "kit"))
    load_s = time.perf_counter() - t0
    rows = build_prompt_mix(g, recipe.run.seed, m.system_prompt)
    reward = CountingReward(VerifierReward(make_judge(recipe.judge)))
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the kit's arms: the trainer grpo.build_trainer builds (rollouts by recipe grpo.rollouts); default: TRL's
        trainer = trainer_class(g.rollouts if spec["config"] == "kit" else "trl")(model=model, reward_funcs=[reward], train_dataset=Dataset.from_list(rows),
                              args=_grpo_args(spec, recipe, out, steps, device), processing_class=tok,
                              peft_config=lora_config(recipe.lora),
                              callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        # the kit's arms score only completion positions through the LM head (grpo.compact_lm_head), as
        # grpo.train_prepared trains; the default arm as TRL does on CPU (every position)
        # and their Linear layers run on packed weights where autograd is off (packed_linear, session 14)
        with (compact_lm_head(spec["config"] == "kit" and g.compact_lm_head) as compact,
              packed_linears(model, enabled=spec.get("packed", spec["config"] == "kit")) as packed):
            trainer.train()
    n = len(marks) - 1
    wall = marks[-1] - marks[0]
    steady = marks[-1] - marks[1] if n > 1 else wall
    tok_steady = sum(reward.tokens[1:n]) if n > 1 else sum(reward.tokens)
    return {"arm": name, "steps": n, "wall_s": round(wall, 1), "load_s": round(load_s, 1),
            "s_per_step": round(wall / max(1, n), 2), "s_per_step_steady": round(steady / max(1, n - 1), 2),
            "completions_per_step": g.per_device_train_batch_size * g.gradient_accumulation_steps,
            "gen_tokens": sum(reward.tokens[:n]),
            "gen_tokens_per_s": round(tok_steady / steady, 1), "bf16": True if spec["config"] == "default" else g.bf16,
            "gradient_checkpointing": g.gradient_checkpointing,
            "rollouts_by": getattr(trainer, "rollouts_by", "trl"), "compact_lm_head": compact,
            "packed_layers": packed}


def main(argv: list[str] | None = None) -> dict:
    a = bl.arm_parser(__doc__, ARMS, 3, "tiny random model, 2 steps, default vs kit (tests)").parse_args(argv)
    recipe = bl.bench_recipe(a, "grpo")
    steps, arms = (2, a.arms or QUICK_ARMS) if a.quick else (a.steps, a.arms or list(ARMS))
    results = []
    for name in arms:
        print(f"arm {name} ...", flush=True)
        r = bl.run_in_child(run_arm, name, recipe, steps, a.device, device=a.device)
        results.append({"arm": name, **r})
        print(f"  {r.get('error') or str(r.get('s_per_step')) + ' s/step'}", flush=True)
    base = next((r for r in results if r["arm"] == "default" and "error" not in r), None)
    for r in results:
        # time ratio as a speed-up: default seconds per step / arm seconds per step (> 1 = faster)
        r["step_speedup"] = bl.ratio(base and base["s_per_step_steady"], r.get("s_per_step_steady"))
        r["tokens_ratio"] = bl.ratio(r.get("gen_tokens_per_s"), base and base["gen_tokens_per_s"])
        r["mem_ratio"] = bl.ratio(r.get("peak_mem_mb"), base and base["peak_mem_mb"])
    kit = next((r for r in results if r["arm"] == "kit"), {})
    before = next((r for r in results if r["arm"] == "kit-4bit" and "error" not in r), None)
    vs_before = bl.ratio(before and before["s_per_step_steady"], kit.get("s_per_step_steady"))
    trl_roll = next((r for r in results if r["arm"] == "kit-trl-rollouts" and "error" not in r), None)
    vs_trl_roll = bl.ratio(trl_roll and trl_roll["s_per_step_steady"], kit.get("s_per_step_steady"))
    plain = next((r for r in results if r["arm"] == "kit-plain-head" and "error" not in r), None)
    vs_plain_head = bl.ratio(plain and plain["s_per_step_steady"], kit.get("s_per_step_steady"))

    ratios = [{"what": "GRPO step speed-up, kit vs default GRPOConfig on the 4-bit policy (default s/step / kit s/step)",
               "ratio": kit.get("step_speedup"), "goal": ">= 1.5", "met": bl.met(kit.get("step_speedup"), 1.5)},
              {"what": "GRPO step speed-up, kit vs the kit on the 4-bit policy (before 2026-12-06)",
               "ratio": vs_before, "goal": ">= 3", "met": bl.met(vs_before, 3)},
              {"what": "GRPO generated tokens/s, kit vs default GRPOConfig", "ratio": kit.get("tokens_ratio"),
               "goal": None, "met": None},
              {"what": "GRPO step speed-up, the kit's own rollouts (grpo.rollouts: kit) vs TRL's generate in the kit's config",
               "ratio": vs_trl_roll, "goal": None, "met": None}]
    if plain:  # not in the quick arms
        ratios.append({"what": "GRPO step speed-up, kit vs the kit with the LM head as transformers loads it "
                               "(models.contiguous_lm_head)", "ratio": vs_plain_head, "goal": None, "met": None})
    g = recipe.grpo
    prompts = g.per_device_train_batch_size * g.gradient_accumulation_steps // g.num_generations
    result = {"benchmark": "GRPO speed: kit vs default TRL GRPOConfig", "model": recipe.model.policy,
              "quick": a.quick, "steps": steps, "num_generations": g.num_generations,
              "prompts_per_step": prompts, "max_completion_length": g.max_completion_length,
              "machine": bl.machine(), "arms": results, "ratios": ratios}
    cols = ["arm", "rollouts_by", "steps", "s_per_step", "s_per_step_steady", "step_speedup", "gen_tokens", "gen_tokens_per_s",
            "tokens_ratio", "peak_mem_mb", "mem_ratio", "error"]
    notes = [f"{prompts} prompts x {g.num_generations} completions per step, at most "
             f"{g.max_completion_length} new tokens; steady figures exclude step 1",
             "completion lengths differ between arms (sampling), so compare tokens/s as well as s/step",
             f"the kit arm writes a checkpoint every {g.save_steps} steps (recipe grpo.save_steps), the default "
             "every 500: its step times include that I/O"]
    bl.write_results("grpo", result, results, cols, a.out_dir, notes)
    return result


if __name__ == "__main__":
    main()
