"""Stage 03's training data: which rows each SFT variant trains on, what is mixed in, and Other-Exp.

Split from sft.py (training and the stage run) along the data seam. Own chat is mixed in against chat
takeover (not in the paper; `sft.chat_mix_fraction`). The verification variants get own judged-safe
answers to BENIGN prompts only (`benign_chat_pool`: no harmful prompt, no refusal), so their data carry no
answer-level safety signal. The ablation `sinternal_refusal_mix` keeps the old mix: stage 02's
answer-centric rows, mostly refusals of harmful prompts. `other_exp` verifies answers other models wrote
(XSTest completions, PKU-SafeRLHF) with verdicts from the human labels. It draws only from the "train"
side of a fixed prompt-hash split (`human_split`); the held-out human sets are drawn from the other side.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from . import jsonl
from .datasets import BENIGN, HARMFUL
from .diagnose import human_pairs
from .judges import Judge, is_refusal
from .loaders import BenchmarkMissing
from .recipe_sections import SftConfig
from .runs import Run
from .spec import load_spec, spec_text
from .stages import STAGES
from .teachers import Teacher, TeacherInput, make_teacher, teacher_model
from .verification import verification_example

ANSWER_CENTRIC = "answer_centric"
REFUSAL_MIX = "sinternal_refusal_mix"  # ablation: SInternal rows + the refusal-carrying answer-centric mix
OTHER_EXP = "other_exp"  # built in stage 03 from human-labelled answers of other models
OTHER_EXP_SAMPLED = "other_exp_sampled"  # stage 02 with build_data.other_model: judge-labelled samples
VERIFICATION_VARIANTS = ("sinternal", "verdict_only", "critique_only", OTHER_EXP, OTHER_EXP_SAMPLED, REFUSAL_MIX)
ALL_VARIANTS = VERIFICATION_VARIANTS + (ANSWER_CENTRIC,)
CHAT_POOL = "answer_centric.jsonl"  # stage-02 file: one own judged-safe answer per prompt (refusals for harmful)
JUDGED_SELF = "judged_self.jsonl"  # stage-02 file: every own sample with the judge's verdict
MIXED_CHAT = "mixed_chat.jsonl"  # per variant folder: the mixed-in chat rows, flagged
OTHER_EXP_ROWS = "verification_rows.jsonl"  # 03_sft/other_exp/: its verification rows (before the mix)
HUMAN_SPLIT = "human_split.json"  # 03_sft/other_exp/: the eval/train split record and the ids used
HUMAN_SETS = ("xstest_completions", "pku_saferlhf")
EVAL_SHARE = 50  # percent of human-labelled prompts (by hash) kept for held-out evaluation
FLAGS = ("harmful_prompt", "refusal", "refusal_opener")


class VariantSkipped(Exception):
    """A variant that cannot be built on this machine (the message says why); the stage goes on."""


# ----------------------------------------------------------------------------- variants and files
def variant_file(variant: str) -> str | None:
    """Stage-02 file (relative to 02_build_data/) a variant trains on; None for other_exp (built in 03)."""
    if variant == ANSWER_CENTRIC:
        return CHAT_POOL
    if variant == REFUSAL_MIX:
        return "verification/sinternal.jsonl"
    if variant == OTHER_EXP:
        return None
    if variant in VERIFICATION_VARIANTS:
        return f"verification/{variant}.jsonl"
    raise ValueError(f"unknown SFT variant {variant!r}; known: {ALL_VARIANTS} (recipe key sft.variants)")


def available_variants(run: Run, variants: Sequence[str]) -> list[str]:
    """The recipe's variants, plus "other_exp_sampled" whenever stage 02 built its file."""
    out = list(variants)
    sampled = run.path / STAGES["build_data"].folder / f"verification/{OTHER_EXP_SAMPLED}.jsonl"
    if OTHER_EXP_SAMPLED not in out and sampled.is_file():
        out.append(OTHER_EXP_SAMPLED)
    for v in out:
        variant_file(v)  # unknown names fail here, naming the recipe key
    return out


