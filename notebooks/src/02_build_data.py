# %% [markdown]
# # 02 · Build data: verification examples from the model's own answers
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
# - **Runtime**: sampling dominates: about 6 minutes on a quiet 2-core CPU for the embedded recipe
#   ((48 + 48) prompts x 8 samples x 40 tokens, plus held-out answers; docs/LOG.md, 2026-11-27, a
#   from-scratch `make reproduce`); hours on one GPU at paper scale (8 x thousands of prompts, long
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
from sinternal_lib import build_data

summary = build_data.run(run)
summary["headline"]

# %% [markdown]
# ## The selection funnel
# How many prompts survive each step? Harmful prompts whose 8 answers were all safe (or all unsafe)
# give no contrastive pair and are dropped.

# %%
from sinternal_lib.plots import data_funnel

summary["funnel"], summary["selection"]

# %%
fig = data_funnel(summary, out_dir=stage.dir / "figures")

# %% [markdown]
# ## Labels, categories and critique lengths
# Is the dataset balanced between safe and unsafe targets, and does it cover the spec's categories?

# %%
from sinternal_lib import jsonl
from sinternal_lib.plots import data_composition

examples = jsonl.read(stage.dir / "verification" / "sinternal.jsonl")
fig = data_composition(examples, out_dir=stage.dir / "figures")

# %% [markdown]
# ## One training example, as the model sees it
# The chat template applied to the input (system turn: the verifier instruction and the spec; user
# turn: the request and the answer to verify), then the target: critique and verdict, the only tokens
# that carry the loss. A safe answer to a harmful request is shown whole; an unsafe answer would be
# redacted (it is the policy's own harmful output).

# %%
from transformers import AutoTokenizer

from sinternal_lib.models import resolve_model_ref
from sinternal_lib.views import pick_example, training_example

tok = AutoTokenizer.from_pretrained(resolve_model_ref(cfg.model.policy))
example = pick_example(examples, label="safe", prompt_label="harmful")
if example:
    print(training_example(example, tok))

# %% [markdown]
# And a benign request, for contrast: the target explains why the help is permitted.

# %%
benign_example = pick_example(examples, label="safe", prompt_label="benign")
if benign_example:
    print(training_example(benign_example, tok, target_only=True))

# %% [markdown]
# ## Held-out pairs
# Answers to **test-split** prompts, judged the same way, balanced between labels: notebook 03 measures
# verification on these before and after training.

# %%
summary["heldout_pairs"], summary["heldout_label_counts"]

# %% [markdown]
# **Reading the result.** With the matcher judge, "safe" for a harmful prompt means the answer refused.
# The count below says how many of the selected samples carry a refusal opener, and how many of those
# the judge still called safe. If nearly every contrastive pair's safe side is an opener the model
# continued, a verifier trained on these pairs can learn "refusal opener = safe" instead of reading the
# content; notebook 03 checks for that against a verifier that reads only the prompt.

# %%
summary["prefilled"]

# %% [markdown]
# The offline teacher builds its verdict from the judge's, so with it the agreement filter removes
# nothing; with an API teacher the disagreements are counted in `summary["selection"]`.

# %% [markdown]
# ## Reading group
# 1. Why keep only harmful prompts with mixed answers? What would the verifier learn from all-unsafe prompts?
# 2. The paper keeps one benign sample per prompt. What does that do to the label balance?
# 3. The labels come from a judge, the critiques from a teacher. When they disagree, who should win?
# 4. The offline teacher restates the judge. What can a verifier trained on its critiques learn that a
#    verdict-only verifier cannot?
# 5. Why sample from the policy itself (Self-Exp) rather than from another model (Other-Exp)?
# 6. A refusal opener is forced, the rest is the model's own. Is a verifier trained on such pairs still
#    learning from its own answers? What could it learn to look for instead of the content?
#
# **Try this**:
# - `{"build_data.temperature": 0.7}`: fewer mixed prompts? Watch the funnel.
# - `{"build_data.num_samples": 4}`: half the cost; how many pairs survive?
# - `{"build_data.refusal_prefill_samples": 0}`: the paper's setting; count the pairs SmolLM2 gives alone.
# - `{"build_data.other_model": "<another model folder>"}`: builds `other_exp_sampled.jsonl`, another model's
#   samples labelled by the judge (SFT variant `other_exp_sampled`). The `other_exp` variant proper is
#   built in notebook 03 from answers other models wrote with human labels (XSTest, PKU-SafeRLHF).
#
# Paper: method section (data construction); `docs/PAPER.md` steps 2-4.
