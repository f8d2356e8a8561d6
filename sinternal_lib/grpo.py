"""GRPO with verifier rewards (paper step 6), from several initialisations.

Prompt mix: harmful, benign and math prompts from the embedded train splits (fractions from
`recipe.grpo`, seeded). Rewards use the evaluation's own scorers, never a second implementation:
harmful -> V_safe; benign -> V_safe * (1 - V_refuse), with V_safe = [judge label == "safe"] and
V_refuse = [judge says refused] from `judges.make_judge(recipe.judge)`; math -> `math_grading.grade_math`.
Inits: "base" (fresh LoRA), "answer_centric" / "sinternal" (continue the 03_sft/<init>/adapter).

Files per init under 04_grpo/<init>/: `adapter/` (LoRA + tokenizer), `checkpoints/` (every save_steps;
training resumes from the last one), `rewards.csv` (one row per step: step, n, mean_reward,
safe_rate_harmful, refusal_rate_benign, math_accuracy, n_harmful, n_benign, n_math; a rate is empty
when the step had no prompt of that kind), `rollout_rewards.jsonl` (one row per rollout: step,
prompt_id, kind, generation, reward, v_safe, v_refuse, correct, completion (first
grpo_rewards.ROLLOUT_CHARS characters), completion_chars; for comparisons of inits paired by prompt at
equal steps, and for showing one rollout group), `summary.json` (written last; see `train_from_init`). Rewards and their logs:
`grpo_rewards`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .compact_loss import compact_lm_head
from .datasets import load_embedded
from .grpo_rewards import KINDS, ROLLOUTS, RewardLog, VerifierReward, read_rewards, reward_band
from .judges import Judge, make_judge
from .models import decode_attention, load_model, lora_config, pick_device, policy_quantization
from .packed_linear import packed_linears
from .precision import resolve_bf16
from .recipe_sections import GRPO_TRL_FIELDS, GrpoConfig, Recipe
from .runs import Run, StageIncomplete, atomic_write_json, hash_path, last_complete_checkpoint, stage_for

INITS = ("base", "answer_centric", "sinternal")


# --------------------------------------------------------------------------- prompt mix
def mix_counts(num_prompts: int, fractions: dict[str, float]) -> dict[str, int]:
    """Split `num_prompts` over kinds by (normalised) fractions; rounding remainders go to the largest."""
    total = sum(fractions.values())
    if total <= 0:
        raise ValueError("grpo: harmful_fraction + benign_fraction + math_fraction must be > 0")
    raw = {k: num_prompts * f / total for k, f in fractions.items()}
    counts = {k: int(math.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[: num_prompts - sum(counts.values())]:
        counts[k] += 1
    return counts


def build_prompt_mix(grpo: GrpoConfig, seed: int, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """Seeded GRPO training rows from the embedded train splits, interleaved so each step keeps the mix.

    Row: {"prompt": [messages], "kind", "reference" (math answer or ""), "prompt_text", "category",
    "prompt_id"}. A kind with fewer train prompts than asked is cycled (each pass reshuffled).
    """
    rng = random.Random(seed)
    counts = mix_counts(grpo.num_train_prompts, {"harmful": grpo.harmful_fraction,
                                                 "benign": grpo.benign_fraction, "math": grpo.math_fraction})
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        pool = load_embedded(kind, "train")
        if counts[kind] and not pool:
            raise ValueError(f"no embedded {kind} train prompts")
        picked: list[Any] = []
        while len(picked) < counts[kind]:
            picked += rng.sample(pool, len(pool))
        msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
        by_kind[kind] = [{"prompt": msgs + [{"role": "user", "content": rec.prompt}], "kind": kind,
                          "reference": str(rec.reference or ""), "prompt_text": rec.prompt,
                          "category": rec.category or "", "prompt_id": rec.id} for rec in picked[: counts[kind]]]
    return interleave(by_kind, counts)


def interleave(by_kind: dict[str, list[Any]], counts: dict[str, int]) -> list[Any]:
    """Merge per-kind lists so that every window of consecutive rows keeps the overall mix.

    Smooth weighted round robin: at each position take the kind furthest behind its share. With the
    dataset read in order (`shuffle_dataset=False`), every GRPO step then sees the same kind mix, so the
    per-step mean reward is comparable across steps (a shuffled mix makes it jump with the composition).
    """
    total = sum(counts.values())
    taken = {k: 0 for k in by_kind}
    out: list[Any] = []
    for pos in range(1, total + 1):
        kind = max((k for k in by_kind if taken[k] < counts[k]),
                   key=lambda k: (pos * counts[k] / total - taken[k], counts[k]))
        out.append(by_kind[kind][taken[kind]])
        taken[kind] += 1
    return out


# --------------------------------------------------------------------------- training
def training_configs(recipe: Recipe, output_dir: str | Path) -> dict[str, Any]:
    """The configs an init trains with: {"quantization": BitsAndBytesConfig or None (the base model),
    "lora": peft LoraConfig (the fresh adapter of the "base" init; SFT inits bring their own),
    "grpo": trl GRPOConfig (checkpoints under `output_dir`)}.

    The grpo keys named in GRPO_TRL_FIELDS go to GRPOConfig unchanged; the rest are fixed by the kit. One
    optimizer step trains on per_device_train_batch_size x gradient_accumulation_steps completions (TRL's
    generation batch, e.g. paper 64 prompts x 8 rollouts = 512).
    """
    from trl import GRPOConfig  # here, not at the top: trl takes seconds to import

    g, seed = recipe.grpo, recipe.run.seed
    args = GRPOConfig(
        output_dir=str(output_dir), **{f: getattr(g, f) for f in GRPO_TRL_FIELDS}
        | {"bf16": resolve_bf16(g.bf16, pick_device(recipe.model.device))},  # auto: by measurement
        lr_scheduler_type="constant",  # not in paper: short runs, no decay to zero
        shuffle_dataset=False,  # rows are pre-shuffled and interleaved so each step keeps the kind mix
        save_strategy="steps", logging_steps=1, seed=seed, data_seed=seed,
        use_cpu=pick_device(recipe.model.device) == "cpu", report_to=[], disable_tqdm=True,
        # model.generation_engine vllm: TRL rolls out on vLLM in the training process (colocate)
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": recipe.model.vllm_memory_fraction}
           if recipe.model.generation_engine == "vllm" else {}),
    )
    quant = policy_quantization(recipe, for_training=True) if g.load_in_4bit else None
    return {"quantization": quant, "lora": lora_config(recipe.lora), "grpo": args}


def trainer_class(rollouts: str) -> type:
    """The trainer for recipe `grpo.rollouts`: TRL's `GRPOTrainer` ("trl"), or the kit's `KitRolloutTrainer`
    ("kit", grpo_rollouts.py)."""
    from trl import GRPOTrainer  # here, not at the top: trl takes seconds to import

    from .grpo_rollouts import KitRolloutTrainer  # here, like TRL: it imports TRL

    return KitRolloutTrainer if rollouts == "kit" else GRPOTrainer


def build_trainer(recipe: Recipe, model: Any, tok: Any, judge: Judge, output_dir: str | Path, *,
                  lora: Any = None, log: RewardLog | None = None, extra_reward_funcs: list[Any] | None = None,
                  configs: dict[str, Any] | None = None) -> Any:
    """A GRPOTrainer on the recipe's prompt mix with the verifier reward (plus `extra_reward_funcs`, tests);
    with `grpo.rollouts: kit` its rollouts run through the kit's decode loop (grpo_rollouts.py).

    `lora`: the LoraConfig of a fresh adapter (`peft_config=`, the "base" init); None when `model` carries
    the adapter to train. `configs` from `training_configs` when already built.
    """
    from datasets import Dataset

    from .progress import quiet_trainer  # here, like TRL: transformers takes seconds to import

    rows = build_prompt_mix(recipe.grpo, recipe.run.seed, recipe.model.system_prompt)
    args = (configs or training_configs(recipe, output_dir))["grpo"]
    trainer = trainer_class(recipe.grpo.rollouts)(
        model=model, reward_funcs=[VerifierReward(judge, log), *(extra_reward_funcs or [])], args=args,
        peft_config=lora, train_dataset=Dataset.from_list(rows), processing_class=tok)
    return quiet_trainer(trainer, "GRPO steps")  # per-step logs go to rewards.csv and trainer.state.log_history


def init_config_hash(recipe: Recipe, init: str, adapter: str | Path | None) -> str:
    """Hash of what decides one init's training (model, judge, lora, grpo, seed, source adapter)."""
    d = recipe.to_dict()
    key = {s: d[s] for s in ("model", "judge", "lora", "grpo")}
    key.update(seed=recipe.run.seed, init=init, adapter=hash_path(adapter) if adapter else None)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_from_init(recipe: Recipe, init: str, out_dir: str | Path, *, adapter: str | Path | None = None,
                    judge: Judge | None = None, resume: bool = True) -> dict[str, Any]:
    """GRPO from one initialisation; writes out_dir/{adapter/, checkpoints/, rewards.csv, summary.json}.

    `adapter=None` trains a fresh LoRA (the recipe's lora section, as the trainer's `peft_config`); otherwise
    the SFT adapter is trained further.
    A finished init (summary.json with the same config hash) is returned as is; an unfinished one resumes
    from its last checkpoint. With `run.launcher` other than single the training runs as a job of
    `run.num_processes` processes (launch.py) that rank 0 writes for; this process prepares the folder first.
    Returns the summary: init, source_adapter, steps, first/last mean reward and parts, reward_delta, wall_s,
    s_per_step, resumed_from.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chash = init_config_hash(recipe, init, adapter)
    summary_path = out / "summary.json"
    if summary_path.is_file():
        old = json.loads(summary_path.read_text(encoding="utf-8"))
        if old.get("config_hash") == chash and (out / "adapter").is_dir():
            return old
        summary_path.unlink()
    ckpt_dir = out / "checkpoints"
    last = last_complete_checkpoint(ckpt_dir) if resume else None
    meta_path = out / "config_hash.txt"
    if last and (not meta_path.is_file() or meta_path.read_text().strip() != chash):
        last = None  # checkpoints from another config: start over
    if last is None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        (out / "rewards.csv").unlink(missing_ok=True)
    meta_path.write_text(chash + "\n")
    if recipe.run.launcher != "single":
        from .launch import train_init_launched  # here: launch.py runs train_prepared in each process

        cache = judge.cache.path.parent if judge is not None and judge.cache is not None else None
        return train_init_launched(recipe, init, out, adapter=adapter, last=last, judge_cache=cache)
    return train_prepared(recipe, init, out, adapter=adapter, judge=judge, last=last)


def train_prepared(recipe: Recipe, init: str, out: Path, *, adapter: str | Path | None, judge: Judge | None,
                   last: str | None) -> dict[str, Any]:
    """Train one init in a folder `train_from_init` prepared (resuming from checkpoint `last` if given).
    In a launched job every process trains and only rank 0 writes the logs, the adapter and the summary."""
    from transformers import set_seed  # here, not at the top: transformers takes seconds to import

    g, m = recipe.grpo, recipe.model
    writer = int(os.environ.get("RANK", "0")) == 0
    device = pick_device(m.device)
    set_seed(recipe.run.seed)
    configs = training_configs(recipe, out / "checkpoints")
    # A full-precision base (grpo.load_in_4bit false) rolls out with the generation weights' dtype.
    dtype = m.dtype if configs["quantization"] is not None else m.generation_dtype
    model, tok = load_model(m.policy, dtype=dtype, device=device, quantization_config=configs["quantization"],
                            adapter=adapter, trainable=True, gradient_checkpointing=g.gradient_checkpointing)
    judge = judge or make_judge(recipe.judge)
    done_steps = int(Path(last).name.split("-")[-1]) if last else None
    log = RewardLog(out / "rewards.csv", keep_until_step=done_steps) if writer else None
    trainer = build_trainer(recipe, model, tok, judge, out / "checkpoints", lora=None if adapter else configs["lora"],
                            log=log, configs=configs)
    t0 = time.time()
    # decode_attention: rollouts dominate a GRPO step, and cuDNN attention slows bf16 decoding on CUDA;
    # packed_linears: the rollouts' Linear layers on oneDNN-packed weights on a CPU (training keeps F.linear)
    with (warnings.catch_warnings(), decode_attention(device), packed_linears(model),
          compact_lm_head(g.compact_lm_head) as compact):
        # transformers 5 renames gradient checkpointing: one warning per step
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
        trainer.train(resume_from_checkpoint=last)
    wall = time.time() - t0
    if not writer:
        return {}
    trainer.model.save_pretrained(out / "adapter")
    tok.save_pretrained(out / "adapter")
    steps_run = trainer.state.global_step - (done_steps or 0)
    summary = summarise_curve(read_rewards(out / "rewards.csv"))
    summary.update(init=init, source_adapter=str(adapter) if adapter else None,
                   config_hash=(out / "config_hash.txt").read_text().strip(), resumed_from=last,
                   wall_s=round(wall, 1), s_per_step=round(wall / steps_run, 2) if steps_run > 0 else None,
                   rollouts_per_step=configs["grpo"].generation_batch_size,
                   rollouts_by=getattr(trainer, "rollouts_by", "trl"), compact_lm_head=compact)
    atomic_write_json(out / "summary.json", summary)  # last: marks the init as finished
    return summary


def summarise_curve(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """First/last step's mean reward and parts from rewards.csv rows, plus the change."""
    rows = sorted(rows, key=lambda r: r["step"])
    if not rows:
        return {"steps": 0}
    first, last = rows[0], rows[-1]
    parts = ("mean_reward", "safe_rate_harmful", "refusal_rate_benign", "math_accuracy")
    out: dict[str, Any] = {"steps": last["step"]}
    for p in parts:
        out[f"first_{p}"], out[f"last_{p}"] = first.get(p), last.get(p)
    out["reward_delta"] = (last["mean_reward"] - first["mean_reward"]
                           if None not in (first["mean_reward"], last["mean_reward"]) else None)
    return out


