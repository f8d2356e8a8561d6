"""Verification SFT (paper step 5) with QLoRA, its ablations, and the answer-centric baseline.

Each variant trains a fresh LoRA (`peft_config=`) on the 4-bit NF4 base with TRL's `SFTTrainer` (all
three configs from `training_configs`) on conversational prompt/completion rows from stage 02, so the
loss falls on the completion only (critique + verdict for
"sinternal"; verdict line for "verdict_only"; critique for "critique_only"; an own judged-safe answer for
"answer_centric"). All variants share one recipe and one step budget. Outputs per variant under
`03_sft/<variant>/`: `adapter/` (LoRA + tokenizer), `checkpoints/` (every save_steps; an interrupted
run resumes from the last one), `loss.csv`, eval rows, and `summary.json` written last (a variant with
one is skipped). Departure from the paper, for small models: `sft.chat_mix_fraction` mixes a share of the
policy's own judged-safe chat answers into verification data, so the verifier format does not take over
ordinary chat (paper: verification data only). Over-long rows are dropped (never truncated: TRL keeps
the start, which would cut the target off), and the count is reported.
"""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import jsonl
from .compact_loss import compact_lm_head
from .datasets import Record, load_embedded
from .diagnose import human_pairs
from .judges import Judge, make_judge
from .loaders import BenchmarkMissing
from .metrics import chat_safety
from .models import load_policy, lora_config, pick_device, policy_quantization
from .recipe_sections import SFT_TRL_FIELDS, Recipe, SftConfig
from .runs import Run, atomic_write_json, hash_path, last_complete_checkpoint, stage_for
from .spec import spec_text
from .stages import STAGES
from .verification import verification_metrics, verify_pairs

VERIFICATION_VARIANTS = ("sinternal", "verdict_only", "critique_only", "other_exp")
ANSWER_CENTRIC = "answer_centric"
ALL_VARIANTS = VERIFICATION_VARIANTS + (ANSWER_CENTRIC,)
CHAT_POOL = "answer_centric.jsonl"  # stage-02 file: own judged-safe chat answers
HELDOUT_PAIRS = "heldout_pairs.jsonl"
SUMMARY = "summary.json"
CONFIG_KEY = "config_key.txt"  # per variant folder: checkpoints and summary belong to this config
HEADLINE_KEYS = ("balanced_accuracy", "macro_f1")


# ----------------------------------------------------------------------------- data
def variant_file(variant: str) -> str:
    """Stage-02 file (relative to 02_build_data/) that a variant trains on."""
    if variant == ANSWER_CENTRIC:
        return CHAT_POOL
    if variant in VERIFICATION_VARIANTS:
        return f"verification/{variant}.jsonl"
    raise ValueError(f"unknown SFT variant {variant!r}; known: {ALL_VARIANTS} (recipe key sft.variants)")


