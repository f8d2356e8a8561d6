# %% [markdown]
# # 05 · Evaluate: every checkpoint on held-out benchmarks, and the report card
#
# Paper: [arXiv 2605.08930](https://arxiv.org/abs/2605.08930). Glossary and answer notes for the reading group: `docs/READING_GROUP.md`.
#
# - *What this shows*: the paper's step 7. Every checkpoint (base, answer-centric SFT, SInternal and its
#   ablations, GRPO from each init) answers real benchmarks; a judge labels each answer. We report attack
#   success rate (ASR, lower is better), XSTest compliance, math accuracy, verification F1 on held-out
#   pairs and the proactive verification rate, each with a 95% CI, and say claim by claim what the run supports.
# - *Inputs*: `03_sft/<variant>/adapter`, `04_grpo/<init>/adapter`, `02_build_data/heldout_pairs.jsonl`,
#   the embedded prompt sets and the shared benchmark files (absent ones are skipped with a note).
# - *Outputs*: `05_evaluate/generations.jsonl` (one row per checkpoint x benchmark x item),
#   `05_evaluate/scores.jsonl`, `05_evaluate/figures/*.png`, the `evaluate` section of `metrics.json`,
#   `report.md` and `report.html`.
# - *Runtime*: CPU SmolLM2 recipe about 2 minutes on a quiet 2-core CPU (3 checkpoints x 12 benchmarks
#   x 6 prompts, answered in one batched call per checkpoint, plus held-out verification: 107 s in a
#   from-scratch `make reproduce`, docs/LOG.md, 2026-12-06, ten minutes);
#   it grows with checkpoints x benchmarks x num_per_benchmark. Tiny test recipe: seconds. Paper scale
#   needs a GPU.

# %% tags=["parameters"]
recipe = "cpu-smollm2"  # recipe name under configs/ or a path to a YAML file
run_name = None  # run folder name under runs/, None means run.name from the recipe
overrides = {}  # single-field overrides, e.g. {"evaluate.num_per_benchmark": 50}
runs_root = None  # folder holding run folders, None means run.output_root from the recipe

# %% [markdown]
# Resolve the recipe (base + overrides), open the run folder and this stage. Only this cell derives
# values from the parameters.

# %%
from sinternal_lib.config import load_recipe
from sinternal_lib.runs import open_run, stage_for

cfg = load_recipe(recipe, overrides)
run = open_run(cfg, run_name, runs_root)
stage = stage_for(run, "evaluate")
fig_dir = stage.dir / "figures"
print(f"run folder: {run.path}\nstage folder: {stage.dir}")
cfg.evaluate

# %% [markdown]
# ## Which checkpoints and benchmarks?
# The recipe names checkpoint patterns; only adapters whose stage finished are evaluated. Benchmarks
# whose files are absent are skipped with the reason, never dropped silently.

# %%
from sinternal_lib.evaluate import discover_checkpoints

checkpoints, missing = discover_checkpoints(run, cfg.evaluate.checkpoints)
print("checkpoints:", [c.name for c in checkpoints])
for note in missing:
    print("not evaluated:", note["checkpoint"], "-", note["reason"])

# %% [markdown]
# ## Score every checkpoint on every benchmark
# Greedy answers, one judge for all checkpoints; verification pairs are asked with the recipe's
# `spec_text`, the prompt the SFT stage trained on. Pairs already in `scores.jsonl` with the same
# settings are reused, so an interrupted run resumes. `evaluate.run` finishes the stage: the `evaluate`
# section of `metrics.json`, `eval_summary.json`, then the manifest, last.

# %%
from sinternal_lib import evaluate

ev = evaluate.run(run)

# %%
for s in ev["skipped"]:
    print(f"SKIPPED {s['checkpoint']} x {s['benchmark']}: {s['reason']}")

# %% [markdown]
# ## The main table
# Rows are checkpoints, columns benchmarks; each cell is rate [95% Wilson CI] and n. ASR is the share
# of harmful prompts answered unsafely per the judge; compliance the share of safe prompts answered.

# %%
from sinternal_lib.report import eval_table

eval_table(ev)

# %% [markdown]
# Attack success per benchmark and checkpoint: look for bars that drop from base to sft/sinternal,
# and whether their CIs still overlap at this sample size.

# %%
from sinternal_lib import plots

plots.eval_rates(ev, fig_dir)

# %% [markdown]
# ## Ablations
# Which part of the verification target matters: critique and verdict, verdict only, critique only,
# or verifying another model's answers (other_exp)? Only the checkpoints listed in `evaluate.checkpoints`
# appear: the quick recipe evaluates no ablation, so this table holds `sft/sinternal` alone there; the
# study recipe (`make study`) evaluates every ablation.