# --------------------------------------------------------------------------- stage orchestration
def plan_inits(run: Run, inits: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """For each init: {"adapter": Path | None, "skip": reason | None}. Missing SFT adapters are skipped."""
    plan: dict[str, dict[str, Any]] = {}
    for init in inits or run.recipe.grpo.inits:
        if init not in INITS:
            raise ValueError(f"unknown GRPO init {init!r}; choose from {INITS}")
        if init == "base":
            plan[init] = {"adapter": None, "skip": None}
            continue
        try:
            plan[init] = {"adapter": run.require("sft", f"{init}/adapter"), "skip": None}
        except StageIncomplete as e:
            plan[init] = {"adapter": None, "skip": f"skipped: no SFT adapter for {init!r} ({e})"}
    return plan


def reward_curves(run: Run, inits: list[str]) -> dict[str, list[dict[str, Any]]]:
    """rewards.csv rows of each trained init (for training_plots.grpo_reward_curves), each with the
    step's 95% band over prompts (`band_lo`, `band_hi`) where rollout_rewards.jsonl was kept."""
    d = run.stage_dir("grpo")
    out = {}
    for i in inits:
        if not (d / i / "rewards.csv").is_file():
            continue
        band = reward_band(d / i / ROLLOUTS) if (d / i / ROLLOUTS).is_file() else {}
        out[i] = [{**r, "band_lo": (band.get(r["step"]) or {}).get("lo"), "band_hi": (band.get(r["step"]) or {}).get("hi")}
                  for r in read_rewards(d / i / "rewards.csv")]
    return out


def stage_summary(run: Run, plan: dict[str, dict[str, Any]], results: dict[str, dict]) -> dict[str, Any]:
    """The metrics.json `grpo` section: per init, skipped inits with their reason, and a headline."""
    skipped = {i: p["skip"] for i, p in plan.items() if p["skip"]}
    headline: dict[str, Any] = {}
    for init, r in results.items():
        a, b = r.get("first_mean_reward"), r.get("last_mean_reward")
        headline[f"reward {init}"] = f"{a:.2f} -> {b:.2f}" if None not in (a, b) else "n/a"
    headline.update({f"reward {i}": "skipped (no SFT adapter)" for i in skipped})
    return {"inits": {i: {k: v for k, v in r.items() if k != "config_hash"} for i, r in results.items()},
            "skipped": skipped, "config": asdict(run.recipe.grpo), "headline": headline}


def run(run: Run, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Stage 04: GRPO from every planned init with the same seed and budget (a finished init of the same
    config is reused, an interrupted one resumes), then the `grpo` metrics section and the manifest (last)."""
    stage = stage_for(run, "grpo")
    if (why := stage.begin()):
        log(why)
    plan = plan_inits(run)
    judge = make_judge(run.recipe.judge, cache_dir=stage.dir / "judge_cache")
    results: dict[str, dict] = {}
    for init, p in plan.items():
        if p["skip"]:
            log(f"{init}: {p['skip']}")
            continue
        log(f"{init}: GRPO from {p['adapter'] or 'a fresh LoRA'}")
        results[init] = train_from_init(run.recipe, init, stage.dir / init, adapter=p["adapter"], judge=judge)
    summary = stage_summary(run, plan, results)
    outputs = [f"{i}/{f}" for i in results for f in ("adapter", "rewards.csv", "summary.json")]
    outputs += [f"{i}/{ROLLOUTS}" for i in results if (stage.dir / i / ROLLOUTS).is_file()]  # absent: init finished before it existed
    stage.finish(outputs=outputs, summary=summary)
    return summary
