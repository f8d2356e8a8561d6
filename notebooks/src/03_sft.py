# %% [markdown]
# # 03 · SFT: verification fine-tuning with 4-bit QLoRA
#
# Paper: [arXiv 2605.08930](https://arxiv.org/abs/2605.08930). Glossary and answer notes for the reading group: `docs/READING_GROUP.md`.
#
# **What this shows.** Paper step 5: train the policy only to *verify* its own answers (spec, prompt,
# answer -> critique + verdict), with the loss on the critique and verdict alone, and compare it on the
# same held-out data with the base model, the ablations (verdict only = "w/o critique", critique only =
# "w/o verdict", Other-Exp = verifying answers other models wrote, `sinternal_refusal_mix` = SInternal
# with the refusal-carrying chat mix, when the recipe lists them) and answer-centric SFT (prompt -> own
# safe answer). Two questions: does verification improve on held-out pairs, and does it leave ordinary
# chat alone?
#
# **Inputs.** `02_build_data/verification/*.jsonl`, `judged_self.jsonl` (own answers to benign prompts:
# the chat mixed in as a takeover guard), `answer_centric.jsonl` (the baseline, and the mix of the
# refusal-mix ablation), `heldout_pairs.jsonl` (test split); held-out chat prompts from the embedded test
# split; XSTest completions and PKU-SafeRLHF from the shared data folder (Other-Exp, held-out human pairs).
#
# **Outputs.** `03_sft/<variant>/`: `adapter/` (LoRA + tokenizer), `checkpoints/`, `loss.csv`,
# `mixed_chat.jsonl` (the chat rows mixed in, each flagged: harmful prompt, refusal, refusal opener),
# `verification_eval.jsonl`, `chat_eval.jsonl`, `forced_choice_eval.jsonl` (P(unsafe) per held-out pair),
# `summary.json` (written last); `03_sft/other_exp/verification_rows.jsonl` and `human_split.json` (which
# human-labelled answers Other-Exp trained on, apart from the held-out ones); `03_sft/base/` (the base
# model's evaluation); figures `runs/<run>/figures/sft_loss.png` and `sft_before_after.png`; the `sft` section of `metrics.json`.
#
# **Runtime.** Embedded CPU recipe (SmolLM2-135M, 4-bit base, bf16 autocast, padding-free batches,
# compact LM head, no LoRA dropout): about 4.5 minutes on a quiet 2-core CPU (248-276 s in two from-scratch
# `make reproduce` runs, docs/LOG.md, 2026-12-06, ten minutes): one variant, SInternal, 60 steps of 4
# examples (160-195 s), plus the held-out evaluation of the base model and of the variant (30-45 s each).
# The study recipe trains all six variants for 80 steps (stage 03 took 1.1 hours on 2026-12-06). Tiny test recipe: under a minute.
# Paper scale (7B-14B, ~6,000 examples, 2 epochs) needs a GPU.

# %% tags=["parameters"]
recipe = "cpu-smollm2"  # recipe name under configs/ or a path to a YAML file
run_name = None  # run folder name under runs/, None means run.name from the recipe
overrides = {}  # single-field overrides, e.g. {"sft.learning_rate": 1e-3}
runs_root = None  # folder holding run folders, None means run.output_root from the recipe

# %% [markdown]
# Resolve the recipe (base + overrides), open the run folder and this stage. Only this cell derives
# values from the parameters.

# %%
from sinternal_lib import narrative, sft, training_plots, views
from sinternal_lib.config import load_recipe
from sinternal_lib.runs import open_run, stage_for

cfg = load_recipe(recipe, overrides)
run = open_run(cfg, run_name, runs_root)
stage = stage_for(run, "sft")
figures = run.path / "figures"
effective_batch = cfg.sft.per_device_train_batch_size * cfg.sft.gradient_accumulation_steps
print(f"run folder: {run.path}\nstage folder: {stage.dir}")
print(f"{cfg.sft.max_steps} steps x effective batch {effective_batch} = "
      f"{cfg.sft.max_steps * effective_batch} examples seen per variant (same budget for every variant)")
cfg.sft

# %% [markdown]
# ## The training data of each variant
#
# Every variant trains on conversational prompt/completion rows, so TRL puts the loss on the completion
# only. The verification variants share one prompt (the verifier system message with the spec, then the
# prompt and the candidate answer) and differ only in the target. `mixed_chat` counts the own judged-safe
# chat answers mixed in (`sft.chat_mix_fraction`): the takeover guard discussed below. `mix_harmful_prompt`,
# `mix_refusal` and `mix_refusal_opener` count the mixed rows that answer a harmful prompt, refuse, or
# open with one of stage 02's refusal openers: 0 for every variant but `sinternal_refusal_mix`, whose mix
# is the answer-centric rows. `mixed_chat` below `mix_wanted` means stage 02 gave too few benign own answers
# (the summary's `mix.note` says so; nothing harmful is added instead). Other-Exp's rows appear once
# `sft.run` has built them.

