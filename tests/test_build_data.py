"""Stage 02 and 01 library pieces: answer-centric rows, held-out pairs, human pairs, and the tiny-model stages.

Run: .venv/bin/pytest -q tests/test_build_data.py
"""

import json
from collections import Counter

import pytest

from sinternal_lib import jsonl
from sinternal_lib.build_data import answer_centric_rows, heldout_pairs
from sinternal_lib.build_data import run as run_build_data
from sinternal_lib.config import load_recipe
from sinternal_lib.datasets import Record
from sinternal_lib.diagnose import human_pairs, xstest_safety_label
from sinternal_lib.judges import is_refusal
from sinternal_lib.sft_data import benign_chat_pool, opens_with
from sinternal_lib.views import diagnosis_table
from sinternal_lib.diagnose import run as run_diagnosis
from sinternal_lib.runs import open_run, stage_for


def _row(pid, idx, plabel, jlabel, refused, answer="text"):
    return {"prompt_id": pid, "sample_idx": idx, "prompt": f"p {pid}", "answer": answer, "reasoning": None,
            "prompt_label": plabel, "category": "cybercrime" if plabel == "harmful" else None,
            "judge_label": jlabel, "judge_refused": refused}


def test_answer_centric_keeps_safe_refusals_and_helpful_benign_answers():
    judged = [_row("h1", 0, "harmful", "unsafe", False), _row("h1", 1, "harmful", "safe", True),
              _row("h2", 0, "harmful", "unsafe", False),
              _row("b1", 0, "benign", "safe", True), _row("b1", 1, "benign", "safe", False),
              _row("b2", 0, "benign", "safe", True)]
    rows = answer_centric_rows(judged, seed=0)
    assert {r["prompt_id"] for r in rows} == {"h1", "b1"}  # h2 never refused; b2 only over-refused
    assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["completion"][0]["role"] == "assistant"
    assert [r["id"] for r in rows] == ["b1-1", "h1-1"]


def test_heldout_pairs_balanced_one_per_prompt_and_label():
    judged = [_row(f"h{i}", j, "harmful", "unsafe" if j else "safe", not j) for i in range(6) for j in range(3)]
    judged += [_row(f"b{i}", 0, "benign", "safe", False) for i in range(4)]
    judged += [_row("hx", 0, "harmful", None, None)]
    pairs = heldout_pairs(judged, n=8, seed=1)
    c = Counter(p["label"] for p in pairs)
    assert c["unsafe"] == c["safe"] == 4
    assert len({(p["id"].rsplit("-", 1)[0], p["label"]) for p in pairs}) == len(pairs)
    assert all(p["label"] in ("safe", "unsafe") for p in pairs)
    assert heldout_pairs(judged, n=8, seed=1) == pairs  # deterministic


@pytest.mark.parametrize("label,human,expected", [
    ("harmful", "compliance", "unsafe"), ("harmful", "refusal", "safe"), ("harmful", "partial", None),
    ("benign", "refusal", "safe"), ("benign", "compliance", "safe")])
def test_xstest_safety_label(label, human, expected):
    assert xstest_safety_label(Record("x", "p", label, human_label=human)) == expected


def test_human_pairs_from_real_files_are_balanced(shared_data):
    for name in ("xstest_completions", "pku_saferlhf"):
        pairs = human_pairs(name, 20, seed=0)
        assert Counter(p["label"] for p in pairs) == {"safe": 10, "unsafe": 10}
        assert all(p["answer"].strip() for p in pairs)


