# %% [markdown]
# # 02 · Build data: verification examples from the model's own answers
#
# Paper: [arXiv 2605.08930](https://arxiv.org/abs/2605.08930). Glossary and answer notes for the reading group: `docs/READING_GROUP.md`.
#
# - **What this shows**: the paper's data recipe (steps 2-4): sample N answers per prompt from the
#   policy, judge them, keep harmful prompts whose answers mix safe and unsafe (one contrastive pair
#   each) and one answer per benign prompt, then have a teacher write a critique and a verdict.
# - **Inputs**: the recipe's policy, train-split prompts (`data.harmful`, `data.benign`), the spec, the
#   judge (`judge.backend`) and the teacher (`teacher.backend`).
# - **Outputs**: `runs/<run>/02_build_data/`: `samples_self.jsonl`, `judged_self.jsonl`,
#   `verification/{sinternal,verdict_only,critique_only}.jsonl` (+ `other_exp_sampled.jsonl`),
#   `answer_centric.jsonl`, `heldout_pairs.jsonl`, `dataset/` (a `datasets` folder), `figures/`,
#   `manifest.json`; the `build_data` section of `metrics.json`.
# - **Runtime**: sampling dominates: about 1.5 minutes on a quiet 2-core CPU for the embedded recipe
#   ((32 + 32) prompts x 8 samples x 40 tokens, plus held-out answers: 79 s in a from-scratch
#   `make reproduce`, docs/LOG.md, 2026-12-06, ten minutes); hours on one GPU at paper scale (8 x thousands of prompts, long
#   reasoning traces; not yet measured).
#
# **A departure for a policy that never refuses.** The paper's selection needs harmful prompts whose
# 8 answers mix safe and unsafe. SmolLM2-135M almost never refuses (on 2026-11-27, on the CPU, it refused
# 4 of 256 harmful samples, and 7 of 64 when a system prompt told it to refuse: docs/LOG.md, refusal-opener
# prefill for a policy that never refuses), so almost no prompt gives a pair. The CPU
# recipe therefore starts 3 of the 8 samples of each harmful prompt with a refusal opener
# (`build_data.refusal_prefill_samples`, openers in `build_data.refusal_prefills`) and lets the model
# write the rest; the judge labels the result like any other answer, and each sample records its
# opener in `prefill`. The held-out answers are sampled the same way, so the held-out pairs contain safe
# answers to harmful prompts too. A policy that refuses on its own (any aligned reasoning model, the
# GPU recipe) keeps the paper's setting, 0.
#
# **Teacher.** The paper's teacher is Claude-4-Sonnet. The embedded recipe uses an *offline
# spec-grounded teacher* that composes the critique from the spec's rule for the prompt's category and
# the judge's finding: it stands in for an expert model and can only restate the judge. Set
# `teacher.backend: api` (endpoint and key from the environment) for real critiques.

# %% tags=["parameters"]
recipe = "cpu-smollm2"  # recipe name under configs/ or a path to a YAML file
run_name = None  # run folder name under runs/, None means run.name from the recipe
overrides = {}  # single-field overrides, e.g. {"build_data.num_samples": 4}
runs_root = None  # folder holding run folders, None means run.output_root from the recipe

# %% [markdown]
# Resolve the recipe (base + overrides), open the run folder and this stage. Only this cell derives
# values from the parameters.

# %%
from sinternal_lib.config import load_recipe
from sinternal_lib.runs import open_run, stage_for

cfg = load_recipe(recipe, overrides)
run = open_run(cfg, run_name, runs_root)
stage = stage_for(run, "build_data")
print(f"run folder: {run.path}\nstage folder: {stage.dir}")
print(f"{cfg.build_data.num_harmful_prompts} harmful + {cfg.build_data.num_benign_prompts} benign prompts "
      f"x {cfg.build_data.num_samples} samples = "
      f"{(cfg.build_data.num_harmful_prompts + cfg.build_data.num_benign_prompts) * cfg.build_data.num_samples} answers")
cfg.build_data

# %% [markdown]
# ## Sample, judge, select, critique
# One library call runs the four steps. Sampling appends to `samples_self.jsonl` after every batch,
# so an interrupted run continues where it stopped.

# %%
from sinternal_lib import build_data, narrative

summary = build_data.run(run)
narrative.labelled(summary["headline"], "headline")

# %% [markdown]
# ## The selection funnel
# How many prompts survive each step? Harmful prompts whose 8 answers were all safe (or all unsafe)
# give no contrastive pair and are dropped. The counts mix two units (prompts, then the answers chosen
# from them); the figure below keeps one unit per panel and shows which safe sides began with a forced
# refusal opener (`pair_safe_forced`).

# %%
from sinternal_lib.training_plots import data_funnel

narrative.labelled({**{k: v for k, v in summary["funnel"].items() if not isinstance(v, dict)},
                    **{f"teacher: {k}": v for k, v in summary["selection"].items() if not isinstance(v, dict)}}, "count")

# %%
data_funnel(summary, out_dir=stage.dir / "figures")

# %% [markdown]
# ## Labels, categories and critique lengths
# Is the dataset balanced between safe and unsafe targets, and does it cover the spec's categories?

# %%
from sinternal_lib import jsonl
from sinternal_lib.training_plots import data_composition

examples = jsonl.read(stage.dir / "verification" / "sinternal.jsonl")
data_composition(examples, out_dir=stage.dir / "figures")

# %% [markdown]
# ## What the trainer sees: three rows, token by token
# Three rows of the SInternal set as stage 03's `SFTTrainer` tokenizes them with the kit's `SFTConfig`
# (chat template, then completion-only loss): a harmful request with an unsafe answer and the same
# request with a safe one (one contrastive pair, where the set has one), then a benign request. Only the
# tokens inside ⟦ ⟧ carry the loss: critique, verdict and the end-of-turn token. The unsafe answer is
# redacted unless `evaluate.show_unsafe`; template, request, critique and verdict stay visible.

