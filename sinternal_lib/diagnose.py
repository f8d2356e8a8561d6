"""Stage 01: diagnose whether a model can verify answers (the paper's Figure 2).

Each model in the recipe (`model.policy` plus `model.others`) answers train-split prompts; the judge
labels its answers; the model then verifies its own (prompt, answer) pairs through the verification
prompt (`verification.verify_pairs`). Where the user has them, it also verifies human-labelled pairs:
XSTest completions (a refusal label turned into a safety label: compliance with an unsafe prompt is
unsafe, anything else safe; partial refusals dropped) and PKU-SafeRLHF answers (a harm label).
Scores (`verification.verification_metrics`, unsafe = positive class) are read against the trivial
baselines. The same pairs are also scored by forced choice (`forced_choice`: P(unsafe) from the
log-probabilities of the verdict words, no generation), so a model that never writes a verdict line
is still measured on what it prefers. Missing human sets are skipped with a note, never silently.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from . import jsonl
from .build_data import judge_samples
from .datasets import BENIGN, HARMFUL, Record
from .forced_choice import forced_choice_eval
from .judges import Judge, make_judge
from .loaders import BenchmarkMissing, load_benchmark, load_prompts
from .models import load_policy
from .recipe_sections import Recipe
from .runs import Run, stage_for
from .sampling import sample_responses
from .spec import spec_text
from .verification import verification_metrics, verify_pairs

SAFE, UNSAFE = "safe", "unsafe"
FORCED_CHOICE_FILE = "forced_choice.jsonl"  # per pair: id, label, p_unsafe, model, set


def xstest_safety_label(rec: Record) -> str | None:
    """Safety label of an XSTest completion from its human refusal label and the prompt's label."""
    if rec.label == BENIGN:
        return SAFE
    return {"compliance": UNSAFE, "refusal": SAFE}.get(rec.human_label or "")  # partial -> None (dropped)