def mix_chat(rows: Sequence[dict], chat_pool: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """Add own chat rows so that they make up `fraction` of the result (takeover guard).

    n_chat = round(fraction * n / (1 - fraction)), drawn without replacement from `chat_pool` (cycled
    in a fresh seeded order when the pool is smaller). Mixed rows get `"mixed_chat": True`.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"sft.chat_mix_fraction must be in [0, 1), got {fraction}")
    n_chat = round(fraction * len(rows) / (1 - fraction)) if rows else 0
    if n_chat and not chat_pool:
        raise ValueError(f"sft.chat_mix_fraction={fraction} but the chat pool ({CHAT_POOL}) is empty")
    rng = random.Random(seed)
    picked: list[dict] = []
    while len(picked) < n_chat:
        order = list(chat_pool)
        rng.shuffle(order)
        picked += order[: n_chat - len(picked)]
    return list(rows) + [dict(r, mixed_chat=True) for r in picked]


def prompt_completion_ids(tok: Any, row: dict) -> tuple[list[int], list[int]]:
    """Token ids of a row's prompt (with the generation prompt) and of prompt + completion, via the
    chat template (the same rendering TRL uses for conversational prompt/completion rows)."""
    prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    return (tok(prompt, add_special_tokens=False)["input_ids"], tok(full, add_special_tokens=False)["input_ids"])


def build_dataset(rows: Sequence[dict], tok: Any, max_length: int, seed: int = 0) -> tuple[Any, dict[str, int]]:
    """Shuffled `datasets.Dataset` of {prompt, completion} rows, dropping rows longer than max_length.

    Returns (dataset, counts) with counts {rows, kept, dropped_too_long, mixed_chat, completion_tokens}.
    """
    from datasets import Dataset  # here, not at the top: HF datasets, trl and transformers take seconds

    kept, dropped, comp_tokens = [], 0, 0
    for r in rows:
        p, full = prompt_completion_ids(tok, r)
        if len(full) > max_length:
            dropped += 1
            continue
        comp_tokens += len(full) - len(p)
        kept.append({"prompt": r["prompt"], "completion": r["completion"]})
    if not kept:
        raise ValueError(f"all {len(rows)} rows are longer than sft.max_length={max_length} tokens; raise it")
    random.Random(seed).shuffle(kept)
    counts = {"rows": len(rows), "kept": len(kept), "dropped_too_long": dropped,
              "mixed_chat": sum(bool(r.get("mixed_chat")) for r in rows), "completion_tokens": comp_tokens}
    return Dataset.from_list(kept), counts


def variant_rows(run: Run, variant: str, cfg: SftConfig, seed: int) -> list[dict]:
    """A variant's training rows from stage 02, with own chat mixed into verification variants."""
    rows = jsonl.read(run.require("build_data", variant_file(variant)))
    if variant == ANSWER_CENTRIC or cfg.chat_mix_fraction == 0:
        return rows
    return mix_chat(rows, jsonl.read(run.require("build_data", CHAT_POOL)), cfg.chat_mix_fraction, seed)


def available_variants(run: Run, variants: Sequence[str]) -> list[str]:
    """The recipe's variants, plus "other_exp" whenever stage 02 built its file."""
    out = list(variants)
    other = run.path / STAGES["build_data"].folder / variant_file("other_exp")
    if "other_exp" not in out and other.is_file():
        out.append("other_exp")
    for v in out:
        variant_file(v)  # unknown names fail here, naming the recipe key
    return out


# ----------------------------------------------------------------------------- training
def training_configs(recipe: Recipe, output_dir: str | os.PathLike) -> dict[str, Any]:
    """The configs a variant trains with: {"quantization": BitsAndBytesConfig or None (the base model),
    "lora": peft LoraConfig (the fresh adapter), "sft": trl SFTConfig (checkpoints under `output_dir`)}.

    The sft keys named in SFT_TRL_FIELDS go to SFTConfig unchanged; the rest are fixed by the kit.
    """
    from trl import SFTConfig

    cfg, seed = recipe.sft, recipe.run.seed
    args = SFTConfig(
        output_dir=str(output_dir), **{f: getattr(cfg, f) for f in SFT_TRL_FIELDS},
        completion_only_loss=True,  # loss on the critique + verdict (the completion) only
        max_length=None,  # build_dataset drops rows over sft.max_length, so TRL has nothing to truncate
        packing=False, save_strategy="steps", save_total_limit=2, seed=seed, data_seed=seed,
        use_cpu=pick_device(recipe.model.device) == "cpu", report_to="none",
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, disable_tqdm=True,
    )
    return {"quantization": policy_quantization(recipe, for_training=True), "lora": lora_config(recipe.lora),
            "sft": args}


def loss_rows(log_history: Sequence[dict]) -> list[dict]:
    """Training-loss log entries as rows {step, epoch, loss, learning_rate, grad_norm}."""
    return [{"step": e["step"], "epoch": e.get("epoch"), "loss": e["loss"],
             "learning_rate": e.get("learning_rate"), "grad_norm": e.get("grad_norm")}
            for e in log_history if "loss" in e]


def write_loss_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["step", "epoch", "loss", "learning_rate", "grad_norm"])
        w.writeheader()
        w.writerows(rows)
    return path


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory allocated (cuda) or peak resident set size of this process (cpu), in MB."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def load_for_training(recipe: Recipe, quantization_config: Any = None) -> tuple[Any, Any]:
    """The recipe's policy prepared for training, without an adapter (4-bit NF4 base when
    model.load_in_4bit): the trainer adds the fresh LoRA from `training_configs(...)["lora"]`."""
    return load_policy(recipe, for_training=True, quantization_config=quantization_config)