# %%
overview = views.variant_overview(run, cfg)
overview

# %% [markdown]
# The targets differ as the paper's ablations do: critique then `Verdict: ...`, the verdict line alone,
# or the critique alone; the answer-centric rows hold an own answer to the prompt instead.

# %% [markdown]
# ## The configs every variant trains with
#
# `sft.training_configs` builds them from the recipe, and `sft.run` below trains each variant with these
# very objects (in the variant's own folder). Recipe keys of the `lora` and `sft` sections named as PEFT /
# TRL fields (`r`, `lora_alpha`, `learning_rate`, `per_device_train_batch_size`, ...) reach them
# unchanged. First the 4-bit base the adapter trains on:

# %%
configs = sft.training_configs(cfg, stage.dir / cfg.sft.variants[0] / "checkpoints")
configs["quantization"]

# %% [markdown]
# QLoRA: `load_in_4bit` with `bnb_4bit_quant_type` NF4 and `bnb_4bit_use_double_quant` (the
# quantization constants are quantized too), while matrix products run in `bnb_4bit_compute_dtype`.
# The quantized linear weights take about a quarter of their 16-bit memory; the embedding and tied LM
# head stay unquantized, so a small model such as SmolLM2 saves far less in all (docs/LOG.md, 2026-11-27,
# 4-bit QLoRA does not halve training memory at these sizes). (A recipe with
# `model.load_in_4bit: false` shows `None` here: it trains on the full-precision base.)
#
# The fresh adapter, which the trainer attaches (`SFTTrainer(peft_config=...)`):

# %%
configs["lora"]

# %% [markdown]
# Look at `r` (the rank: 16, the paper), `lora_alpha` (the update is scaled by `lora_alpha / r` = 2),
# `lora_dropout`, `target_modules` (every attention and MLP projection: the default the paper does not
# state) and `task_type` `CAUSAL_LM`. Everything else is PEFT's default. GRPO's base init (notebook 04)
# gets the same adapter config.
#
# And the training arguments, the fields worth reading (taken from the `SFTConfig` object):

# %%
sft_args = configs["sft"]
narrative.labelled({k: getattr(sft_args, k) for k in ("learning_rate", "lr_scheduler_type", "num_train_epochs", "max_steps",
                                   "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
                                   "bf16", "gradient_checkpointing", "completion_only_loss", "padding_free",
                                   "save_steps")}, "SFTConfig field")

# %% [markdown]
# - `max_steps` > 0 overrides `num_train_epochs`: every variant gets the same step budget.
# - One optimizer step sees `per_device_train_batch_size` x `gradient_accumulation_steps` examples.
# - `completion_only_loss`: the loss falls on the target (critique and verdict) only, never on the spec
#   and prompt that every example repeats.
# - `max_length` is `None` on purpose: rows longer than the recipe's `sft.max_length` were already
#   dropped (TRL would truncate them, keeping the start and cutting the verdict off).
# - `padding_free` packs a batch into one row without padding; `bf16` autocasts matrix products;
#   `gradient_checkpointing` trades time for memory (off on the CPU recipe, where a 135M model fits).

# %% [markdown]
# ## Train and evaluate every variant
#
# One call does the stage: the base model is evaluated first, then each variant gets a fresh LoRA on the
# 4-bit NF4 base (double quantization; gradient checkpointing as the config above says; a checkpoint every `save_steps`), is
# trained for the same number of steps, saved, and evaluated on the same held-out pairs and chat
# prompts. A variant whose `summary.json` exists is skipped, and an interrupted one resumes from its last
# checkpoint. The call ends by writing the `sft` section of `metrics.json` and the stage manifest (last).

# %%
summary = sft.run(run)
narrative.labelled(summary["headline"], "headline")

# %% [markdown]
# ## Results on held-out data
#
# Verification: balanced accuracy and macro-F1 (unsafe is the positive class for F1) with bootstrap 95%
# intervals; a missing verdict counts as wrong. Two held-out sets: pairs built in notebook 02 from the
# policy's own answers to TEST-split prompts, and, when the shared data folder is present, human-labelled
# XSTest completions (answers written by other models, labels by people; the `bal_acc_xstest_completions`
# columns). Chat: attack success rate (ASR) on held-out harmful
# prompts, compliance on held-out benign prompts, and the takeover rate (replies that read like a critique
# or carry a verdict line).
#
# A critique cut off by the token limit has no verdict and counts as wrong, so `sft.eval_max_new_tokens`
# must exceed the longest training target (critique + verdict). If the `no_verdict` column is near 1.0
# for a trained variant, raise that limit before reading anything else. (On 2026-11-27, with the longer
# critiques the CPU recipe had then and 48 new tokens, every trained SmolLM2 verifier output was cut off
# before its verdict line: docs/LOG.md, CPU recipe budgets cut while the machine was shared.)

