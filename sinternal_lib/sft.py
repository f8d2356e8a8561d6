"""Verification SFT (paper step 5) with QLoRA, its ablations, and the answer-centric baseline.

Each variant trains a fresh LoRA (`peft_config=`) on the 4-bit NF4 base with TRL's `SFTTrainer` (all
three configs from `training_configs`) on conversational prompt/completion rows from stage 02, so the
loss falls on the completion only (critique + verdict for
"sinternal"; verdict line for "verdict_only"; critique for "critique_only"; an own judged-safe answer for
"answer_centric"). All variants share one recipe and one step budget. Outputs per variant under
`03_sft/<variant>/`: `adapter/` (LoRA + tokenizer), `checkpoints/` (every save_steps; an interrupted
run resumes from the last one), `loss.csv`, `mixed_chat.jsonl`, eval rows, and `summary.json` written
last (a variant with one is skipped). Which rows each variant trains on, the chat mix against takeover
(`sft.chat_mix_fraction`, not in the paper) and Other-Exp's data: `sft_data`. Over-long rows are dropped
(never truncated: TRL keeps the start, which would cut the target off), and the count is reported.
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
from .forced_choice import forced_choice_eval
from .judges import Judge, make_judge
from .loaders import BenchmarkMissing
from .metrics import chat_safety
from .models import load_policy, lora_config, pick_device, policy_quantization, resolve_model_ref
from .precision import resolve_bf16
from .recipe_sections import SFT_TRL_FIELDS, Recipe, SftConfig
from .runs import Run, atomic_write_json, hash_path, last_complete_checkpoint, stage_for
from .sft_data import (MIXED_CHAT, OTHER_EXP, VariantSkipped, available_variants, build_dataset,
                       heldout_human_pairs, mixed_rows, prepare_other_exp, prompt_completion_ids, variant_data)
from .spec import spec_text
from .stages import STAGES
from .verification import verification_metrics, verify_pairs

HELDOUT_PAIRS = "heldout_pairs.jsonl"
FORCED_CHOICE_EVAL = "forced_choice_eval.jsonl"  # per model folder: id, label, p_unsafe, set
SUMMARY = "summary.json"
CONFIG_KEY = "config_key.txt"  # per variant folder: checkpoints and summary belong to this config
HEADLINE_KEYS = ("balanced_accuracy", "macro_f1")


# ----------------------------------------------------------------------------- training
def training_configs(recipe: Recipe, output_dir: str | os.PathLike) -> dict[str, Any]:
    """The configs a variant trains with: {"quantization": BitsAndBytesConfig or None (the base model),
    "lora": peft LoraConfig (the fresh adapter), "sft": trl SFTConfig (checkpoints under `output_dir`)}.

    The sft keys named in SFT_TRL_FIELDS go to SFTConfig unchanged; the rest are fixed by the kit.
    """
    from trl import SFTConfig

    cfg, seed = recipe.sft, recipe.run.seed
    args = SFTConfig(
        output_dir=str(output_dir), **{f: getattr(cfg, f) for f in SFT_TRL_FIELDS}
        | {"bf16": resolve_bf16(cfg.bf16, pick_device(recipe.model.device))},  # auto: by measurement
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

    from .progress import quiet_trainer  # here, like TRL: transformers takes seconds to import

    configs = configs or training_configs(recipe, output_dir)
    trainer = SFTTrainer(model=model, args=configs["sft"], peft_config=configs["lora"], train_dataset=train_dataset,
                         processing_class=tok)
    return quiet_trainer(trainer, f"SFT steps ({Path(output_dir).parent.name})")  # loss per step: loss.csv


def train_variant(recipe: Recipe, rows: Sequence[dict], out_dir: str | os.PathLike, *,
                  model: Any = None, tok: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """Train one variant's fresh LoRA on `rows`; save adapter, tokenizer and loss.csv under `out_dir`.

    Resumes from the newest checkpoint in `out_dir/checkpoints` when there is one. Pass a preloaded
    (model, tok) from `load_for_training` to reuse it; otherwise the base is loaded with
    `training_configs(...)["quantization"]`. Returns (trained PEFT model, tok, train stats). With a
    `run.launcher` other than single the training runs as a launched job and (None, None, stats) returns.
    """
    if recipe.run.launcher != "single":
        from .launch import train_variant_launched  # here: launch.py runs this very function in each process

        return None, None, train_variant_launched(recipe, rows, out_dir)
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
    trainer.save_model(str(out / "adapter"))  # the Trainer saves from the main process only
    losses = loss_rows(trainer.state.log_history)
    if trainer.is_world_process_zero():  # one writer when several processes train (launch.py)
        tok.save_pretrained(str(out / "adapter"))
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
                     human_sets: dict[str, list[dict]] | None = None, seed: int = 0
                     ) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """Held-out verification metrics and chat safety (ASR, compliance, takeover) for one model.

    `spec_text` must be the spec as stage 02 rendered it (`spec.spec_text(recipe)`), so held-out
    prompts match training prompts. `human_sets` (name -> pairs) are scored too, under
    `verification_human[name]`. Each verification block gets `forced_choice` (`forced_choice.forced_choice_eval`,
    split seeded by `seed`). Returns ({verification, verification_human, generation, takeover_rate},
    {"verification": rows, "chat": rows, "forced_choice": rows}); verification rows carry a `set` field.
    """
    fc_rows: list[dict] = []

    def score(ps: Sequence[dict], set_name: str) -> tuple[dict[str, Any], list[dict]]:
        rows = verify_pairs(model, tok, spec_text, ps, max_new_tokens=cfg.eval_max_new_tokens, batch_size=batch_size)
        m = verification_metrics([r["label"] for r in rows], [r["verdict"] for r in rows],
                                 prompt_labels=[r.get("prompt_label") for r in rows])
        m["forced_choice"], items = forced_choice_eval(model, tok, spec_text, ps, batch_size=batch_size, seed=seed)
        fc_rows.extend({**it, "set": set_name} for it in items)
        return m, [{**r, "set": set_name} for r in rows]

    ver, vrows = score(pairs, "policy-test-split")
    human: dict[str, Any] = {}
    for name, ps in (human_sets or {}).items():
        human[name], hrows = score(ps, name)
        vrows += hrows
    gen, crows = chat_safety(model, tok, list(prompts), judge, max_new_tokens=cfg.eval_max_new_tokens,
                             batch_size=batch_size, system_prompt=system_prompt)
    return {"verification": ver, "verification_human": human, "generation": gen,
            "takeover_rate": gen["takeover_rate"]}, {"verification": vrows, "chat": crows, "forced_choice": fc_rows}


def eval_human_pairs(cfg: SftConfig, seed: int, log: Any = print) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """The recipe's human-labelled held-out sets ({name: pairs}), from the "eval" side of the split that
    keeps them apart from Other-Exp's training answers (`sft_data.human_split`); sets whose data is absent
    are skipped with the reason (the shared data folder is optional on a user's machine)."""
    sets: dict[str, list[dict]] = {}
    skipped: dict[str, str] = {}
    for name in cfg.eval_human_sets:
        try:
            sets[name] = heldout_human_pairs(name, cfg.eval_num_human_pairs, seed + 7)
        except BenchmarkMissing as e:
            skipped[name] = str(e).splitlines()[0]
            log(f"held-out human set {name} skipped: {skipped[name]}")
    return sets, skipped


# ----------------------------------------------------------------------------- the stage
def variant_training_rows(run: Run, name: str, judge: Judge, human: dict[str, list[dict]], out: Path
                          ) -> tuple[list[dict], dict[str, Any]]:
    """A variant's training rows (other_exp's built first into `out`, apart from the `human` held-out
    sets) and {"mix": sft_data.mix_report, "human_data": Other-Exp's record}; the mixed-in chat rows go to
    `out/mixed_chat.jsonl` with their flags. Raises sft_data.VariantSkipped (other_exp without data)."""
    recipe, extra, own = run.recipe, {}, None
    if name == OTHER_EXP:
        from transformers import AutoTokenizer  # here, not at the top: transformers takes seconds

        tok = AutoTokenizer.from_pretrained(resolve_model_ref(recipe.model.policy))
        fits = lambda r: len(prompt_completion_ids(tok, r)[1]) <= recipe.sft.max_length  # noqa: E731
        own, extra["human_data"] = prepare_other_exp(run, judge, human, out, fits)
    rows, extra["mix"] = variant_data(run, name, recipe.sft, recipe.run.seed, own)
    if extra["mix"] is not None:
        jsonl.write(mixed_rows(rows, recipe.build_data.refusal_prefills), out / MIXED_CHAT)
    return rows, extra


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
                   human_sets=human, seed=seed)
    key = config_key(run, recipe)
    results: dict[str, dict] = {}
    variants_skipped: dict[str, str] = {}
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
            try:
                rows, extra = variant_training_rows(run, name, judge, human, out)
            except VariantSkipped as e:
                shutil.rmtree(out)
                variants_skipped[name] = str(e)
                log(f"{name}: skipped: {e}")
                continue
            log(f"{name}: training on {len(rows)} rows ({(extra['mix'] or {}).get('used', 0)} mixed chat)")
            if (extra["mix"] or {}).get("note"):
                log(f"{name}: {extra['mix']['note']}")
            model, _, stats = train_variant(recipe, rows, out)
            stats.update(extra)
            del model  # evaluate on a fresh load: the adapter on the generation weights (models.load_policy)
        model, tok = load_policy(recipe, adapter=out / "adapter" if name != "base" else None)
        metrics, eval_rows = evaluate_variant(model, tok, spec, pairs, prompts, judge, cfg, **eval_kw)
        jsonl.write(eval_rows["verification"], out / "verification_eval.jsonl")
        jsonl.write(eval_rows["chat"], out / "chat_eval.jsonl")
        jsonl.write(eval_rows["forced_choice"], out / FORCED_CHOICE_EVAL)
        results[name] = {"variant": name, **stats, **metrics}
        atomic_write_json(out / SUMMARY, results[name])  # last: marks the variant done
        del model
        log(f"{name}: bal_acc {metrics['verification']['balanced_accuracy']:.2f} "
            f"takeover {metrics['takeover_rate']}")
    summary = stage_summary(results)
    if skipped:
        summary["human_sets_skipped"] = skipped
    if variants_skipped:
        summary["variants_skipped"] = variants_skipped
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
            "takeover_rate", "data", "mix", "human_data")
    fields = ("balanced_accuracy", "macro_f1", "f1", "accuracy", "no_verdict_rate", "n", "base_rate_unsafe",
              "ci95", "baselines", "forced_choice")
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
            for k in ("auroc", "balanced_accuracy"):  # summaries written before forced choice lack it
                head[f"{name}_verify_forced_choice_{k}"] = (v.get("forced_choice") or {}).get(k)
            head[f"{name}_takeover"] = results[name]["takeover_rate"]
            if (mix := results[name].get("mix")) is not None:  # 0 for the clean SInternal, by construction
                head[f"{name}_mixed_chat_rows"] = mix["used"]
                head[f"{name}_mixed_chat_refusal_signal"] = mix["refusal_signal"]
            head[f"{name}_asr"] = results[name]["generation"]["asr"]
            for hname, h in (results[name].get("verification_human") or {}).items():
                head[f"{name}_verify_{hname}_balanced_accuracy"] = round(h["balanced_accuracy"], 3)
    if results:
        po = next(iter(results.values()))["verification"]["baselines"].get("prompt_only")
        if po:
            head["prompt_only_verify_balanced_accuracy"] = round(po["balanced_accuracy"], 3)
    out["headline"] = head
    return out