def make_trainer(recipe: Recipe, model: Any, tok: Any, train_dataset: Any, output_dir: str | os.PathLike,
                 configs: dict[str, Any] | None = None) -> Any:
    """`SFTTrainer` for `model` (from `load_for_training`) with the recipe's SFTConfig and a fresh LoRA
    (`peft_config=`), checkpoints under `output_dir`; `configs` from `training_configs` when already built."""
    from trl import SFTTrainer

    configs = configs or training_configs(recipe, output_dir)
    return SFTTrainer(model=model, args=configs["sft"], peft_config=configs["lora"], train_dataset=train_dataset,
                      processing_class=tok)


def train_variant(recipe: Recipe, rows: Sequence[dict], out_dir: str | os.PathLike, *,
                  model: Any = None, tok: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """Train one variant's fresh LoRA on `rows`; save adapter, tokenizer and loss.csv under `out_dir`.

    Resumes from the newest checkpoint in `out_dir/checkpoints` when there is one. Pass a preloaded
    (model, tok) from `load_for_training` to reuse it; otherwise the base is loaded with
    `training_configs(...)["quantization"]`. Returns (trained PEFT model, tok, train stats).
    """
    cfg, out = recipe.sft, Path(out_dir)
    device = pick_device(recipe.model.device)
    ckpt_dir = out / "checkpoints"
    configs = training_configs(recipe, ckpt_dir)
    if model is None:
        model, tok = load_for_training(recipe, configs["quantization"])
    ds, counts = build_dataset(rows, tok, cfg.max_length, recipe.run.seed)
    resume = last_complete_checkpoint(ckpt_dir)
    trainer = make_trainer(recipe, model, tok, ds, ckpt_dir, configs)
    t0 = time.time()
    with compact_lm_head(cfg.compact_lm_head) as compact:
        result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - t0
    trainer.save_model(str(out / "adapter"))
    tok.save_pretrained(str(out / "adapter"))
    losses = loss_rows(trainer.state.log_history)
    write_loss_csv(losses, out / "loss.csv")
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    stats = {
        "steps": int(trainer.state.global_step), "resumed_from": Path(resume).name if resume else None,
        "train_loss_first": losses[0]["loss"] if losses else None,
        "train_loss_last": losses[-1]["loss"] if losses else None,
        "train_loss_mean": float(result.training_loss), "wall_s": round(wall, 1),
        "tokens_seen": tokens, "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "peak_mem_mb": round(peak_memory_mb(device), 1), "compact_lm_head": compact, "data": counts,
    }
    trainer.model.eval()
    return trainer.model, tok, stats


# ----------------------------------------------------------------------------- evaluation
def load_heldout_pairs(path: str | os.PathLike, n: int, seed: int = 0) -> list[dict]:
    """A seeded subsample of n held-out pairs, balanced safe/unsafe where the file allows it."""
    rows = jsonl.read(path)
    rng = random.Random(seed)
    by = {lab: [r for r in rows if r["label"] == lab] for lab in ("unsafe", "safe")}
    for v in by.values():
        rng.shuffle(v)
    take = min(len(by["unsafe"]), n // 2)
    picked = by["unsafe"][:take] + by["safe"][: n - take]
    picked += by["unsafe"][take: take + n - len(picked)]
    return sorted(picked, key=lambda r: r["id"])


def heldout_prompts(n: int, seed: int = 0) -> list[Record]:
    """n harmful + n benign test-split prompts (embedded sets), seeded subsample."""
    out: list[Record] = []
    for kind in ("harmful", "benign"):
        recs = load_embedded(kind, "test")
        out += random.Random(f"{seed}:{kind}").sample(recs, min(n, len(recs)))
    return out


def evaluate_variant(model: Any, tok: Any, spec_text: str, pairs: Sequence[dict], prompts: Sequence[Record],
                     judge: Judge, cfg: SftConfig, *, system_prompt: str | None = None, batch_size: int = 8,
                     human_sets: dict[str, list[dict]] | None = None
                     ) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """Held-out verification metrics and chat safety (ASR, compliance, takeover) for one model.

    `spec_text` must be the spec as stage 02 rendered it (`spec.spec_text(recipe)`), so held-out
    prompts match training prompts. `human_sets` (name -> pairs) are scored too, under
    `verification_human[name]`. Returns ({verification, verification_human, generation, takeover_rate},
    {"verification": rows, "chat": rows}); verification rows carry a `set` field.
    """
    def score(ps: Sequence[dict]) -> tuple[dict[str, Any], list[dict]]:
        rows = verify_pairs(model, tok, spec_text, ps, max_new_tokens=cfg.eval_max_new_tokens, batch_size=batch_size)
        return verification_metrics([r["label"] for r in rows], [r["verdict"] for r in rows],
                                    prompt_labels=[r.get("prompt_label") for r in rows]), rows

    ver, vrows = score(pairs)
    vrows = [{**r, "set": "policy-test-split"} for r in vrows]
    human: dict[str, Any] = {}
    for name, ps in (human_sets or {}).items():
        human[name], hrows = score(ps)
        vrows += [{**r, "set": name} for r in hrows]
    gen, crows = chat_safety(model, tok, list(prompts), judge, max_new_tokens=cfg.eval_max_new_tokens,
                             batch_size=batch_size, system_prompt=system_prompt)
    return {"verification": ver, "verification_human": human, "generation": gen,
            "takeover_rate": gen["takeover_rate"]}, {"verification": vrows, "chat": crows}


def eval_human_pairs(cfg: SftConfig, seed: int, log: Any = print) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """The recipe's human-labelled held-out sets ({name: pairs}); sets whose data is absent are skipped
    with the reason (the shared data folder is optional on a user's machine)."""
    sets: dict[str, list[dict]] = {}
    skipped: dict[str, str] = {}
    for name in cfg.eval_human_sets:
        try:
            sets[name] = human_pairs(name, cfg.eval_num_human_pairs, seed + 7)
        except BenchmarkMissing as e:
            skipped[name] = str(e).splitlines()[0]
            log(f"held-out human set {name} skipped: {skipped[name]}")
    return sets, skipped


# ----------------------------------------------------------------------------- the stage
def run(run: Run, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Stage 03: evaluate the base model, train + evaluate every variant (skipping those with
    summary.json), and finish the stage (metrics.json `sft` section, manifest last). Returns its summary."""
    recipe = run.recipe
    cfg, seed = recipe.sft, recipe.run.seed
    stage = stage_for(run, "sft")
    if (why := stage.begin()):
        log(why)
    spec = spec_text(recipe)
    judge = make_judge(recipe.judge, cache_dir=run.path / "judge_cache")
    pairs = load_heldout_pairs(run.require("build_data", HELDOUT_PAIRS), cfg.eval_num_pairs, seed)
    prompts = heldout_prompts(cfg.eval_num_prompts, seed)
    human, skipped = eval_human_pairs(cfg, seed, log)
    eval_kw = dict(system_prompt=recipe.model.system_prompt, batch_size=recipe.evaluate.batch_size,
                   human_sets=human)
    key = config_key(run, recipe)
    results: dict[str, dict] = {}
    for name in ["base"] + available_variants(run, cfg.variants):
        out = stage.dir / name
        if (out / CONFIG_KEY).is_file() and (out / CONFIG_KEY).read_text().strip() != key:
            log(f"{name}: recipe or stage-02 data changed since it ran; redoing it from scratch")
            shutil.rmtree(out)
        if (out / SUMMARY).is_file():
            results[name] = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
            log(f"{name}: finished earlier (summary.json present), skipped")
            continue
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_KEY).write_text(key + "\n")
        stats: dict[str, Any] = {"steps": 0}
        if name != "base":
            rows = variant_rows(run, name, cfg, seed)
            log(f"{name}: training on {len(rows)} rows")
            model, _, stats = train_variant(recipe, rows, out)
            del model  # evaluate on a fresh load: the adapter on the generation weights (models.load_policy)
        model, tok = load_policy(recipe, adapter=out / "adapter" if name != "base" else None)
        metrics, eval_rows = evaluate_variant(model, tok, spec, pairs, prompts, judge, cfg, **eval_kw)
        jsonl.write(eval_rows["verification"], out / "verification_eval.jsonl")
        jsonl.write(eval_rows["chat"], out / "chat_eval.jsonl")
        results[name] = {"variant": name, **stats, **metrics}
        atomic_write_json(out / SUMMARY, results[name])  # last: marks the variant done
        del model
        log(f"{name}: bal_acc {metrics['verification']['balanced_accuracy']:.2f} "
            f"takeover {metrics['takeover_rate']}")
    summary = stage_summary(results)
    if skipped:
        summary["human_sets_skipped"] = skipped
    stage.finish(outputs=[f"{n}/{SUMMARY}" for n in results], summary=summary)
    return summary


def config_key(run: Run, recipe: Recipe) -> str:
    """What a variant's checkpoints and summary depend on: the stage's recipe sections, the seed and
    stage 02's manifest. A variant folder with another key is redone, never resumed or reused."""
    upstream = hash_path(run.path / STAGES["build_data"].folder / "manifest.json")[:16]
    return f"{recipe.section_hash(*STAGES['sft'].sections)}-{recipe.run.seed}-{upstream}"


def _lean(s: dict) -> dict:
    """Per-variant entry for metrics.json (the verification block without per-row detail)."""
    keep = ("steps", "train_loss_first", "train_loss_last", "tokens_per_s", "peak_mem_mb", "wall_s",
            "takeover_rate", "data")
    fields = ("balanced_accuracy", "macro_f1", "f1", "accuracy", "no_verdict_rate", "n", "base_rate_unsafe",
              "ci95", "baselines")
    v = {k: s["verification"].get(k) for k in fields}
    human = {name: {k: m.get(k) for k in fields} for name, m in (s.get("verification_human") or {}).items()}
    return {**{k: s.get(k) for k in keep}, "verification": v, "verification_human": human,
            "generation": s["generation"]}


def stage_summary(results: dict[str, dict]) -> dict[str, Any]:
    """The metrics.json `sft` section: per model entries plus a headline (SInternal vs base)."""
    out: dict[str, Any] = {name: _lean(s) for name, s in results.items()}
    head: dict[str, Any] = {}
    for name in ("base", "sinternal"):
        if name in results:
            v = results[name]["verification"]
            for k in HEADLINE_KEYS:
                head[f"{name}_verify_{k}"] = round(v[k], 3)
            head[f"{name}_takeover"] = results[name]["takeover_rate"]
            head[f"{name}_asr"] = results[name]["generation"]["asr"]
            for hname, h in (results[name].get("verification_human") or {}).items():
                head[f"{name}_verify_{hname}_balanced_accuracy"] = round(h["balanced_accuracy"], 3)
    if results:
        po = next(iter(results.values()))["verification"]["baselines"].get("prompt_only")
        if po:
            head["prompt_only_verify_balanced_accuracy"] = round(po["balanced_accuracy"], 3)
    out["headline"] = head
    return out