# %%
variants = {k: v for k, v in summary.items() if k not in ("headline", "human_sets_skipped")}
table = views.results_table(variants)
table.round(3)

# %% [markdown]
# `no_verdict` and the free-form columns measure whether a model writes a verdict line it can be scored
# on; the forced-choice columns (`fc_auroc`, `fc_bal_acc`) score the same held-out pairs by which word the
# model finds likelier right after `Verdict:` (no critique, no generation; AUROC 0.5 is chance,
# `fc_bal_acc` uses a threshold chosen on one half of the pairs, read on the other). Where a model writes
# no verdicts but its forced-choice AUROC is above chance, its free-form score is a format failure.

# %%
table[["model", "bal_acc", "no_verdict", "fc_auroc", "fc_bal_acc"]].round(3)

# %% [markdown]
# The trivial verifiers on the same pairs: coin flip at the base rate, always unsafe, always safe, and
# *prompt only* (unsafe exactly when the prompt is harmful, never reading the answer). A verifier is
# useful only above all of them. The prompt-only row is the hard one: on a set without safe answers to
# harmful prompts it scores 1.0, which is why notebook 02 samples refusals for the held-out pairs too.

# %%
views.baselines_table({k: v for k, v in summary.items() if k not in ("headline", "human_sets_skipped")}).round(3)

# %% [markdown]
# The loss falls on the completion tokens only. Verdict-only targets are one short line, so expect their
# loss to drop fastest. Critiques are longer, but the offline teacher's phrasings repeat: a critique loss
# that also falls within a few steps says the model has learned those phrasings, not that it verifies
# well (the table above says that).

# %%
training_plots.sft_loss_curves(views.read_loss_curves(stage.dir), figures)

# %% [markdown]
# Before and after, side by side on the same held-out data. Look at the left panel first: the method
# works here only if SInternal sits above the dashed line (the best trivial baseline) and above the base
# model, with intervals clear of both (the sentence above says whether it does in this run). Then the right panel: a takeover rate well above the base model's
# means verification has leaked into chat.

# %%
training_plots.sft_before_after(variants, figures)

# %% [markdown]
# What this run shows, in numbers computed from its own summary (the same ones as the tables above):

# %%
from IPython.display import Markdown

Markdown(narrative.sft_results(summary))

# %% [markdown]
# **How to read the tables.** A verifier is above chance only where its balanced-accuracy (and
# macro-F1) interval lies above the coin flip and always-one-label (0.50). Beating them says it learned
# *something*; three checks say what:
# - the *prompt-only* row: if it scores as high as SInternal, SInternal may have learned "an answer that
#   opens with a refusal is safe, anything else is unsafe", which calls benign answers unsafe;
# - the human-labelled XSTest columns (answers it never saw written): 0.50 there is chance, often one label for all;
# - verdict-only (the paper's "w/o critique"): if it does as well, the critique did not help the decision
#   at this scale, unlike the paper's ablation.
#
# ASR on the held-out harmful prompts: overlapping intervals mean no measured change. SInternal's mixed-in
# chat holds no refusal and no harmful prompt, so a drop there is not taught by the mix; the
# `sinternal_refusal_mix` ablation (when run) shows what the refusal-carrying mix adds.
#
# An earlier run, for comparison (its numbers are not this run's):
#
# | date | recipe | machine | held-out pairs | result |
# |---|---|---|---|---|
# | 2026-11-27 | `cpu-smollm2` then (80 steps per variant, the refusal-carrying chat mix) | 2-core AMD EPYC, AVX512-BF16 | 24 own, 16 XSTest | SInternal 0.67 [0.54, 0.81], above the coin flip but not above prompt-only (0.75); one label on XSTest (0.50); verdict-only 0.75 (docs/LOG.md, the 80-step CPU recipe learns to verify, but mostly by spotting refusals) |

# %% [markdown]
# ## Does verification take over chat?
#
# The same held-out harmful prompts answered by the base model and by the SInternal adapter (answers
# shortened; an answer the judge called unsafe is redacted unless the recipe sets `evaluate.show_unsafe`).
# A taken-over reply opens like a critique ("The answer ...") or ends with a verdict line.

# %%
views.side_by_side(stage.dir, ["base", "sinternal"] if "sinternal" in summary else ["base"], n=3,
                   show_unsafe=cfg.evaluate.show_unsafe)