def human_pairs(name: str, n: int, seed: int) -> list[dict]:
    """Balanced human-labelled verification pairs from a labelled completion set (about n/2 per label)."""
    if name == "xstest_completions":
        recs = load_benchmark(name, model="all")
        labelled = [(r, xstest_safety_label(r)) for r in recs]
    elif name == "pku_saferlhf":
        labelled = [(r, r.human_label) for r in load_benchmark(name)]
    else:
        raise ValueError(f"unknown human-labelled set {name!r}; use xstest_completions or pku_saferlhf")
    rng = random.Random(seed)
    by_label = {lab: [r for r, l2 in labelled if l2 == lab and (r.response or "").strip()] for lab in (SAFE, UNSAFE)}
    out = []
    for lab, pool in by_label.items():
        for r in rng.sample(pool, min(len(pool), n // 2)):
            out.append({"id": r.id, "prompt": r.prompt, "answer": r.response, "reasoning": None, "label": lab,
                        "category": r.category, "prompt_label": r.label, "source": name})
    return sorted(out, key=lambda p: p["id"])


def own_answer_pairs(model: Any, tok: Any, prompts: list[Record], judge: Judge, out_path: str | Path, *,
                     recipe: Recipe, model_name: str) -> list[dict]:
    """The model answers each prompt once (sampled); the judge labels the answers -> verification pairs."""
    cfg = recipe.diagnose
    samples = sample_responses(model, tok, prompts, num_samples=1, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, top_p=0.95, batch_size=cfg.batch_size,
                               seed=recipe.run.seed, out_path=out_path, model_name=model_name,
                               reasoning_style=recipe.model.reasoning_style)
    judged = judge_samples(samples, {r.id: r for r in prompts}, judge)
    return [{"id": j["prompt_id"], "prompt": j["prompt"], "answer": j["answer"], "reasoning": j["reasoning"],
             "label": j["judge_label"], "category": j["category"], "prompt_label": j["prompt_label"],
             "source": "own_answers"} for j in judged if j["judge_label"] in (SAFE, UNSAFE)]


def score_rows(rows: list[dict], seed: int) -> dict[str, Any]:
    """Verification metrics of verifier rows (gold `label`, predicted `verdict`)."""
    return verification_metrics([r["label"] for r in rows], [r["verdict"] for r in rows],
                                [r.get("category") for r in rows], seed=seed)


def run(run: Run, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Stage 01 for every model of the recipe: finishes the stage (manifest last); returns its summary."""
    recipe = run.recipe
    cfg, seed = recipe.diagnose, recipe.run.seed
    stage = stage_for(run, "diagnose")
    if (why := stage.begin()):
        log(why)
    spec = spec_text(recipe)
    judge = make_judge(recipe.judge, cache_dir=run.path / "judge_cache")
    prompts = (load_prompts(recipe.data.harmful, HARMFUL, "train", cfg.num_harmful, seed + 11)
               + load_prompts(recipe.data.benign, BENIGN, "train", cfg.num_benign, seed + 11))
    sets: dict[str, list[dict]] = {}
    skipped: dict[str, str] = {}
    for name in cfg.human_sets:
        try:
            sets[name] = human_pairs(name, cfg.num_human_pairs, seed)
        except BenchmarkMissing as e:
            skipped[name] = str(e).splitlines()[0]
            log(f"skipped {name}: {skipped[name]}")
    results: dict[str, Any] = {}
    all_rows: list[dict] = []
    fc_rows: list[dict] = []
    for i, ref in enumerate([recipe.model.policy, *recipe.model.others]):
        model, tok = load_policy(recipe, ref)
        own = own_answer_pairs(model, tok, prompts, judge, stage.dir / f"answers_{i}.jsonl", recipe=recipe,
                               model_name=ref)
        results[ref] = {}
        for set_name, pairs in {"own_answers": own, **sets}.items():
            log(f"[{ref}] verifying {len(pairs)} pairs of {set_name}")
            rows = verify_pairs(model, tok, spec, pairs, max_new_tokens=cfg.verify_max_new_tokens,
                                batch_size=cfg.batch_size, include_reasoning=cfg.include_reasoning)
            for r in rows:
                r.update({"model": ref, "set": set_name})
            all_rows += rows
            results[ref][set_name] = score_rows(rows, seed) if rows else {"n": 0}
            if rows:  # the same pairs by forced choice: which verdict word does the model prefer?
                fc, items = forced_choice_eval(model, tok, spec, pairs, batch_size=cfg.batch_size,
                                               include_reasoning=cfg.include_reasoning, seed=seed)
                results[ref][set_name]["forced_choice"] = fc
                fc_rows += [{**it, "model": ref, "set": set_name} for it in items]
        del model
    jsonl.write(all_rows, stage.dir / "predictions.jsonl")
    jsonl.write(fc_rows, stage.dir / FORCED_CHOICE_FILE)
    lead = results[recipe.model.policy]["own_answers"]
    summary = {
        "models": results,
        "skipped": skipped,
        "judge_stats": dict(judge.stats),
        "label_counts": {ref: dict(Counter(r["label"] for r in all_rows if r["model"] == ref and r["set"] == "own_answers"))
                         for ref in results},
        "headline": {
            "balanced_accuracy": lead.get("balanced_accuracy"),
            "macro_f1": lead.get("macro_f1"),
            "f1_unsafe": lead.get("f1"),
            "coin_flip_f1": (lead.get("baselines") or {}).get("coin_flip", {}).get("f1"),
            "no_verdict_rate": lead.get("no_verdict_rate"),
            "forced_choice_auroc": (lead.get("forced_choice") or {}).get("auroc"),
            "forced_choice_balanced_accuracy": (lead.get("forced_choice") or {}).get("balanced_accuracy"),
        },
    }
    stage.finish(["predictions.jsonl", FORCED_CHOICE_FILE], summary)
    return summary
