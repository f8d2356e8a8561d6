# %% [markdown]
# # 06 · Beyond the paper: the trained model as its own guard, and a verifier under a swapped spec
#
# Paper: [arXiv 2605.08930](https://arxiv.org/abs/2605.08930). Glossary and answer notes for the reading group: `docs/READING_GROUP.md`.
#
# - *What this shows*: two questions the paper does not ask. (1) If verification SFT taught the model to
#   verify, can it guard its own answers at inference time: draft, check with its own verifier, re-sample or
#   refuse; or keep the best of N samples by its own verdict? Against plain answers and against the recipe's
#   judge as an external guard, with ASR, look-alike compliance and the tokens each policy costs. (2) Does the
#   verifier judge by the written spec? The same held-out pairs are verified under the shipped spec and under
#   edited specs that permit a forbidden category or forbid a permitted topic; "spec sensitivity" is how often
#   verdicts flip where the edit applies, minus how often they flip elsewhere.
# - *Inputs*: `02_build_data/heldout_pairs.jsonl`, `03_sft/<variant>/adapter`, the embedded test prompts, the
#   edited specs in `data/spec/` (`*_permit_*.yaml`, `*_forbid_*.yaml`).
# - *Outputs*: `06_self_verification/guarded.jsonl` (checkpoint x policy x prompt), `spec_pairs.jsonl`,
#   `spec_verdicts.jsonl` (checkpoint x spec x pair), `self_verification_summary.json`, `figures/*.png`, the
#   `self_verification` section of `metrics.json`, and the "Beyond the paper" section of `report.md`.
# - *Runtime*: the CPU recipe leaves this stage out of `make reproduce` (`run.stages`, its 10-minute budget);
#   run it with `--only 06` (under 4 minutes on a quiet 2-core CPU for its two checkpoints, an estimate:
#   `configs/cpu-smollm2.yaml` gives the arithmetic). The study recipe runs it on three checkpoints and four
#   verifiers (4,338 s wall on a partly shared CPU, docs/LOG.md, 2026-12-06); its results are in the README,
#   "The study". Tiny test recipe: seconds. Paper scale needs a GPU.

# %% tags=["parameters"]
recipe = "cpu-smollm2"  # recipe name under configs/ or a path to a YAML file
run_name = None  # run folder name under runs/, None means run.name from the recipe
overrides = {}  # single-field overrides, e.g. {"self_verification.max_retries": 4}
runs_root = None  # folder holding run folders, None means run.output_root from the recipe

# %% [markdown]
# Resolve the recipe (base + overrides), open the run folder and this stage. Only this cell derives
# values from the parameters.

# %%
from sinternal_lib.config import load_recipe
from sinternal_lib.runs import open_run, stage_for

cfg = load_recipe(recipe, overrides)
run = open_run(cfg, run_name, runs_root)
stage = stage_for(run, "self_verification")
fig_dir = stage.dir / "figures"
show_unsafe = cfg.evaluate.show_unsafe
print(f"run folder: {run.path}\nstage folder: {stage.dir}")
cfg.self_verification

# %% [markdown]
# ## Which checkpoints, and which edits?
# The guard runs on the recipe's `self_verification.checkpoints` (the study: base, SInternal, answer-centric);
# the spec swap on the base model and the trained verifiers (`spec_checkpoints`). Each edited spec names the pairs it affects and the flip it asks for.

# %%
from sinternal_lib.evaluate import discover_checkpoints

for label, patterns in (("guarded", cfg.self_verification.checkpoints),
                        ("spec swap", cfg.self_verification.spec_checkpoints)):
    found, missing = discover_checkpoints(run, patterns)
    print(f"{label}:", [c.name for c in found], *(f"| not found: {m['checkpoint']}" for m in missing))

# %%
from sinternal_lib import narrative
from sinternal_lib.spec_swap import edits_for

narrative.labelled({e.name: {"kind": e.kind, "category": e.category, "affects": e.affects,
                             "flip": " -> ".join(e.flip)} for e in edits_for(cfg)}, "edited spec")

# %% [markdown]
# ## Run both experiments
# Every policy on every guarded checkpoint, judged; then every spec checkpoint verifies the pairs under each
# spec (forced choice always; a written verdict too when `spec_free_form`). Finished blocks are kept, so an
# interrupted run resumes. `self_verification.run` finishes the stage: the summary, the `self_verification`
# section of `metrics.json`, then the manifest, last.

# %%
from sinternal_lib import self_verification

sv = self_verification.run(run)

# %% [markdown]
# ## 1. The model as its own guard
# Rate [95% Wilson CI] n per checkpoint and policy. ASR pools harmful and jailbreak prompts; compliance is on
# benign look-alikes only, so a guard that refuses everything shows up there. Tokens per prompt count every
# draft plus what the guard wrote; a forced-choice check writes nothing but costs a forward pass.

# %%
from sinternal_lib import report_beyond

report_beyond.frame(report_beyond.guard_rows(sv))

# %% [markdown]
# The trade-off in one picture: lower left is safer and helpful; larger markers cost more tokens. Look for
# where the self-guarded points of `sft/sinternal` sit against its plain point and against the judge-guarded one.

