"""`load_prompts`: a recipe's prompt sources (embedded sets and real benchmarks) as one list.

It lives with the loaders, not in `sinternal_lib.datasets`, because it calls `load_benchmark`:
the loaders depend on the record schema in `datasets`, never the reverse, so no import cycle.
"""

from __future__ import annotations

from typing import Iterable

from sinternal_lib.datasets import Record, load_embedded

from .load import load_benchmark, subsample


def load_prompts(sources: Iterable[str], kind: str, split: str | None, n: int | None = None,
                 seed: int = 0) -> list[Record]:
    """Prompts of one kind from the recipe's `data.<kind>` sources, then a seeded subsample of `n`.

    "embedded" reads the project's own set (one split); any other name is a real benchmark read by
    `load_benchmark` (all its rows: real sets have no train/test split of ours). A negative `n`
    keeps everything, as before the move.
    """
    out: list[Record] = []
    for src in sources:
        out += load_embedded(kind, split) if src == "embedded" else load_benchmark(src)
    return subsample(out, n, seed) if n is not None and n >= 0 else out
