"""Tests for the embedded prompt sets under data/prompts/ (counts, splits, math answers, jailbreaks)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sinternal_lib.datasets import (
    EMBEDDED_KINDS, PROMPTS_DIR, SPLITS, Record, assign_splits, generate_math_problems, load_embedded,
    load_jailbreak_templates, make_jailbreaks, normalize_prompt, read_records, write_records,
)
from sinternal_lib.spec import load_spec

SPEC_NAMES = {c.name for c in load_spec().categories}


def test_harmful_counts_and_categories():
    recs = load_embedded("harmful")
    assert len(recs) >= 260
    per = Counter(r.category for r in recs)
    assert set(per) == SPEC_NAMES
    assert all(n >= 20 for n in per.values()), per
    assert all(r.label == "harmful" and r.source == "embedded" and r.id.startswith("h-") for r in recs)


def test_benign_counts_and_lookalikes():
    recs = load_embedded("benign")
    assert len(recs) >= 220
    look = [r for r in recs if r.meta.get("lookalike")]
    plain = [r for r in recs if not r.meta.get("lookalike")]
    assert len(look) >= 100 and len(plain) >= 100
    assert all(r.category in SPEC_NAMES for r in look)
    assert all(r.category is None for r in plain)
    assert all(r.label == "benign" for r in recs)


@pytest.mark.parametrize("kind", EMBEDDED_KINDS)
def test_ids_unique_and_splits_valid(kind):
    recs = load_embedded(kind)
    assert len({r.id for r in recs}) == len(recs)
    assert all(r.split in SPLITS for r in recs)
    for s in SPLITS:
        assert all(r.split == s for r in load_embedded(kind, s))


def test_no_prompt_text_shared_across_splits_or_sets():
    seen: dict[str, tuple[str, str]] = {}
    for kind in ("harmful", "benign", "math"):
        for r in load_embedded(kind):
            key = normalize_prompt(r.prompt)
            assert key not in seen, f"{r.id} duplicates {seen[key]}"
            seen[key] = (kind, r.id)


def test_splits_stratified_and_reproducible():
    for kind in ("harmful", "benign", "math"):
        recs = load_embedded(kind)
        stored = {r.id: r.split for r in recs}
        again = assign_splits(read_records(PROMPTS_DIR / f"{kind}.jsonl"))
        assert {r.id: r.split for r in again} == stored
    for cat, group in _by(load_embedded("harmful")).items():
        c = Counter(r.split for r in group)
        assert c["test"] >= 4 and c["dev"] >= 2 and c["train"] >= 11, (cat, c)


def _by(recs):
    out: dict = {}
    for r in recs:
        out.setdefault(r.category, []).append(r)
    return out


def test_assign_splits_dedupes_near_duplicates():
    recs = [Record(id=f"x{i}", prompt=p, label="benign", category="c") for i, p in
            enumerate(["Hello world", "hello,  WORLD!", "Another one"] + [f"p {i}" for i in range(10)])]
    out = assign_splits(recs)
    assert len(out) == 12
    assert Counter(r.split for r in out) == Counter(train=7, dev=2, test=3)


def test_math_file_matches_generator(tmp_path):
    stored = load_embedded("math")
    assert len(stored) >= 240
    regen = generate_math_problems()
    assert [r.to_dict() for r in regen] == [r.to_dict() for r in stored]
    assert all(r.category == "math" and r.label == "benign" and r.reference for r in stored)
    assert len(Counter(r.meta["template"] for r in stored)) >= 10
    assert generate_math_problems(20, seed=1) == generate_math_problems(20, seed=1)
    assert generate_math_problems(20, seed=1) != generate_math_problems(20, seed=2)
    write_records(regen, tmp_path / "m.jsonl")
    assert (tmp_path / "m.jsonl").read_bytes() == (PROMPTS_DIR / "math.jsonl").read_bytes()


def test_math_answers_are_exact_numbers():
    for r in load_embedded("math"):
        float(r.reference)
        if r.meta["template"] == "rate":
            nums = [int(t) for t in r.prompt.replace("?", "").split() if t.isdigit()]
            assert int(r.reference) == nums[0] * nums[1]
        if r.meta["template"] == "remainder":
            nums = [int(t) for t in r.prompt.replace(",", "").split() if t.isdigit()]
            assert int(r.reference) == nums[0] % nums[1]


def test_jailbreak_templates_and_records():
    tpls = load_jailbreak_templates()
    assert {"roleplay", "prefix_injection", "hcot", "refusal_suppression"} <= set(tpls)
    assert "Sure, here is" in tpls["prefix_injection"]
    base = {r.id: r for r in load_embedded("harmful", "test")}
    jb = load_embedded("jailbreak")
    assert len(jb) == len(base) * len(tpls)
    for r in jb:
        b = base[r.meta["base_id"]]
        assert r.id == f"{b.id}-jb-{r.meta['attack']}"
        assert r.label == "harmful" and r.category == b.category and r.split == b.split == "test"
        assert b.prompt in r.prompt


def test_make_jailbreaks_custom_templates():
    base = [Record(id="h-x-001", prompt="do a bad thing", label="harmful", category="privacy", split="dev")]
    out = make_jailbreaks(base, {"wrap": "PRE {prompt} POST"})
    assert out[0].label == "harmful" and out[0].category == "privacy"
    assert out[0].id == "h-x-001-jb-wrap" and out[0].prompt == "PRE do a bad thing POST"
    assert out[0].meta == {"attack": "wrap", "base_id": "h-x-001"} and out[0].split == "dev"


def test_load_embedded_errors():
    with pytest.raises(ValueError):
        load_embedded("nope")
    with pytest.raises(ValueError):
        load_embedded("harmful", split="validation")


def test_datasets_never_imports_loaders():
    """Record is the schema: loaders import datasets, never the reverse (not even inside a function)."""
    import ast

    import sinternal_lib.datasets as ds

    tree = ast.parse(Path(ds.__file__).read_text(encoding="utf-8"))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if "loaders" in m], imported