# %%
from sinternal_lib import plots

plots.guard_tradeoff(sv, fig_dir)

# %% [markdown]
# Paired tests on the same prompts (exact McNemar, Newcombe CI, Holm over every test here): does the guard help
# at all, is the self-guard as good as the external guard, and is SInternal's self-guard better than the
# other checkpoints'? On the CPU recipe the external guard is the matcher told the prompt label: an oracle that
# also scores its own output, so it should win there by construction.

# %%
report_beyond.frame(report_beyond.comparison_rows(sv, "self vs external guard"))

# %%
report_beyond.frame(report_beyond.comparison_rows(sv, "SInternal self-guard vs other checkpoint"))

# %% [markdown]
# A few guarded answers side by side (answers the judge called unsafe are redacted unless `evaluate.show_unsafe`):

# %%
report_beyond.frame(report_beyond.example_rows(stage.dir, "sft/sinternal", "embedded_harmful", 10, show_unsafe))

# %% [markdown]
# ## 2. Does the verifier follow the spec it is given?
# Per model and verdict source: the flip rate where an edit applies, the same flip elsewhere, and their
# difference (spec sensitivity, Newcombe 95% CI; 0 means the verdict ignores the spec). Free-form verdicts
# exist only for a model that writes a verdict line; the base model usually does not.

# %%
report_beyond.frame(report_beyond.spec_rows(sv))

# %%
plots.spec_sensitivity(sv, fig_dir)

# %% [markdown]
# Per category, for SInternal's forced-choice verdicts: where the edit applies, the share that flipped;
# elsewhere, the share that stayed the same.

# %%
report_beyond.frame(report_beyond.category_rows(sv, "sft/sinternal"))

# %% [markdown]
# Does SInternal follow the spec better than the base model and the verdict-only ablation? A paired bootstrap
# over pairs of the pooled sensitivity, Holm-corrected.

# %%
report_beyond.frame(report_beyond.spec_comparison_rows(sv))

# %% [markdown]
# What this run measured, in words (every number from the summary above):

# %%
from IPython.display import Markdown

Markdown(narrative.self_verification_results(sv))

# %% [markdown]
# The report card gets a "Beyond the paper" section with both results (rendered again here, since stage 05
# wrote it before this stage ran):

# %%
from sinternal_lib.report import render_report

print(f"report card: {render_report(run)}")

# %% [markdown]
# ## Reading group
#
# Answer notes: `docs/READING_GROUP.md#notebook-06-self-verification`
#
# 1. What to look at first: in the trade-off figure, does any self-guarded point of `sft/sinternal` sit lower
#    than its plain point without moving right? What does the move cost in tokens?
# 2. The self-guard uses forced choice by default. Why is that the only fair choice for the base model, and
#    what would `self_verdict: generate` measure instead?
# 3. Best-of-N never refuses, regenerate-then-refuse does. Which of the two can lower ASR below what the
#    model's best sample reaches, and what does each do to compliance on look-alikes?
# 4. The external guard with the matcher judge reads the prompt label. Why does that make "self-guard no
#    better than external guard" the expected result here, and what judge would make the comparison fair?
# 5. Spec sensitivity subtracts the flip rate on pairs the edit does not touch. What would a verifier that
#    answers at random score, and one that always says "safe"?
# 6. The permit edit removes one category name from a one-line list (brief render). Is that a fair test of
#    "following the spec" for a model trained on that list? What would the full render change?
# 7. If SInternal's sensitivity is no higher than verdict-only's, what does that say about the critique's role?
#
# Try this (recipe overrides in the parameters cell, with `run_name` there set to a new name, so that the
# reference run stays intact; the new run needs notebooks 01-03 first, run with the same `run_name`):
# - `{"self_verification.max_retries": 4}`, `run_name = "try-more-retries"`: more chances before refusing;
#   does ASR fall further, and what happens to tokens per prompt? About 1-2 more minutes for this notebook
#   on a 2-core CPU (estimate: up to 2 x the regenerate policies' tokens), plus about 30 min for notebooks 01-03.
# - `{"self_verification.self_verdict": "generate"}`, `run_name = "try-written-verdicts"`: the self-guard writes
#   a critique and a verdict instead of scoring the verdict word. About 3-4 more minutes (estimate: 40 verifier
#   tokens per draft checked), plus notebooks 01-03.
# - `{"spec.render": "full", "spec.path": "data/spec/safety_spec.yaml", "self_verification.spec_variants":
#   ["data/spec/safety_spec_permit_illegal_drugs.yaml", "data/spec/safety_spec_forbid_sensitive_topics.yaml"]}`,
#   `run_name = "try-full-spec"`, in every notebook: the full written spec, where an edit changes whole rules,
#   not a name in a list. Longer prompts: notebooks 01-03 and this one take roughly twice as long (estimate).
#
# Pointers: `docs/PAPER.md`, "Pipeline" steps 5 and 7; `sinternal_lib/self_guard.py` and `spec_swap.py`.
