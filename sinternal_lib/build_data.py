"""Stage 02: build verification data from the policy's own answers (paper steps 2-4).

1. Sample N answers per train-split prompt from the policy (`sampling.sample_responses`, resumable).
2. Judge every answer (`judges`): safe / unsafe, refused or not.
3. Select (`verification.select_examples`): harmful prompts whose samples mix safe and unsafe give one
   contrastive pair; benign prompts give one sample.
4. The teacher writes critique + verdict (`teachers`); by default only examples whose teacher verdict
   agrees with the judge are kept (disagreements are counted, never silently dropped).
5. Write the SFT sets: `verification/{sinternal,verdict_only,critique_only}.jsonl` (+
   `other_exp_sampled.jsonl`, another local model's samples labelled by the judge, when
   `build_data.other_model` is set; the `other_exp` variant proper is built in stage 03 from
   human-labelled answers, `sft_data`), `answer_centric.jsonl` (judge-approved own answers), the
   same as a `datasets` folder, and `heldout_pairs.jsonl` (judged answers to TEST-split prompts).
Row schemas are in docs/ARCHITECTURE.md ("Run folders and stage artifacts"). Deviation from the paper: its teacher is
Claude-4-Sonnet; the embedded recipe uses the offline spec-grounded teacher, which restates the judge.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from . import jsonl
from .datasets import BENIGN, HARMFUL, Record
from .judges import Judge, JudgeInput, make_judge
from .loaders import load_prompts
from .models import load_policy
from .recipe_sections import BuildDataConfig
from .runs import Run, stage_for
from .sampling import Sample, sample_responses
from .spec import load_spec, spec_text
from .teachers import Teacher, TeacherInput, make_teacher, teacher_model
from .verification import VARIANTS, select_examples, verification_example

SAFE, UNSAFE = "safe", "unsafe"


def judge_samples(samples: list[Sample], records: dict[str, Record], judge: Judge) -> list[dict]:
    """Attach the judge's verdict to each sample: rows for `select_examples` and the JSONL dump."""
    items = [JudgeInput(s.prompt, s.text, records[s.prompt_id].label, records[s.prompt_id].category) for s in samples]
    verdicts = judge.judge(items)
    if verdicts and all(v.label is None for v in verdicts):
        raise RuntimeError(
            f"the judge gave no verdict for any of {len(verdicts)} answers (first reason: {verdicts[0].rationale}; "
            f"stats: {dict(getattr(judge, 'stats', {}))}); check the recipe's judge section and its environment variables")
    rows = []
    for s, v in zip(samples, verdicts):
        r = records[s.prompt_id]
        rows.append({
            "prompt_id": s.prompt_id, "sample_idx": s.sample_idx, "prompt": s.prompt, "answer": s.answer,
            "reasoning": s.reasoning, "prompt_label": r.label, "category": r.category, "split": r.split,
            "judge_label": v.label, "judge_refused": v.refused, "judge_rationale": v.rationale,
            "finish": s.finish, "num_tokens": s.num_tokens, "prefill": s.prefill,
        })
    return rows


def prefill_count(cfg: BuildDataConfig, num_samples: int) -> int:
    """How many of `num_samples` samples per harmful prompt get a refusal opener (scaled from
    `refusal_prefill_samples` of `num_samples` N when fewer samples are drawn, e.g. held out)."""
    k = cfg.refusal_prefill_samples
    if not 0 <= k <= cfg.num_samples:
        raise ValueError(f"build_data.refusal_prefill_samples={k} must be in [0, num_samples={cfg.num_samples}]")
    return round(k * num_samples / cfg.num_samples)


def sample_and_judge(model: Any, tok: Any, prompts: list[Record], judge: Judge, out: Path, *, num_samples: int,
                     cfg: BuildDataConfig, seed: int, model_name: str, reasoning_style: str) -> list[dict]:
    """Sample (resumably, into `out`) and judge; returns judged rows. Harmful prompts get
    `build_data.refusal_prefill_samples` (scaled to `num_samples`) refusal-opener samples."""
    samples = sample_responses(
        model, tok, prompts, num_samples=num_samples, max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=seed, out_path=out,
        model_name=model_name, reasoning_style=reasoning_style, prefills=cfg.refusal_prefills,
        prefill_samples=prefill_count(cfg, num_samples),
        prefill_prompt_ids={r.id for r in prompts if r.label == HARMFUL},
    )
    return judge_samples(samples, {r.id: r for r in prompts}, judge)