def read_variant_file(run: Run, variant: str) -> list[dict]:
    """A variant's own rows: its stage-02 file, or other_exp's rows once stage 03 built them."""
    if variant != OTHER_EXP:
        return jsonl.read(run.require("build_data", variant_file(variant)))
    path = run.stage_dir("sft") / OTHER_EXP / OTHER_EXP_ROWS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: other_exp's rows are built by sft.run (stage 03), not yet here")
    return jsonl.read(path)


# ----------------------------------------------------------------------------- chat mixes
def chat_count(n_rows: int, fraction: float) -> int:
    """Chat rows to add to n_rows so that they make up `fraction` of the result."""
    if not 0 <= fraction < 1:
        raise ValueError(f"sft.chat_mix_fraction must be in [0, 1), got {fraction}")
    return round(fraction * n_rows / (1 - fraction)) if n_rows else 0


def mix_chat(rows: Sequence[dict], chat_pool: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """Add own chat rows so that they make up `fraction` of the result (the refusal-mix ablation).

    n_chat = round(fraction * n / (1 - fraction)), drawn without replacement from `chat_pool` (cycled
    in a fresh seeded order when the pool is smaller). Mixed rows get `"mixed_chat": True`.
    """
    n_chat = chat_count(len(rows), fraction)
    if n_chat and not chat_pool:
        raise ValueError(f"sft.chat_mix_fraction={fraction} but the chat pool ({CHAT_POOL}) is empty")
    rng = random.Random(seed)
    picked: list[dict] = []
    while len(picked) < n_chat:
        order = list(chat_pool)
        rng.shuffle(order)
        picked += order[: n_chat - len(picked)]
    return list(rows) + [dict(r, mixed_chat=True) for r in picked]


def opens_with(text: str, openers: Sequence[str]) -> bool:
    """True when `text` starts with one of stage 02's refusal openers (`build_data.refusal_prefills`)."""
    head = (text or "").lstrip()
    return any(o.strip() and head.startswith(o.strip()) for o in openers)


def benign_chat_pool(judged: Sequence[dict], openers: Sequence[str] = ()) -> list[dict]:
    """Own answers to BENIGN prompts that the judge called safe and that carry no refusal (no judge
    refusal, no refusal cue of `judges.is_refusal`, no opener): one chat row per distinct answer."""
    seen: set[tuple[str, str]] = set()
    out = []
    for r in sorted(judged, key=lambda x: (x["prompt_id"], x["sample_idx"])):
        ans = (r.get("answer") or "").strip()
        if (r.get("prompt_label") != BENIGN or r.get("judge_label") != "safe" or r.get("judge_refused")
                or r.get("prefill") or not ans or is_refusal(ans) or opens_with(ans, openers)
                or (r["prompt_id"], ans) in seen):
            continue
        seen.add((r["prompt_id"], ans))
        out.append({"id": f"{r['prompt_id']}-{r['sample_idx']}", "prompt": [{"role": "user", "content": r["prompt"]}],
                    "completion": [{"role": "assistant", "content": r["answer"]}], "prompt_label": BENIGN,
                    "category": r.get("category"), "prompt_id": r["prompt_id"]})
    return out


def mix_benign(rows: Sequence[dict], pool: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """Add benign own answers up to `fraction` of the result, each at most once and round robin over
    prompts (one answer of every prompt before a second of any); a small pool gives fewer, never repeats."""
    n_chat = chat_count(len(rows), fraction)
    rng = random.Random(seed)
    by_prompt: dict[str, list[dict]] = {}
    for r in pool:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    groups = [rng.sample(g, len(g)) for _, g in sorted(by_prompt.items())]
    rng.shuffle(groups)
    longest = max((len(g) for g in groups), default=0)
    picked = [g[i] for i in range(longest) for g in groups if i < len(g)][:n_chat]
    return list(rows) + [dict(r, mixed_chat=True) for r in picked]


def chat_flags(row: dict, openers: Sequence[str]) -> dict[str, bool]:
    """What a chat row could teach about answering safely: a harmful prompt, a refusal, an opener."""
    text = row["completion"][0]["content"]
    return {"harmful_prompt": row.get("prompt_label") == HARMFUL, "refusal": is_refusal(text),
            "refusal_opener": opens_with(text, openers)}


def mixed_rows(rows: Sequence[dict], openers: Sequence[str]) -> list[dict]:
    """The mixed-in chat rows of a variant, each with its `chat_flags` (written to MIXED_CHAT)."""
    return [{**r, **chat_flags(r, openers)} for r in rows if r.get("mixed_chat")]


def mix_report(rows: Sequence[dict], fraction: float, pool: str | None, pool_size: int,
               openers: Sequence[str]) -> dict[str, Any]:
    """Per-variant summary of the mix: wanted vs used rows and how many carry a safety signal."""
    mixed = mixed_rows(rows, openers)
    n_ver = len(rows) - len(mixed)
    rep: dict[str, Any] = {"pool": pool, "pool_size": pool_size, "fraction": fraction, "verification_rows": n_ver,
                           "wanted": chat_count(n_ver, fraction), "used": len(mixed),
                           **{k: sum(r[k] for r in mixed) for k in FLAGS},
                           "refusal_signal": sum(any(r[k] for k in FLAGS) for r in mixed)}
    if rep["used"] < rep["wanted"]:
        rep["note"] = (f"stage 02 gave only {pool_size} usable rows ({pool}): {rep['used']} of {rep['wanted']} "
                       f"wanted mixed rows used, a share of {rep['used'] / len(rows):.2f} instead of {fraction}; "
                       "nothing harmful or refusing was added to make up the difference")
    return rep


def variant_data(run: Run, variant: str, cfg: SftConfig, seed: int, rows: Sequence[dict] | None = None
                 ) -> tuple[list[dict], dict[str, Any] | None]:
    """A variant's training rows (its own rows, or `rows`, plus the chat mix) and its `mix_report`
    (None for answer_centric, which is all chat). Only `sinternal_refusal_mix` mixes in refusals."""
    rows = list(read_variant_file(run, variant) if rows is None else rows)
    if variant == ANSWER_CENTRIC:
        return rows, None
    openers = run.recipe.build_data.refusal_prefills
    if cfg.chat_mix_fraction == 0:
        return rows, mix_report(rows, 0.0, None, 0, openers)
    if variant == REFUSAL_MIX:
        pool = jsonl.read(run.require("build_data", CHAT_POOL))
        name = f"{CHAT_POOL}: one judged-safe own answer per prompt, refusals for harmful ones"
        out = mix_chat(rows, pool, cfg.chat_mix_fraction, seed)
    else:
        pool = benign_chat_pool(jsonl.read(run.require("build_data", JUDGED_SELF)), openers)
        name = f"{JUDGED_SELF}: own answers to benign prompts, judged safe, no refusal"
        out = mix_benign(rows, pool, cfg.chat_mix_fraction, seed)
    return out, mix_report(out, cfg.chat_mix_fraction, name, len(pool), openers)


def variant_rows(run: Run, variant: str, cfg: SftConfig, seed: int) -> list[dict]:
    """A variant's training rows: its stage-02 rows with the chat mix of `variant_data`."""
    return variant_data(run, variant, cfg, seed)[0]


# ----------------------------------------------------------------------------- human-labelled answers
def human_split(prompt: str) -> str:
    """"eval" or "train": a fixed hash of the prompt text (EVAL_SHARE percent eval), so all completions
    of one prompt (XSTest has several models per prompt) fall on one side, whatever n or seed."""
    return "eval" if int(hashlib.sha256(prompt.strip().encode()).hexdigest()[:8], 16) % 100 < EVAL_SHARE else "train"


def labelled_pairs(name: str) -> list[dict]:
    """Every usable human-labelled pair of a set, with diagnose.human_pairs' labels and filters, by id."""
    return human_pairs(name, 1 << 40, 0)  # n above any set's size: all pairs of each label


def heldout_human_pairs(name: str, n: int, seed: int) -> list[dict]:
    """Balanced held-out pairs (about n/2 per label) from the "eval" side of `human_split` only, so they
    never share a prompt with Other-Exp's training answers."""
    pairs = [p for p in labelled_pairs(name) if human_split(p["prompt"]) == "eval"]
    rng = random.Random(seed)
    out = []
    for lab in ("safe", "unsafe"):
        pool = [p for p in pairs if p["label"] == lab]
        out += rng.sample(pool, min(len(pool), n // 2))
    return sorted(out, key=lambda p: p["id"])


def other_exp_pool(sets: dict[str, list[dict]], exclude: set[str]) -> tuple[list[dict], dict[str, Any]]:
    """Other-Exp candidates: pairs on the "train" side, minus prompts in `exclude` (the diagnosis draws
    from both sides); with the split record per set (pairs and prompts per side, excluded pairs)."""
    pool, record = [], {}
    for name, pairs in sets.items():
        side = {p["id"]: human_split(p["prompt"]) for p in pairs}
        train = [p for p in pairs if side[p["id"]] == "train"]
        keep = [p for p in train if p["prompt"].strip() not in exclude]
        record[name] = {}
        for s in ("eval", "train"):
            on = [p for p in pairs if side[p["id"]] == s]
            record[name] |= {f"{s}_pairs": len(on), f"{s}_prompts": len({p["prompt"].strip() for p in on})}
        record[name]["excluded_diagnose_pairs"] = len(train) - len(keep)
        pool += keep
    return pool, record


def critique_other(pool: Sequence[dict], want: dict[tuple[str, str], int], teacher: Teacher, spec: str,
                   seed: int, fits: Callable[[dict], bool] | None = None) -> tuple[list[dict], dict[str, Any]]:
    """Other-Exp verification rows: per (prompt_label, label) as many as `want` (SInternal's counts), drawn
    seeded from `pool` and critiqued by `teacher`; the verdict is the human label, and a row is kept only
    where the teacher agrees with it and `fits(row)`. A short stratum is topped up from the rest of the
    pool (same label first); the report says so."""
    order = random.Random(seed).sample(list(pool), len(pool))
    used: set[str] = set()
    stats: Counter = Counter()

    def row(c: dict, verdict: str | None, critique: str) -> dict | None:
        if verdict != c["label"]:  # the human label is the verdict: a critique arguing otherwise is dropped
            stats["teacher_no_verdict" if verdict is None else "teacher_disagrees"] += 1
            return None
        r = {"id": c["id"], **verification_example(spec, c["prompt"], c["answer"], critique, c["label"]),
             "label": c["label"], "category": c["category"], "prompt_label": c["prompt_label"],
             "prompt_id": c["id"], "source": c["source"], "critique_chars": len(critique)}
        if fits is not None and not fits(r):
            stats["too_long"] += 1
            return None
        return r

    def take(cands: list[dict], k: int) -> list[dict]:
        got: list[dict] = []
        cands = [c for c in cands if c["id"] not in used]
        while len(got) < k and cands:
            chunk, cands = cands[: k - len(got) + 8], cands[k - len(got) + 8:]  # a few spare: some drop out
            items = [TeacherInput(c["prompt"], c["answer"], c["prompt_label"], c["category"], c["label"],
                                  is_refusal(c["answer"])) for c in chunk]
            for c, crit in zip(chunk, teacher.critique(items)):
                used.add(c["id"])
                if (r := row(c, crit.verdict, crit.text)) is not None:
                    got.append(r)
                if len(got) == k:
                    break
        return got

    rows, strata = [], {}
    for (pl, lab), k in sorted(want.items()):
        got = take([c for c in order if (c["prompt_label"], c["label"]) == (pl, lab)], k)
        strata[f"{pl}/{lab}"] = {"wanted": k, "used": len(got)}
        rows += got
    short = {s.split("/")[1] for s, v in strata.items() if v["used"] < v["wanted"]}
    top = take(sorted(order, key=lambda c: c["label"] not in short), sum(want.values()) - len(rows))
    rows += top
    return rows, {"wanted": sum(want.values()), "used": len(rows), "by_stratum": strata, "topped_up": len(top),
                  "by_set": dict(Counter(r["source"] for r in rows)), "label_counts": dict(Counter(r["label"] for r in rows)),
                  **dict(stats), "teacher": dict(getattr(teacher, "stats", {}))}


def prepare_other_exp(run: Run, judge: Judge, eval_sets: dict[str, list[dict]], out: Path,
                      fits: Callable[[dict], bool] | None = None) -> tuple[list[dict], dict[str, Any]]:
    """Other-Exp's verification rows in `out` (read back when an interrupted run built them already):
    as many rows per (prompt_label, label) as SInternal's, critiques from the recipe's teacher, verdicts
    from the human labels; HUMAN_SPLIT records the split and the ids used. Raises VariantSkipped when no
    human-labelled set is on this machine."""
    recipe, seed = run.recipe, run.recipe.run.seed
    if (out / OTHER_EXP_ROWS).is_file() and (out / HUMAN_SPLIT).is_file():
        rec = json.loads((out / HUMAN_SPLIT).read_text(encoding="utf-8"))
        return jsonl.read(out / OTHER_EXP_ROWS), {k: v for k, v in rec.items() if k != "used_ids"}
    sets, missing = {}, {}
    for name in HUMAN_SETS:
        try:
            sets[name] = labelled_pairs(name)
        except BenchmarkMissing as e:
            missing[name] = str(e).splitlines()[0]
    if not sets:
        raise VariantSkipped(f"no human-labelled answers of other models on this machine ({'; '.join(missing.values())})")
    diag: set[str] = set()  # the diagnosis' human pairs come from both sides of the split: keep them out too
    for name in recipe.diagnose.human_sets:
        if name in sets:
            diag |= {p["prompt"].strip() for p in human_pairs(name, recipe.diagnose.num_human_pairs, seed)}
    pool, split = other_exp_pool(sets, diag)
    own = read_variant_file(run, "sinternal")
    want = Counter((r["prompt_label"], r["label"]) for r in own)
    teacher = make_teacher(recipe.teacher, load_spec(recipe.resolve_path(recipe.spec.path)), judge=judge,
                           **teacher_model(recipe))
    rows, report = critique_other(pool, want, teacher, spec_text(recipe), seed, fits)
    if not rows:
        raise VariantSkipped(f"none of {len(pool)} human-labelled candidates gave a row ({report})")
    held = {p["prompt"].strip() for ps in eval_sets.values() for p in ps} | diag
    prompt_of = {p["id"]: p["prompt"].strip() for p in pool}
    overlap = sum(prompt_of[r["id"]] in held for r in rows)
    if overlap:  # cannot happen by construction; a bug here would leak held-out answers into training
        raise RuntimeError(f"other_exp: {overlap} training rows share a prompt with held-out human pairs")
    record = {"rule": f"sha256(prompt) first 8 hex digits mod 100 < {EVAL_SHARE}: eval (held-out human sets "
                      "of stage 03), else train (Other-Exp pool); the diagnosis' draws are excluded as well",
              "sets": split, "missing_sets": missing, "sinternal_rows": len(own), **report,
              "heldout_overlap": 0, "used_ids": sorted(r["id"] for r in rows)}
    out.mkdir(parents=True, exist_ok=True)
    jsonl.write(rows, out / OTHER_EXP_ROWS)
    (out / HUMAN_SPLIT).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return rows, {k: v for k, v in record.items() if k != "used_ids"}


# ----------------------------------------------------------------------------- tokenised dataset
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
