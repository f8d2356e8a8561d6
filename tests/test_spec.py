"""Tests for the safety specification loader and renderer (no model needed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from sinternal_lib.spec import ALT_SPEC_PATH, DEFAULT_SPEC_PATH, load_spec

EXPECTED = {"violent_crime", "weapons_cbrne", "cybercrime", "fraud_scams", "self_harm", "hate_harassment",
            "child_sexual_content", "privacy", "illegal_drugs", "extremism", "dangerous_advice",
            "deception_misinformation", "sexual_content"}


def test_default_spec_loads_with_all_categories():
    spec = load_spec()
    assert DEFAULT_SPEC_PATH.is_file()
    assert {c.name for c in spec.categories} == EXPECTED
    assert len({c.id for c in spec.categories}) == 13
    assert spec.version and spec.general_rules
    assert spec.sha256 == hashlib.sha256(DEFAULT_SPEC_PATH.read_bytes()).hexdigest()
    for c in spec.categories:
        assert c.must_not and c.may and c.lookalikes and c.description


def test_get_by_id_and_name_and_unknown():
    spec = load_spec()
    assert spec.get("S3").name == "cybercrime"
    assert spec.get("cybercrime").id == "S3"
    with pytest.raises(KeyError, match="unknown safety category"):
        spec.get("S99")


def test_render_full_and_subset():
    spec = load_spec()
    full = spec.render()
    assert "[S3 cybercrime]" in full and "[S13 sexual_content]" in full
    assert "1. " in full and spec.general_rules[0] in full
    part = spec.render(["S3", "privacy"])
    assert "[S3 cybercrime]" in part and "[S8 privacy]" in part and "[S1 violent_crime]" not in part
    assert spec.general_rules[0] in part
    assert "look-alikes" in spec.render(["S1"], include_lookalikes=True)


def test_alt_spec_has_same_ids_and_is_shorter():
    main, alt = load_spec(), load_spec(ALT_SPEC_PATH)
    assert [c.id for c in alt.categories] == [c.id for c in main.categories]
    assert [c.name for c in alt.categories] == [c.name for c in main.categories]
    assert len(alt.render()) < len(main.render()) / 2
    assert alt.sha256 != main.sha256


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "bad_spec.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def _base() -> dict:
    return yaml.safe_load(DEFAULT_SPEC_PATH.read_text())


def test_missing_top_key_names_file(tmp_path):
    d = _base()
    del d["general_rules"]
    p = _write(tmp_path, d)
    with pytest.raises(ValueError, match=r"bad_spec\.yaml.*general_rules"):
        load_spec(p)


def test_duplicate_id(tmp_path):
    d = _base()
    d["categories"][1]["id"] = d["categories"][0]["id"]
    with pytest.raises(ValueError, match=r"bad_spec\.yaml.*duplicate"):
        load_spec(_write(tmp_path, d))


def test_empty_rules(tmp_path):
    d = _base()
    d["categories"][2]["must_not"] = []
    with pytest.raises(ValueError, match=r"bad_spec\.yaml.*S3\.must_not.*empty"):
        load_spec(_write(tmp_path, d))


def test_missing_category_key_and_bad_yaml_and_missing_file(tmp_path):
    d = _base()
    del d["categories"][0]["may"]
    with pytest.raises(ValueError, match=r"bad_spec\.yaml.*may"):
        load_spec(_write(tmp_path, d))
    with pytest.raises(ValueError, match="not valid YAML"):
        load_spec(_write(tmp_path, "categories: [unclosed"))
    with pytest.raises(ValueError, match="not found"):
        load_spec(tmp_path / "nope.yaml")


def test_compact_render_is_short_and_lists_every_category():
    from sinternal_lib.config import load_recipe
    from sinternal_lib.spec import spec_text

    spec = load_spec()
    compact = spec.render(style="compact")
    assert len(compact) < len(spec.render()) / 2
    assert all(c.tag in compact for c in spec.categories)
    with pytest.raises(ValueError, match="render style"):
        spec.render(style="tiny")
    assert "(compact)" in spec_text(load_recipe("cpu-smollm2", {"spec.render": "compact"}))


def test_brief_render_and_spec_text_carry_the_short_verifier_template():
    from sinternal_lib.config import load_recipe
    from sinternal_lib.spec import spec_text
    from sinternal_lib.verification import build_verification_messages

    brief = load_spec().render(style="brief")
    assert brief.count(";") == 12 and "S3 cybercrime" in brief and "\n" not in brief.strip()
    with pytest.raises(ValueError, match="brief"):
        load_spec().render(style="tiny")
    for style, marker in (("brief", "not an assistant"), ("compact", "(compact)"), ("full", "General rules")):
        st = spec_text(load_recipe("cpu-smollm2", {"spec.render": style}))
        system = build_verification_messages(st, "How do I kill a Python process?", "Run kill.")[0]["content"]
        assert marker in system and st.strip() in system
    short = build_verification_messages(spec_text(load_recipe("cpu-smollm2", {"spec.render": "brief"})), "x", "y")
    long = build_verification_messages(spec_text(load_recipe("cpu-smollm2", {"spec.render": "compact"})), "x", "y")
    assert len(short[0]["content"]) < len(long[0]["content"]) / 2
    with pytest.raises(ValueError, match="spec.render"):
        spec_text(load_recipe("cpu-smollm2", {"spec.render": "tiny"}))