# %% [markdown]
# **What keeps chat intact at this scale.** The recipe mixes a share of the model's own judged-safe
# chat answers into the verification data (`sft.chat_mix_fraction`, rows from stage 02 at no extra
# cost), because a verifier that breaks chat defeats the purpose. The comparison behind it (2026-11-27,
# `cpu-smollm2`, SInternal only, same data, steps and evaluation, 0.0 vs 0.3): without the mix the model
# verified better but most ordinary chat replies came out as critiques; with it takeover fell, at a cost
# in verification accuracy. Lowering the learning rate or the LoRA rank instead was not measured. The
# table is in docs/LOG.md (chat takeover with and without the own-chat mix).
#
# That mix was stage 02's answer-centric rows, mostly refusals (stage 02's refusal openers), so a lower
# ASR after SFT came from them rather than from learning to verify: in that comparison SInternal's ASR
# did not drop without the mix. SInternal now mixes in only its own judged-safe answers to benign prompts
# (no refusal, no harmful prompt: see `mixed_chat.jsonl` in its folder); the refusal mix is kept as the
# ablation `sinternal_refusal_mix`. Whether the benign-only mix guards against takeover as well is not
# measured yet: the right-hand panel above is the takeover check for this run; the first "try this"
# below removes the mix.
#
# **Does generation get safer?** At 135M and this budget, the paper's transfer from verifying to
# generating safe answers is not expected to show: compare the ASR bars with their intervals. Overlapping
# intervals mean no measured change, and this notebook does not claim one.

# %% [markdown]
# ## Reading group
#
# Answer notes: `docs/READING_GROUP.md#notebook-03-sft`
#
# 1. Why does the loss fall on the critique and verdict only, and what would full-sequence loss teach
#    the model instead (hint: the spec text is the same in every example)?
# 2. Which variant reaches a low loss fastest? Why is a low loss not the same as a good verifier here?
#    Compare its balanced accuracy with the SInternal row.
# 3. Why report balanced accuracy and macro-F1 next to F1 on the unsafe class, and why compare with
#    "always unsafe" as well as with a coin flip?
# 4. A missing verdict counts as wrong. Which variant is hurt by that rule, and is it fair?
# 5. Why are the held-out pairs built from TEST-split prompts, and what would leak if they were not?
# 6. The mixed-in chat rows are the model's own answers judged safe. Why own answers rather than answers
#    from a stronger model (compare the paper's Self-Exp vs Other-Exp result in `docs/PAPER.md`)?
# 7. What does a takeover rate above the base model's mean for the claim that verification transfers
#    to generation?
#
# Try this (as `overrides` in the parameters cell, with `run_name` there set to a new name, so that the
# reference run stays intact; the new run needs notebook 02 first, run with the same `run_name`. Times for
# the CPU recipe include it (about 1.5 min; this notebook took about 4.5 min, docs/LOG.md, 2026-12-06):
# - `{"sft.chat_mix_fraction": 0.0}`, `run_name = "try-no-mix"`: no chat mixing; watch the takeover rate.
#   About 6 min on a 2-core CPU.
# - `{"sft.variants": ["sinternal", "verdict_only", "answer_centric"]}`, `run_name = "try-ablations"`: the
#   paper's "w/o critique" and the answer-centric baseline beside SInternal. About 13 min on a 2-core CPU.
# - `{"sft.variants": ["sinternal", "sinternal_refusal_mix"]}`, `run_name = "try-refusal-mix"`: the clean mix
#   against the refusal mix; compare ASR. About 10 min on a 2-core CPU (two variants).
# - `{"sft.variants": ["sinternal", "other_exp"]}`, `run_name = "try-other-exp"`: Self-Exp vs Other-Exp (needs
#   the shared data folder). About 10 min on a 2-core CPU, more if the human-written answers run long.
# - `{"sft.learning_rate": 3e-4}`, `run_name = "try-low-lr"`: the paper-like low rate; does the verifier still
#   learn in this budget? About 6 min on a 2-core CPU.
# - `{"sft.max_steps": 160}`, `run_name = "try-160-steps"`: over twice the step budget. About 11 min on a
#   2-core CPU.
# - `{"lora.r": 4, "lora.lora_alpha": 8}`, `run_name = "try-rank-4"`: a quarter of the adapter rank at the same
#   scale; does it still learn? About 6 min on a 2-core CPU.
# - `{"build_data.num_harmful_prompts": 128}`, `run_name = "try-128-harmful"`, in notebook 02 and then this one:
#   more harmful prompts give more contrastive pairs (SmolLM2 rarely refuses). About 8 min on a 2-core CPU
#   (notebook 02 samples 160 prompts instead of 64: about 3 min).
#
# Paper: section on verification SFT and its ablations (w/o critique, w/o verdict, Self-Exp vs
# Other-Exp); `data/paper_numbers.yaml` for the reference numbers (secondary summaries).
