# Source of notebooks/02_build_verification_data.ipynb (build with: python -m sinternal_lib build-notebooks)
# %% [markdown]
# # 02_build_verification_data
#
# *Not built yet*: this notebook's stage is filled in by a later issue. It opens the run folder so the
# runner can execute the pipeline end to end; the report says this stage is not built yet.

# %% tags=["parameters"]
recipe = "cpu-smollm2"  # recipe name under configs/ or a path to a YAML file
run_name = None  # run folder name under runs/, None means run.name from the recipe
overrides = {}  # single-field overrides, e.g. {"sft.learning_rate": 1e-3}
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
cfg.build_data

# %% [markdown]
# ## Reading group
#
# This stage is not built yet.