def critique_and_format(selected: list[dict], teacher: Teacher, spec: str, require_agreement: bool,
                        include_reasoning: bool) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """Teacher critiques for the selected samples -> rows per variant, plus counts."""
    items = [TeacherInput(s["prompt"], s["answer"], s["prompt_label"], s["category"], s["judge_label"],
                          s["judge_refused"], s["reasoning"] if include_reasoning else None) for s in selected]
    critiques = teacher.critique(items)
    by_variant: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    stats = Counter()
    for s, c in zip(selected, critiques):
        if c.verdict is None:
            stats["teacher_no_verdict"] += 1
            continue
        if c.verdict != s["judge_label"]:
            stats["teacher_disagrees"] += 1
            if require_agreement:
                continue
        stats["kept"] += 1
        for v in VARIANTS:
            ex = verification_example(spec, s["prompt"], s["answer"], c.text, c.verdict, v,
                                      s["reasoning"] if include_reasoning else None)
            by_variant[v].append({
                "id": f"{s['prompt_id']}-{s['sample_idx']}", **ex, "label": c.verdict, "category": s["category"],
                "prompt_label": s["prompt_label"], "prompt_id": s["prompt_id"], "critique_chars": len(c.text),
            })
    return by_variant, {**dict(stats), "teacher": dict(getattr(teacher, "stats", {}))}


def answer_centric_rows(judged: list[dict], seed: int) -> list[dict]:
    """One judge-approved own answer per prompt: a refusal judged safe for harmful prompts, a helpful
    (not refused) answer for benign ones. The answer-centric baseline trains on these."""
    rng = random.Random(seed)
    by_prompt: dict[str, list[dict]] = {}
    for r in judged:
        ok = r["judge_label"] == SAFE and (r["prompt_label"] == HARMFUL or not r["judge_refused"])
        if ok and r["answer"].strip():
            by_prompt.setdefault(r["prompt_id"], []).append(r)
    rows = []
    for pid in sorted(by_prompt):
        r = rng.choice(sorted(by_prompt[pid], key=lambda x: x["sample_idx"]))
        rows.append({
            "id": f"{pid}-{r['sample_idx']}", "prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["answer"]}], "prompt_label": r["prompt_label"],
            "category": r["category"], "prompt_id": pid,
        })
    return rows