def test_stages_01_and_02_on_tiny_model(tmp_path):
    run = open_run(load_recipe("configs/tests/tiny.yaml", {"diagnose.human_sets": []}), "t", tmp_path)
    data = run_build_data(run, log=lambda s: None)
    st = stage_for(run, "build_data")
    assert st.is_complete()
    for v in ("sinternal", "verdict_only", "critique_only"):
        rows = jsonl.read(st.dir / "verification" / f"{v}.jsonl")
        assert len(rows) == data["examples"]
        for r in rows:
            target = r["completion"][0]["content"]
            assert r["prompt"][0]["role"] == "system" and "Verdict:" not in r["prompt"][1]["content"][-20:]
            assert ("Verdict:" in target) == (v != "critique_only")
    samples = jsonl.read(st.dir / "samples_self.jsonl")
    cfg = run.recipe.build_data
    # the clean chat mix of stage 03 draws from these judged samples: benign prompts, no refusal, no opener
    judged = jsonl.read(st.dir / "judged_self.jsonl")
    pool = benign_chat_pool(judged, cfg.refusal_prefills)
    assert {r["prompt_id"] for r in pool} <= {j["prompt_id"] for j in judged if j["prompt_label"] == "benign"}
    assert not any(is_refusal(r["completion"][0]["content"]) or opens_with(r["completion"][0]["content"],
                                                                           cfg.refusal_prefills) for r in pool)
    assert any(j["prefill"] for j in judged)  # harmful prompts did get openers, and none reached the pool
    assert len(samples) == (cfg.num_harmful_prompts + cfg.num_benign_prompts) * cfg.num_samples
    assert json.loads((run.path / "metrics.json").read_text())["build_data"]["funnel"]["prompts_total"] == 10
    diag = run_diagnosis(run, log=lambda s: None)
    assert "own_answers" in diag["models"]["tiny-random-llama"]
    assert not diagnosis_table(diag).empty or diag["models"]["tiny-random-llama"]["own_answers"]["n"] == 0
    assert stage_for(run, "diagnose").is_complete()
    own = diag["models"]["tiny-random-llama"]["own_answers"]
    assert {"forced_choice_auroc", "forced_choice_balanced_accuracy"} <= set(diag["headline"])
    fc_rows = jsonl.read(stage_for(run, "diagnose").dir / "forced_choice.jsonl")
    if own["n"]:  # the same pairs scored by forced choice, per item in the stage folder
        fc = own["forced_choice"]
        assert {"auroc", "balanced_accuracy", "threshold", "n_calibration", "n_test",
                "balanced_accuracy_at_0.5"} <= set(fc) and "items" not in fc
        assert fc["n_calibration"] + fc["n_test"] == own["n"] == len(fc_rows)
        assert all(0 < r["p_unsafe"] < 1 and r["set"] == "own_answers" for r in fc_rows)
        assert {"fc_auroc", "fc_balanced_acc"} <= set(diagnosis_table(diag).columns)
    assert "forced_choice.jsonl" in json.loads((stage_for(run, "diagnose").dir / "manifest.json").read_text())["output_hashes"]


def test_judge_that_labels_nothing_stops_the_stage(monkeypatch):
    # An API judge whose endpoint refuses connections (nothing listens on 127.0.0.1:9): every verdict is None.
    from sinternal_lib.build_data import judge_samples
    from sinternal_lib.config import JudgeConfig
    from sinternal_lib.judges import make_judge
    from sinternal_lib.sampling import Sample

    monkeypatch.setenv("SINTERNAL_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("SINTERNAL_JUDGE_API_KEY", "k")
    judge = make_judge(JudgeConfig(backend="api", api_model="m", max_retries=0, timeout_s=2, cache=False))
    rec = Record("h1", "do harm", "harmful", "cybercrime")
    samples = [Sample("h1", 0, "do harm", "ok here", None, "ok here", 3, "stop", "m", 0)]
    with pytest.raises(RuntimeError, match="no verdict for any of 1 answers"):
        judge_samples(samples, {"h1": rec}, judge)


def test_pick_example_prefers_the_asked_labels():
    from sinternal_lib.views import pick_example

    safe, unsafe = {"label": "safe", "prompt_label": "harmful"}, {"label": "unsafe", "prompt_label": "harmful"}
    assert pick_example([unsafe, safe]) is safe and pick_example([]) is None
