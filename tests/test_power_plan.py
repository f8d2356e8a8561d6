"""The power plan (sinternal_lib/power_plan.py): the study recipe loads and gives every claim an n and a
minimum detectable effect, enough n for the stated effect where its arithmetic says so, more n than the
quick recipe; the runner prints the plan and writes power_plan.json before any stage; the report shows it.

Run: HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_power_plan.py
"""

from __future__ import annotations

import json
from fnmatch import fnmatch


from sinternal_lib.claims import CHANCE, CLAIMS
from sinternal_lib.cli import run_notebooks
from sinternal_lib.config import load_recipe
from sinternal_lib.power_plan import (HUMAN_EVAL_SIDE, KNOWN_SIZES, PLAN_FILE, format_power_plan, power_plan,
                                      write_power_plan)
from sinternal_lib.report import render_report
from sinternal_lib.runs import open_run

STUDY, QUICK, TINY = "cpu-smollm2-study", "cpu-smollm2", "configs/tests/tiny.yaml"
RATE_CLAIMS = [c.id for c in CLAIMS if c.test == "mcnemar"]


def everything(name: str) -> bool:  # a machine with the shared data folder
    return True


def no_shared_data(name: str) -> bool:  # a user's clone: embedded sets and the two wheels only
    return name.startswith("embedded_") or name in ("strongreject", "harmbench")


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


def test_study_recipe_loads_validates_and_covers_every_arm():
    study, quick = load_recipe(STUDY), load_recipe(QUICK)
    assert study.run.name == "cpu-smollm2-study"
    assert set(study.sft.variants) == {"sinternal", "verdict_only", "critique_only", "answer_centric",
                                       "sinternal_refusal_mix", "other_exp"}
    assert study.grpo.inits == ["base", "answer_centric", "sinternal"] and 20 <= study.grpo.max_steps <= 30
    assert study.grpo.num_train_prompts >= study.grpo.max_steps * study.grpo.per_device_train_batch_size \
        // study.grpo.num_generations  # each prompt seen at most once
    arms = {a for c in CLAIMS for a in c.arms if a != CHANCE}
    assert all(any(fnmatch(a, p) for p in study.evaluate.checkpoints) for a in arms)
    assert study.model == quick.model  # same model; the quick recipe trains fewer steps (its 10-minute budget)
    assert study.sft.max_steps == 80 and quick.sft.max_steps < study.sft.max_steps
    assert quick.run.stages == ["diagnose", "build_data", "sft", "grpo", "evaluate"]
    # the claims run in `make study`; stage 06 (beyond the paper) apart, in `make study-beyond`
    assert study.run.stages == quick.run.stages and "self_verification" not in study.run.stages
    assert "sft/sinternal" in study.self_verification.checkpoints


def test_every_claim_gets_n_and_mde():
    rows = power_plan(load_recipe(STUDY), everything)
    assert [r["id"] for r in rows] == [c.id for c in CLAIMS]
    for r in rows:
        assert r["n"] > 0 and r["mde"] is not None and r["mde"] > 0, r
        assert r["source"] and not r["why"]


def test_study_mde_meets_the_stated_effect_where_the_data_allow():
    rows = by_id(power_plan(load_recipe(STUDY), everything))
    for cid in RATE_CLAIMS:  # with the shared data folder: every paired-rate claim reaches 0.15
        assert rows[cid]["enough"] and rows[cid]["mde"] <= rows[cid]["effect"] == 0.15, rows[cid]
    assert rows["c2"]["n"] >= 103 and rows["j"]["n"] >= 103  # 2 jailbreak benchmarks x 52
    assert rows["b2"]["enough"] and rows["b2"]["mde"] <= 0.10  # 2 human sets x 64 pairs per class
    assert rows["b2"]["n_unsafe"] >= 118 and rows["b2"]["n_safe"] >= 118
    # own held-out pairs are capped by the 65-prompt embedded test split: 0.10 is out of reach, and the plan says so
    assert not rows["b1"]["enough"] and rows["b1"]["mde"] > 0.10
    rows = by_id(power_plan(load_recipe(STUDY), no_shared_data))
    for cid in ("c1", "f1", "f2", "h1", "h2", "i"):  # 3-5 benchmarks x 52 are here without the data folder
        assert rows[cid]["enough"], rows[cid]
    assert rows["g"]["n"] == 0 and "shared data" in rows["g"]["why"]  # other_exp is skipped without it
    assert rows["b2"]["n"] == 0 and not rows["c2"]["enough"]


def test_quick_recipe_gives_less_n_than_the_study():
    quick = by_id(power_plan(load_recipe(QUICK), everything))
    study = by_id(power_plan(load_recipe(STUDY), everything))
    for cid, q in quick.items():
        assert q["n"] <= study[cid]["n"], cid
        if cid != "a":  # stage 01 is the same in both recipes
            assert q["n"] < study[cid]["n"], cid
    assert sum(r["enough"] for r in study.values()) > sum(r["enough"] for r in quick.values())
    assert quick["f2"]["n"] == 0 and "sft.variants" in quick["f2"]["why"]


def test_format_shows_every_claim_and_the_assumptions():
    rows = power_plan(load_recipe(STUDY), everything)
    text = format_power_plan(rows)
    for r in rows:
        assert any(line.split()[:1] == [r["id"]] for line in text.splitlines()), r["id"]
    assert "discordant share 0.3" in text and f"{sum(r['enough'] for r in rows)} of {len(rows)}" in text
    assert format_power_plan(json.loads(json.dumps(rows))) == text  # renders from power_plan.json alike


def test_known_sizes_match_the_loaders(shared_data):
    from sinternal_lib.loaders import load_benchmark
    from sinternal_lib.sft_data import human_split, labelled_pairs  # here: sft_data imports torch

    for name, n in KNOWN_SIZES.items():
        assert len(load_benchmark(name)) == n, name
    for name, counts in HUMAN_EVAL_SIDE.items():
        pairs = [p for p in labelled_pairs(name) if human_split(p["prompt"]) == "eval"]
        assert {lab: sum(p["label"] == lab for p in pairs) for lab in ("unsafe", "safe")} == counts, name


def test_runner_prints_and_writes_the_plan_before_the_stages(tmp_path, stand_in_notebook):
    # A one-cell notebook stands in for stage 01, so the real runner starts a run cheaply.
    stand_in_notebook("print('stage stand-in')")
    lines: list[str] = []
    code = run_notebooks(TINY, "plan", only=["01"], root=str(tmp_path / "runs"), log=lines.append)
    assert code == 0
    text = "\n".join(lines)
    assert "power plan" in text and text.index("power plan") < text.index("01_diagnose")
    saved = json.loads((tmp_path / "runs" / "plan" / PLAN_FILE).read_text())
    assert [r["id"] for r in saved["rows"]] == [c.id for c in CLAIMS]
    assert saved["rows"] == json.loads(json.dumps(power_plan(load_recipe(TINY))))
    assert format_power_plan(saved["rows"]) in text


def test_report_shows_the_plan_when_present(tmp_path):
    run = open_run(load_recipe(TINY), "rep", tmp_path)
    assert "Power plan" not in render_report(run).read_text()
    rows = write_power_plan(run)
    md = render_report(run).read_text()
    assert "**Power plan**" in md
    assert any(line.startswith("    ") and line.split()[:1] == ["c1"] for line in md.splitlines())
    assert f"{sum(r['enough'] for r in rows)} of {len(rows)} claims" in md