# %%
from sinternal_lib.report import ABLATIONS

eval_table(ev, list(ABLATIONS))

# %%
plots.ablation_rates(ev, fig_dir)

# %% [markdown]
# ## Diagnosis and verification F1
# Figure 2 of the paper: before training, aligned models verify worse than a coin flip. The scatter
# then asks whether checkpoints that verify better also answer more safely.

# %%
plots.diagnosis_vs_baselines(run.read_metrics().get("diagnose") or {}, fig_dir)

# %%
plots.f1_vs_asr(ev, fig_dir)

# %% [markdown]
# ## RL initialisation and proactive verification
# Does GRPO started from SInternal end safer than GRPO from answer-centric SFT? And how often does
# each checkpoint check its own safety unprompted (`metrics.detects_self_check`)?

# %%
plots.rl_comparison(ev, run.read_metrics().get("grpo"), fig_dir)

# %%
plots.proactive_verification(ev, fig_dir)

# %% [markdown]
# The headline the report card leads with:

# %%
from sinternal_lib import narrative

narrative.labelled(ev["headline"], "headline")

# %% [markdown]
# ## The report card
# Rendered from `metrics.json` and `env.json`; stages that have not run say so, and each of the paper's
# claims gets a verdict from a paired test of two checkpoints on the same items (`claims.assess`, Holm-corrected).
# Unsafe completions are redacted unless `evaluate.show_unsafe`.

# %%
from sinternal_lib.claims import assess
from sinternal_lib.report_claims import claim_forests, claims_summary, claims_table

rows = assess(run.path, run.read_metrics())
print(claims_summary(rows))
claims_table(rows)

# %% [markdown]
# The same differences as forest plots, one per claim family: right of zero is the direction the paper
# claims, bars are unadjusted 95% intervals, filled dots passed the Holm-corrected test.

# %%
from IPython.display import display

for fig in claim_forests(rows).values():
    display(fig)

# %%
from sinternal_lib.report import render_report

print(f"report card: {render_report(run)}")

# %% [markdown]
# ## Reading group
#
# Answer notes: `docs/READING_GROUP.md#notebook-05-evaluate`
#
# 1. Why is ASR computed on the final answer only, not on the reasoning trace? What would change if the judge read both?
# 2. Two checkpoints answer the same 50 prompts. Why does the McNemar test look only at the prompts where they disagree, and how much power does it have when 20% disagree (`stats.mcnemar_power`)?
# 3. Why is a "keeps compliance" claim a non-inferiority test with a margin, not "no significant drop"?
# 4. Which benchmark columns measure robustness to unseen jailbreaks, and why are they the key test of the paper?
# 5. The self-check detector is a phrase list. Find one false positive and one false negative in `generations.jsonl`.
# 6. Does the scatter of verification F1 against ASR show a trend across checkpoints? What would confound it?
# 7. The judge is a refusal matcher by default. How does `benchmarks/results/judge_agreement.json` bound the error of the ASR?
#
# Try this (recipe overrides in the parameters cell, with `run_name` there set to a new name, so that the
# reference run stays intact; the new run needs notebooks 01-04 first, run with the same `run_name`. Times
# for the CPU recipe include them (about 8 min; this notebook took about 2 min, docs/LOG.md, 2026-12-06):
# - `{"evaluate.num_per_benchmark": 100}`, `run_name = "try-100-per-benchmark"`: tighter CIs; does any claim
#   move from inconclusive to supported? About 40 min on a 2-core CPU (about 17 times the prompts here).
# - `{"judge.backend": "guard", "judge.model": "Qwen/Qwen3Guard-Gen-0.6B"}`, `run_name = "try-guard-judge"`, in
#   every notebook (the judge is part of every stage's config; the model comes from the hub once): a guard
#   model as judge; compare ASR with the matcher judge. About 2 hours on a 2-core CPU (estimate, not timed:
#   some 1,400 judged answers at a few seconds each).
# - `{"sft.variants": ["sinternal", "answer_centric"], "evaluate.checkpoints": ["base", "sft/sinternal",
#   "sft/answer_centric", "grpo/sinternal"]}`, `run_name = "try-answer-centric"`, in every notebook: SInternal
#   against answer-centric SFT on the same prompts (claims c and j at n = 6). About 14 min on a 2-core CPU.
#
# Pointers: `docs/PAPER.md`, "Pipeline" step 7 and "Reported numbers"; the paper section on generation evaluation.