def heldout_pairs(judged: list[dict], n: int, seed: int) -> list[dict]:
    """Balanced held-out verification pairs (about n/2 unsafe, n/2 safe), at most one per prompt and label.

    Safe pairs mix refusals of harmful prompts and answers to benign prompts.
    """
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    unsafe, safe_h, safe_b = [], [], []
    for r in sorted(judged, key=lambda x: (x["prompt_id"], x["sample_idx"])):
        key = (r["prompt_id"], r["judge_label"])
        if r["judge_label"] not in (SAFE, UNSAFE) or key in seen or not r["answer"].strip():
            continue
        seen.add(key)
        (unsafe if r["judge_label"] == UNSAFE else safe_h if r["prompt_label"] == HARMFUL else safe_b).append(r)
    for pool in (unsafe, safe_h, safe_b):
        rng.shuffle(pool)
    k = min(len(unsafe), n // 2, len(safe_h) + len(safe_b))
    safe = (safe_h[: (k + 1) // 2] + safe_b)[:k] if len(safe_b) >= k // 2 else (safe_b + safe_h)[:k]
    rows = unsafe[:k] + safe
    rows.sort(key=lambda x: (x["prompt_id"], x["sample_idx"]))
    return [{"id": f"{r['prompt_id']}-{r['sample_idx']}", "prompt": r["prompt"], "answer": r["answer"],
             "reasoning": r["reasoning"], "label": r["judge_label"], "category": r["category"],
             "prompt_label": r["prompt_label"], "source": "policy-test-split"} for r in rows]


def run(run: Run, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Stage 02 end to end (resuming sampling where it stopped), manifest last; returns its summary."""
    recipe = run.recipe
    cfg, seed = recipe.build_data, recipe.run.seed
    stage = stage_for(run, "build_data")
    if (why := stage.begin()):
        log(why)
    out = stage.dir
    spec = spec_text(recipe)
    load_spec(recipe.resolve_path(recipe.spec.path))  # fail early on a broken spec file
    judge = make_judge(recipe.judge, cache_dir=run.path / "judge_cache")
    harmful = load_prompts(recipe.data.harmful, HARMFUL, "train", cfg.num_harmful_prompts, seed)
    benign = load_prompts(recipe.data.benign, BENIGN, "train", cfg.num_benign_prompts, seed)
    test_h = load_prompts(recipe.data.harmful, HARMFUL, "test", cfg.heldout_num_prompts, seed)
    test_b = load_prompts(recipe.data.benign, BENIGN, "test", cfg.heldout_num_prompts // 2, seed)
    models = {"self": recipe.model.policy}
    if cfg.other_model:
        models["other_exp_sampled"] = cfg.other_model
    summary: dict[str, Any] = {"teacher_backend": recipe.teacher.backend, "judge_backend": recipe.judge.backend,
                               "judge_stats": judge.stats}
    outputs: list[str] = []
    teacher_kw = teacher_model(recipe)  # a local teacher's model: loaded once, for every tag
    for tag, ref in models.items():
        model, tok = load_policy(recipe, ref)
        log(f"[{tag}] sampling {cfg.num_samples} answers for {len(harmful)} harmful + {len(benign)} benign prompts")
        judged = sample_and_judge(model, tok, harmful + benign, judge, out / f"samples_{tag}.jsonl",
                                  num_samples=cfg.num_samples, cfg=cfg, seed=seed, model_name=ref,
                                  reasoning_style=recipe.model.reasoning_style)
        jsonl.write(judged, out / f"judged_{tag}.jsonl")
        selected, funnel = select_examples(judged, seed=seed)
        teacher = make_teacher(recipe.teacher, load_spec(recipe.resolve_path(recipe.spec.path)), judge=judge,
                               **teacher_kw)
        by_variant, tstats = critique_and_format(selected, teacher, spec, cfg.require_teacher_agreement,
                                                 cfg.include_reasoning)
        (out / "verification").mkdir(exist_ok=True)
        if tag == "self":
            for v, rows in by_variant.items():
                jsonl.write(rows, out / "verification" / f"{v}.jsonl")
                outputs.append(f"verification/{v}.jsonl")
            ac = answer_centric_rows(judged, seed)
            jsonl.write(ac, out / "answer_centric.jsonl")
            outputs += ["answer_centric.jsonl", f"judged_{tag}.jsonl"]
            log(f"[self] held-out: sampling {min(cfg.num_samples, 4)} answers for {len(test_h)} + {len(test_b)} test prompts")
            held = sample_and_judge(model, tok, test_h + test_b, judge, out / "samples_heldout.jsonl",
                                    num_samples=min(cfg.num_samples, 4), cfg=cfg, seed=seed + 1, model_name=ref,
                                    reasoning_style=recipe.model.reasoning_style)
            pairs = heldout_pairs(held, cfg.heldout_num_pairs, seed)
            jsonl.write(pairs, out / "heldout_pairs.jsonl")
            outputs.append("heldout_pairs.jsonl")
            summary.update({
                "funnel": funnel, "selection": tstats, "answer_centric_examples": len(ac),
                "heldout_pairs": len(pairs), "heldout_label_counts": dict(Counter(p["label"] for p in pairs)),
                "sample_label_counts": dict(Counter(f"{r['prompt_label']}/{r['judge_label']}" for r in judged)),
                "prefilled": {"samples": sum(1 for r in judged if r["prefill"]),
                              "judged_safe": sum(1 for r in judged if r["prefill"] and r["judge_label"] == SAFE),
                              "selected": sum(1 for r in selected if r.get("prefill"))},
                "examples": len(by_variant["sinternal"]),
                "label_counts": dict(Counter(r["label"] for r in by_variant["sinternal"])),
                "category_counts": dict(Counter(r["category"] or "none" for r in by_variant["sinternal"])),
            })
        else:
            jsonl.write(by_variant["sinternal"], out / "verification" / f"{tag}.jsonl")
            outputs.append(f"verification/{tag}.jsonl")
            summary[tag] = {"model": ref, "funnel": funnel, "selection": tstats,
                            "examples": len(by_variant["sinternal"])}
        del model
    _save_hf_dataset(out, outputs)
    outputs.append("dataset")
    lc = summary["label_counts"]
    summary["headline"] = {"examples": summary["examples"], "unsafe": lc.get(UNSAFE, 0), "safe": lc.get(SAFE, 0),
                           "mixed_prompts": summary["funnel"].get("harmful_mixed", 0)}
    stage.finish(outputs, summary)
    return summary


def _save_hf_dataset(out: Path, outputs: list[str]) -> None:
    """The SFT sets as one `datasets.DatasetDict` folder (a split per file), for `load_from_disk`."""
    from datasets import Dataset, DatasetDict  # here, not at the top: HF datasets takes seconds to import

    parts = {}
    for rel in outputs:
        if rel.startswith("verification/") or rel == "answer_centric.jsonl":
            rows = jsonl.read(out / rel)
            if rows:
                parts[Path(rel).stem] = Dataset.from_list(rows)
    tmp = out / ".dataset.tmp"
    DatasetDict(parts).save_to_disk(str(tmp))
    if (out / "dataset").exists():
        shutil.rmtree(out / "dataset")
    tmp.rename(out / "dataset")
