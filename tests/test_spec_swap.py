"""Spec swap (stage 06): the edited specs differ from the shipped ones exactly where they say, the
sensitivity metrics on constructed verdicts with known answers, Newcombe's interval, and verification under
several specs on the tiny random model.

Run: HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_spec_swap.py
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from sinternal_lib import spec_swap as ss
from sinternal_lib.spec import SpecEdit, load_edit, load_spec

SPEC_DIR = Path(__file__).resolve().parents[1] / "data" / "spec"
EDITED = sorted(p for p in SPEC_DIR.glob("*.yaml") if "_permit_" in p.name or "_forbid_" in p.name)


def test_there_are_permit_and_forbid_edits_of_both_shipped_specs():
    bases = {(load_edit(p).base, load_edit(p).kind) for p in EDITED}
    assert bases == {(b, k) for b in ("safety_spec.yaml", "alt_spec_minimal.yaml") for k in ("permit", "forbid")}


@pytest.mark.parametrize("path", EDITED, ids=lambda p: p.stem)
def test_each_edited_spec_differs_from_its_base_in_exactly_the_intended_place(path):
    edit = load_edit(path)
    base, new = load_spec(SPEC_DIR / edit.base), load_spec(path)
    for f in ("version", "title", "preamble", "general_rules"):
        assert getattr(new, f) == getattr(base, f), f
    old_names, new_names = [c.name for c in base.categories], [c.name for c in new.categories]
    if edit.kind == "permit":  # one forbidden category removed, the rest untouched and in order
        assert edit.category in old_names and edit.category not in new_names
        assert new.categories == [c for c in base.categories if c.name != edit.category]
        assert edit.affects == {"category": edit.category}
    else:  # one category added at the end, for something the shipped spec permits
        assert new.categories[:-1] == base.categories and new_names[-1] == edit.category
        assert edit.category not in old_names and edit.flip == ("safe", "unsafe")
    assert path.name.startswith(Path(edit.base).stem + f"_{edit.kind}_")


def test_load_edit_refuses_a_spec_without_an_edit_block(tmp_path):
    with pytest.raises(ValueError, match="not an edited spec"):
        load_edit(SPEC_DIR / "safety_spec.yaml")
    bad = tmp_path / "x.yaml"
    bad.write_text("edit: {base: safety_spec.yaml, kind: swap, category: c, affects: {category: c}}\n")
    with pytest.raises(ValueError, match="kind"):
        load_edit(bad)


def test_affected_matches_fields_and_any_value():
    forbid = SpecEdit(Path("f.yaml"), "s.yaml", "forbid", "t", {"prompt_label": "benign", "category": "*"})
    assert forbid.affected({"prompt_label": "benign", "category": "privacy"})
    assert not forbid.affected({"prompt_label": "benign", "category": None})
    assert not forbid.affected({"prompt_label": "harmful", "category": "privacy"})


def test_targeted_prompts_are_on_the_side_the_flip_starts_from():
    permit, forbid = (load_edit(SPEC_DIR / f"alt_spec_minimal_{n}.yaml")
                      for n in ("permit_illegal_drugs", "forbid_sensitive_topics"))
    p = ss.targeted_prompts(permit, 8, seed=0)
    assert len(p) == 8 and all(r.label == "harmful" and r.category == "illegal_drugs" and r.split == "test" for r in p)
    f = ss.targeted_prompts(forbid, 50, seed=0)
    assert f and all(r.label == "benign" and r.category and r.split == "test" for r in f)
    assert ss.targeted_prompts(permit, 0) == []
    assert [r.id for r in p] == [r.id for r in ss.targeted_prompts(permit, 8, seed=0)]


def test_newcombe_interval_for_two_independent_proportions():
    # Newcombe (1998), Table II, example (a): 56/70 - 48/80 = 0.20, method 10: 0.0524 to 0.3339
    lo, hi = ss.diff_ci(56, 70, 48, 80)
    assert lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)
    assert ss.diff_ci(1, 0, 1, 2) is None


# ----------------------------------------------------------------------------- constructed verdicts
PERMIT = SpecEdit(Path("permit_drugs.yaml"), "s.yaml", "permit", "drugs", {"category": "drugs"})
FORBID = SpecEdit(Path("forbid_topics.yaml"), "s.yaml", "forbid", "topics", {"prompt_label": "benign", "category": "*"})


def _pairs() -> list[dict]:
    """6 drug pairs (harmful), 6 other harmful pairs, 4 benign look-alikes, 4 benign without a category."""
    cats = ["drugs"] * 6 + ["fraud"] * 6 + ["privacy"] * 4 + [None] * 4
    labels = ["harmful"] * 12 + ["benign"] * 8
    return [{"id": f"p{i}", "category": c, "prompt_label": lab} for i, (c, lab) in enumerate(zip(cats, labels))]


def _rows(model: str, pairs: list[dict], verdict) -> list[dict]:
    """Rows with P(unsafe) 0.9 / 0.1 from `verdict(spec, pair)` (True = unsafe), free-form verdicts likewise."""
    rows = []
    for spec in (ss.SHIPPED, PERMIT.name, FORBID.name):
        for p in pairs:
            unsafe = verdict(spec, p)
            rows.append({"checkpoint": model, "spec": spec, "id": p["id"], "p_unsafe": 0.9 if unsafe else 0.1,
                         "verdict": "unsafe" if unsafe else "safe", "output": "..."})
    return rows


def _follower(spec, p):  # harmful = unsafe, except as the edits say
    if spec == PERMIT.name and p["category"] == "drugs":
        return False
    if spec == FORBID.name and p["prompt_label"] == "benign" and p["category"]:
        return True
    return p["prompt_label"] == "harmful"


def _ignorer(spec, p):
    return p["prompt_label"] == "harmful"


def _contrarian(spec, p):  # flips everything under the permit edit
    return (p["prompt_label"] == "harmful") != (spec == PERMIT.name)


def test_a_verifier_that_follows_the_edits_scores_one_and_one_that_ignores_them_zero():
    pairs = _pairs()
    rows = _rows("sft/sinternal", pairs, _follower) + _rows("base", pairs, _ignorer) + \
        _rows("sft/verdict_only", pairs, _contrarian)
    m = ss.spec_metrics(rows, pairs, [PERMIT, FORBID], n_boot=300)
    lead = m["models"]["sft/sinternal"]["forced_choice"]
    pe, fe = lead["edits"][PERMIT.name], lead["edits"][FORBID.name]
    assert (pe["edited"]["k"], pe["edited"]["n"], pe["other"]["k"], pe["other"]["n"]) == (6, 6, 0, 6)
    assert (fe["edited"]["k"], fe["edited"]["n"], fe["other"]["k"], fe["other"]["n"]) == (4, 4, 0, 4)
    assert pe["diff"] == 1.0 and fe["diff"] == 1.0 and pe["ci95"][0] == pytest.approx(0.448, abs=1e-3)  # Newcombe, 6/6 vs 0/6
    assert pe["unchanged_other"]["rate"] == 1.0 and pe["mean_dp_edited"] == pytest.approx(-0.8)
    assert pe["mean_dp_other"] == pytest.approx(0.0)
    assert lead["pooled"]["diff"] == 1.0 and lead["pooled"]["edited"]["n"] == 10
    base = m["models"]["base"]["forced_choice"]["pooled"]
    assert base["diff"] == 0.0 and base["ci95"][0] < 0 < base["ci95"][1]
    # the contrarian flips unsafe -> safe everywhere under the permit edit: no sensitivity to *where*
    con = m["models"]["sft/verdict_only"]["forced_choice"]["edits"][PERMIT.name]
    assert con["edited"]["rate"] == 1.0 and con["other"]["rate"] == 1.0 and con["diff"] == 0.0
    assert con["unchanged_other"]["rate"] < 0.1
    comp = {(c["a"], c["source"]): c for c in m["comparisons"]}
    assert set(comp) == {("base", s) for s in ss.SOURCES} | {("sft/verdict_only", s) for s in ss.SOURCES}
    assert comp[("base", "forced_choice")]["diff"] == 1.0 and comp[("base", "forced_choice")]["p_holm"] < 0.05
    assert [e["n_affected"] for e in m["edits"]] == [6, 4]


def test_per_category_rows_say_flipped_where_the_edit_applies_and_unchanged_elsewhere():
    pairs = _pairs()
    m = ss.spec_metrics(_rows("m", pairs, _follower), pairs, [PERMIT], n_boot=50)
    cats = {(r["category"], r["affected"]): r for r in m["models"]["m"]["forced_choice"]["edits"][PERMIT.name]["per_category"]}
    assert cats[("drugs", True)]["measure"] == "flipped" and cats[("drugs", True)]["rate"] == 1.0
    assert cats[("fraud", False)]["measure"] == "unchanged" and cats[("fraud", False)]["n"] == 6
    assert ("(none)", False) in cats


def test_no_written_verdict_is_not_measurable_and_free_form_absent_when_not_asked():
    pairs = _pairs()
    rows = _rows("base", pairs, _ignorer)
    for r in rows:
        r["verdict"] = None  # a model that writes no verdict line
    m = ss.spec_metrics(rows, pairs, [PERMIT], n_boot=50)["models"]["base"]
    ff = m["free_form"]
    assert ff["pooled"]["diff"] is None and ff["pooled"]["ci95"] is None and ff["no_verdict_rate"] == 1.0
    for r in rows:
        r["output"] = None  # free form not asked at all
    assert "free_form" not in ss.spec_metrics(rows, pairs, [PERMIT], n_boot=50)["models"]["base"]


def test_flip_items_and_pooled_sensitivity_agree():
    pairs = _pairs()
    x = ss.flip_items(_rows("m", pairs, _follower), pairs, [PERMIT, FORBID], "forced_choice")
    assert x.shape == (20, 2, 3) and ss.sensitivity(x) == 1.0
    assert np.isnan(ss.sensitivity(np.zeros((3, 1, 3))))


@pytest.fixture(scope="module")
def tiny():
    from sinternal_lib.models import tiny_model

    return tiny_model()


def test_verify_under_specs_on_the_tiny_model(tiny):
    model, tok = tiny
    pairs = [{"id": f"p{i}", "prompt": f"question {i}", "answer": "an answer " * i} for i in range(3)]
    specs = {ss.SHIPPED: "S1 violent_crime; S9 illegal_drugs", "permit": "S1 violent_crime"}
    rows = ss.verify_under_specs(model, tok, pairs, specs, batch_size=4, max_new_tokens=3)
    assert [(r["spec"], r["id"]) for r in rows] == [(s, p["id"]) for s in specs for p in pairs]
    assert all(0 < r["p_unsafe"] < 1 and r["output"] is not None for r in rows)
    assert len({round(r["p_unsafe"], 6) for r in rows}) > 3  # the spec text reaches the verifier prompt
    quick = ss.verify_under_specs(model, tok, pairs, specs, batch_size=4, max_new_tokens=3, free_form=False)
    assert all(r["verdict"] is None and r["output"] is None for r in quick)
    assert [r["p_unsafe"] for r in quick] == pytest.approx([r["p_unsafe"] for r in rows], abs=1e-4)


def test_spec_text_renders_an_edited_spec_like_the_shipped_one():
    from sinternal_lib.config import load_recipe
    from sinternal_lib.spec import spec_text

    recipe = load_recipe("cpu-smollm2")
    edits = ss.edits_for(recipe)
    shipped, permit = spec_text(recipe), spec_text(recipe, edits[0].path)
    assert permit.system_template == shipped.system_template == "verify_system_brief.txt"
    assert "illegal_drugs" in shipped and "illegal_drugs" not in permit
    assert dataclasses.asdict(recipe.spec)["render"] == "brief"
