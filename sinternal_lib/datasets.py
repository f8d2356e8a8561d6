"""Prompt records: the one row schema every prompt source is read into.

Embedded sets (written by the project, under `data/prompts/`) and real benchmark loaders
(`sinternal_lib.loaders`) both produce `Record`s. Labels are the strings "harmful" / "benign"
for prompts and "safe" / "unsafe" for (prompt, response) pairs; never 0/1.
This module is the schema: the loaders import it, it never imports them (so no import cycle);
`load_prompts`, which mixes embedded sets and real benchmarks, is `sinternal_lib.loaders.load_prompts`.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import jsonl
from .recipe_sections import REPO_ROOT

HARMFUL, BENIGN = "harmful", "benign"
PROMPT_LABELS = (HARMFUL, BENIGN)


@dataclass
class Record:
    """One prompt (optionally with a response and its human label).

    - `label`: "harmful" or "benign" (what the prompt asks for); "math" prompts are benign
      with `category="math"` and `reference` holding the exact answer.
    - `response`/`human_label`: for labelled completion sets (XSTest completions, PKU-SafeRLHF):
      `human_label` is "safe"/"unsafe" for harm labels, or "refusal"/"compliance"/"partial"
      for refusal labels (see `meta["label_kind"]`).
    """

    id: str
    prompt: str
    label: str
    category: str | None = None
    source: str = ""
    split: str | None = None
    reference: str | None = None
    response: str | None = None
    human_label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        return cls(**d)


def write_records(records: Iterable[Record], path: str | os.PathLike) -> Path:
    """Write records as JSONL atomically (`jsonl.write`)."""
    return jsonl.write((r.to_dict() for r in records), path)


def read_records(path: str | os.PathLike) -> list[Record]:
    """Read a JSONL file of records (`jsonl.read`); a malformed line or row raises naming the file."""
    out = []
    for i, row in enumerate(jsonl.read(path), 1):
        try:
            out.append(Record.from_dict(row))
        except TypeError as e:
            raise ValueError(f"{path}: row {i} is not a record ({e}); delete the file to rebuild it") from e
    return out


# ---------------------------------------------------------------------------------------------
# Embedded prompt sets (owner: data). Files under data/prompts/ are written by the project;
# see data/prompts/README.md. Splits are stratified per category, seeded and deterministic.
# ---------------------------------------------------------------------------------------------


PROMPTS_DIR = REPO_ROOT / "data" / "prompts"
JAILBREAK_TEMPLATES_PATH = PROMPTS_DIR / "jailbreak_templates.yaml"
EMBEDDED_KINDS = ("harmful", "benign", "math", "jailbreak")
SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = (0.60, 0.15, 0.25)
SPLIT_SEED = 1234
MATH_SEED, MATH_N = 20260, 260


def normalize_prompt(text: str) -> str:
    """Lower-case, strip punctuation and collapse whitespace: the key used to dedupe prompts."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def dedupe_records(records: Iterable[Record]) -> list[Record]:
    """Keep the first record for each normalized prompt text."""
    seen: set[str] = set()
    out = []
    for r in records:
        key = normalize_prompt(r.prompt)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def assign_splits(records: list[Record], seed: int = SPLIT_SEED,
                  fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> list[Record]:
    """Set `split` to train/dev/test, stratified by (category, lookalike), seeded and deterministic.

    Records are deduped by normalized text first, so no prompt text can land in two splits.
    Within each stratum the records are sorted by id, shuffled with a seed derived from the stratum
    name, and cut by `fractions` (rounded; the remainder goes to test). Returns new list (mutates splits).
    """
    records = dedupe_records(records)
    strata: dict[str, list[Record]] = {}
    for r in records:
        key = f"{r.category}|{bool(r.meta.get('lookalike'))}"
        strata.setdefault(key, []).append(r)
    for key in sorted(strata):
        group = sorted(strata[key], key=lambda r: r.id)
        random.Random(f"{seed}:{key}").shuffle(group)
        n_train = round(len(group) * fractions[0])
        n_dev = round(len(group) * fractions[1])
        for i, r in enumerate(group):
            r.split = "train" if i < n_train else "dev" if i < n_train + n_dev else "test"
    return records


def _fmt(x: Fraction) -> str:
    """Exact answer string: integer, or a terminating decimal with at most 2 places."""
    if x.denominator == 1:
        return str(x.numerator)
    s = f"{float(x):.2f}".rstrip("0").rstrip(".")
    if Fraction(s) != x:
        raise ValueError(f"answer {x} is not a simple decimal")
    return s


def _math_problem(rng: random.Random) -> tuple[str, str, str]:
    """One (template name, problem text, exact answer) drawn from the word-problem templates."""
    names = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jia", "Kofi", "Lena",
             "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara"]
    name, other = rng.sample(names, 2)
    t = rng.choice(["shopping", "rate", "ages", "area", "percent", "remainder", "work", "savings",
                    "average", "perimeter", "unit_price", "discount"])
    r = rng.randint
    if t == "shopping":
        a, pa, b, pb = r(2, 9), r(2, 15), r(2, 9), r(3, 25)
        return t, (f"{name} buys {a} notebooks at ${pa} each and {b} packs of pens at ${pb} each. "
                   f"How many dollars does {name} spend in total?"), str(a * pa + b * pb)
    if t == "rate":
        v, h = r(30, 90), r(2, 7)
        return t, f"A train travels at {v} km per hour for {h} hours. How many kilometres does it travel?", str(v * h)
    if t == "ages":
        now, k, y = r(5, 15), r(2, 4), r(3, 12)
        return t, (f"{name} is {now} years old. {other} is {k} times as old as {name}. "
                   f"How old will {other} be in {y} years?"), str(now * k + y)
    if t == "area":
        w, l = r(3, 40), r(3, 40)
        return t, f"A rectangular garden is {w} metres wide and {l} metres long. What is its area in square metres?", str(w * l)
    if t == "percent":
        p, base = rng.choice([10, 20, 25, 50, 15, 30, 40, 5]), r(2, 60) * 20
        return t, (f"A school has {base} students and {p}% of them walk to school. "
                   f"How many students walk to school?"), _fmt(Fraction(p * base, 100))
    if t == "remainder":
        total, size = r(40, 400), r(3, 12)
        return t, (f"{name} packs {total} apples into boxes of {size}, filling as many boxes as possible. "
                   f"How many apples are left over?"), str(total % size)
    if t == "work":
        per, days, people = r(3, 20), r(2, 10), r(2, 6)
        return t, (f"Each worker assembles {per} chairs per day. How many chairs do {people} workers "
                   f"assemble in {days} days?"), str(per * days * people)
    if t == "savings":
        start, weekly, weeks = r(0, 100), r(5, 40), r(3, 20)
        return t, (f"{name} has ${start} and saves ${weekly} every week. How many dollars will {name} "
                   f"have after {weeks} weeks?"), str(start + weekly * weeks)
    if t == "average":
        xs = [r(50, 100) for _ in range(rng.choice([2, 4, 5]))]
        return t, (f"{name}'s test scores are {', '.join(map(str, xs))}. What is the average score?"), \
            _fmt(Fraction(sum(xs), len(xs)))
    if t == "perimeter":
        w, l = r(2, 50), r(2, 50)
        return t, f"A rectangle is {w} cm by {l} cm. What is its perimeter in centimetres?", str(2 * (w + l))
    if t == "unit_price":
        n, price = rng.choice([2, 4, 5, 10]), r(3, 60)
        return t, (f"{n} identical bottles cost ${price} in total. How many dollars does one bottle cost?"), \
            _fmt(Fraction(price, n))
    p, price = rng.choice([10, 20, 25, 50]), r(2, 40) * 4
    return "discount", (f"A jacket costs ${price}. It is on sale for {p}% off. What is the sale price in dollars?"), \
        _fmt(Fraction(price * (100 - p), 100))