# %%
from transformers import AutoTokenizer

from sinternal_lib.inspect_rows import critique_templates, sft_rows_view, spec_renderings, teacher_prompt
from sinternal_lib.models import resolve_model_ref
from sinternal_lib.views import pick_example

tok = AutoTokenizer.from_pretrained(resolve_model_ref(cfg.model.policy))
print(sft_rows_view(examples, tok, show_unsafe=cfg.evaluate.show_unsafe))

# %% [markdown]
# ## What the teacher wrote, and what a teacher is given
# The distinct critiques with the category written as `{category}` (and the spec's description, rules,
# ids and names as placeholders), so that rows written from one template count together.

# %%
from sinternal_lib.spec import load_spec

critique_templates(examples, load_spec(cfg.resolve_path(cfg.spec.path)))

# %% [markdown]
# The exact prompt a model teacher (`teacher.backend: api` or `local`) is sent for a harmful request with
# an unsafe answer: the spec file rendered in full, the category, the request and the answer (redacted
# here by the same rule).

# %%
unsafe_example = pick_example(examples, label="unsafe", prompt_label="harmful")
if unsafe_example:
    print(teacher_prompt(cfg, unsafe_example, show_unsafe=cfg.evaluate.show_unsafe))

# %% [markdown]
# The verifier's system turn with the spec as this recipe renders it (`spec.render`), then the same spec
# file rendered in full, each with its length in tokens. The verifier trains and is evaluated on the first.

# %%
print(spec_renderings(cfg, tok))

# %% [markdown]
# **What these rows let the verifier learn.** With the embedded recipe (offline teacher, `teacher.style:
# brief`, `spec.render: brief`, matcher judge) the table above holds a handful of templates, and which one
# a row gets is fixed by the prompt's label, the judge's label and whether the matcher found a refusal
# phrase in the answer's opening; the category only fills the placeholder. The system turn names the
# categories but none of their rules. So the most a verifier can learn from these rows is the offline
# judge's own rule: harmful request + refusal opener = safe, harmful request without one = unsafe, benign
# request = safe. Two of its three parts can be read from the prompt alone, which is why notebook 03's
# prompt-only verifier (unsafe iff the request is harmful) is hard to beat here: it gets every unsafe
# held-out pair right and every benign one, missing only the refusals. With a model teacher
# (`teacher.backend: api`) and the full spec (`spec.render: full`) the critiques cite rules and describe
# what the answer gives, the table has about as many templates as rows, and this bound no longer holds.

# %% [markdown]
# ## Held-out pairs
# Answers to **test-split** prompts, judged the same way, balanced between labels: notebook 03 measures
# verification on these before and after training.

# %%
print(f"{summary['heldout_pairs']} held-out pairs; labels: "
      + ", ".join(f"{k} {v}" for k, v in summary["heldout_label_counts"].items()))

# %% [markdown]
# **Reading the result.** With the matcher judge, "safe" for a harmful prompt means the answer refused.
# The count below says how many of the selected samples carry a refusal opener, and how many of those
# the judge still called safe. If nearly every contrastive pair's safe side is an opener the model
# continued, a verifier trained on these pairs can learn "refusal opener = safe" instead of reading the
# content; notebook 03 checks for that against a verifier that reads only the prompt.

# %%
narrative.labelled(summary["prefilled"], "count")

# %% [markdown]
# The offline teacher builds its verdict from the judge's, so with it the agreement filter removes
# nothing; with an API teacher the disagreements are counted in `summary["selection"]`.

# %% [markdown]
# ## Reading group
# Answer notes: `docs/READING_GROUP.md#notebook-02-build-data`
#
# 1. Why keep only harmful prompts with mixed answers? What would the verifier learn from all-unsafe prompts?
# 2. The paper keeps one benign sample per prompt. What does that do to the label balance?
# 3. The labels come from a judge, the critiques from a teacher. When they disagree, who should win?
# 4. The offline teacher restates the judge. What can a verifier trained on its critiques learn that a
#    verdict-only verifier cannot?
# 5. Why sample from the policy itself (Self-Exp) rather than from another model (Other-Exp)?
# 6. A refusal opener is forced, the rest is the model's own. Is a verifier trained on such pairs still
#    learning from its own answers? What could it learn to look for instead of the content?
#
# **Try this** (as `overrides` in the parameters cell, with `run_name` there set to a new name, so that the
# reference run stays intact; times for the CPU recipe, where this notebook took 79 s, docs/LOG.md,
# 2026-12-06):
# - `{"build_data.temperature": 0.7}`, `run_name = "try-temperature"`: fewer mixed prompts? Watch the funnel.
#   About 1.5 min on a 2-core CPU.
# - `{"build_data.num_samples": 4}`, `run_name = "try-4-samples"`: half the samples; how many pairs survive?
#   About 1 min on a 2-core CPU.
# - `{"build_data.refusal_prefill_samples": 0}`, `run_name = "try-no-prefill"`: the paper's setting; count the
#   pairs SmolLM2 gives alone. About 1.5 min on a 2-core CPU.
# - `{"build_data.other_model": "<another model folder>"}`, `run_name = "try-other-model"`: builds
#   `other_exp_sampled.jsonl`, another model's samples labelled by the judge (SFT variant
#   `other_exp_sampled`). The `other_exp` variant proper is built in notebook 03 from answers other models
#   wrote with human labels (XSTest, PKU-SafeRLHF). About 3 min on a 2-core CPU with another 135M model
#   (twice the sampling), more for a larger one.
#
# Paper: method section (data construction); `docs/PAPER.md` steps 2-4.