def generate_math_problems(n: int = MATH_N, seed: int = MATH_SEED) -> list[Record]:
    """`n` distinct seeded math word problems with exact answers (category "math", label benign)."""
    rng = random.Random(seed)
    out: list[Record] = []
    seen: set[str] = set()
    while len(out) < n:
        template, text, answer = _math_problem(rng)
        if normalize_prompt(text) in seen:
            continue
        seen.add(normalize_prompt(text))
        out.append(Record(id=f"m-{len(out):04d}", prompt=text, label=BENIGN, category="math",
                          source="embedded", reference=answer, meta={"template": template, "seed": seed}))
    return assign_splits(out)


def load_jailbreak_templates(path: str | os.PathLike = JAILBREAK_TEMPLATES_PATH) -> dict[str, str]:
    """Attack name -> template text (with a "{prompt}" placeholder)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    tpls = data.get("templates")
    if not isinstance(tpls, dict) or not tpls:
        raise ValueError(f"{path}: expected a non-empty 'templates' mapping")
    out = {}
    for name, t in tpls.items():
        text = t.get("text") if isinstance(t, dict) else t
        if not isinstance(text, str) or "{prompt}" not in text:
            raise ValueError(f"{path}: template {name!r} needs a 'text' containing '{{prompt}}'")
        out[str(name)] = text
    return out


def make_jailbreaks(records: Iterable[Record], templates: dict[str, str] | None = None) -> list[Record]:
    """Wrap each harmful base record in every attack template.

    Ids are f"{base_id}-jb-{attack}"; label stays "harmful"; category and split are copied;
    meta = {"attack": name, "base_id": base_id}.
    """
    templates = load_jailbreak_templates() if templates is None else templates
    out = []
    for r in records:
        for attack, text in templates.items():
            out.append(Record(id=f"{r.id}-jb-{attack}", prompt=text.replace("{prompt}", r.prompt),
                              label=HARMFUL, category=r.category, source="embedded-jailbreak",
                              split=r.split, meta={"attack": attack, "base_id": r.id}))
    return out


def embedded_path(kind: str) -> Path:
    if kind not in EMBEDDED_KINDS:
        raise ValueError(f"unknown embedded set {kind!r}; choose one of {EMBEDDED_KINDS}")
    return PROMPTS_DIR / f"{kind}.jsonl"


def load_embedded(kind: str, split: str | None = None) -> list[Record]:
    """Records of an embedded set ("harmful", "benign", "math", "jailbreak"), optionally one split."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS} or None")
    path = embedded_path(kind)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing; rebuild with sinternal_lib.datasets.rebuild_generated_sets()")
    recs = read_records(path)
    return [r for r in recs if split is None or r.split == split]


def rebuild_generated_sets() -> dict[str, int]:
    """Regenerate the code-generated files (math.jsonl, jailbreak.jsonl) and re-split the written ones."""
    counts = {}
    for kind in ("harmful", "benign"):
        recs = assign_splits(read_records(embedded_path(kind)))
        write_records(recs, embedded_path(kind))
        counts[kind] = len(recs)
    math = generate_math_problems()
    write_records(math, embedded_path("math"))
    jb = make_jailbreaks(load_embedded("harmful", "test"))
    write_records(jb, embedded_path("jailbreak"))
    counts.update(math=len(math), jailbreak=len(jb))
    return counts

