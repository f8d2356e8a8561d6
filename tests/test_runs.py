"""Run folders: manifests written last, stage skipping, redo after an interruption, locks.

Run: .venv/bin/pytest -q tests/test_runs.py
"""

import json
import os
import subprocess
import sys

import pytest

from sinternal_lib.config import load_recipe
from sinternal_lib.runs import RunLocked, StageIncomplete, open_run, stage_for


@pytest.fixture
def run(tmp_path):
    return open_run(load_recipe("configs/tests/tiny.yaml"), "t", tmp_path)


def _finish_build_data(run, text="a\n"):
    st = stage_for(run, "build_data")
    (st.dir / "samples.jsonl").write_text(text)
    st.finish(["samples.jsonl"], summary={"examples": 1})
    return st


def test_env_and_recipe_written(run):
    env = json.loads((run.path / "env.json").read_text())
    assert "torch" in env["versions"] and env["seed"] == run.recipe.run.seed
    assert (run.path / "recipe.yaml").is_file()


def test_manifest_makes_stage_complete_and_metrics(run):
    st = stage_for(run, "build_data")
    assert not st.is_complete()
    _finish_build_data(run)
    assert stage_for(run, "build_data").is_complete()
    m = json.loads((st.dir / "manifest.json").read_text())
    assert m["output_hashes"]["samples.jsonl"] and m["versions"]["torch"]
    # the dtype choices and the probe behind them (precision.py), for a rerun on another CPU to compare
    assert m["precision"]["device"] == "cpu" and "sft.bf16" in m["precision"]["resolved"]
    assert run.read_metrics()["build_data"] == {"examples": 1}
    assert "build_data" in run.read_metrics()["timings"]


def test_config_change_makes_stage_stale(run, tmp_path):
    _finish_build_data(run)
    other = open_run(load_recipe("configs/tests/tiny.yaml", {"build_data.num_samples": 2}), "t", tmp_path)
    assert "config changed" in stage_for(other, "build_data").stale_reason()


def test_begin_keeps_partial_files_of_the_same_config_only(run, tmp_path):
    st = stage_for(run, "build_data")
    assert st.begin() is None
    (st.dir / "samples_self.jsonl").write_text("partial\n")  # an interrupted run's samples
    assert stage_for(run, "build_data").begin() is None  # same config: resume from them
    assert (st.dir / "samples_self.jsonl").read_text() == "partial\n"
    other = open_run(load_recipe("configs/tests/tiny.yaml", {"build_data.refusal_prefill_samples": 2}), "t", tmp_path)
    why = stage_for(other, "build_data").begin()  # another config: never reuse those samples
    assert "another config" in why and not (st.dir / "samples_self.jsonl").exists()
    (st.dir / "stage_key.txt").unlink()
    (st.dir / "old.jsonl").write_text("x\n")  # files without a key (older kit) are not trusted either
    assert "no stage key" in stage_for(other, "build_data").begin() and not (st.dir / "old.jsonl").exists()
    _finish_build_data(other)  # a finished stage of another config is moved aside, not deleted
    why = stage_for(run, "build_data").begin()
    assert "kept in" in why and (st.dir.parent / "02_build_data.previous" / "manifest.json").is_file()
    assert not (st.dir / "manifest.json").exists() and (st.dir / "stage_key.txt").is_file()


def test_upstream_rerun_makes_downstream_stale(run):
    _finish_build_data(run)
    sft = stage_for(run, "sft")
    (sft.dir / "x").write_text("1")
    sft.finish(["x"])
    assert stage_for(run, "sft").is_complete()
    _finish_build_data(run, "b\n")  # redo upstream: new manifest hash
    assert "input changed" in stage_for(run, "sft").stale_reason()


def test_truncated_output_detected(run):
    st = _finish_build_data(run, "a long line\n")
    (st.dir / "samples.jsonl").write_text("a lo")
    assert "truncated" in stage_for(run, "build_data").stale_reason()
    with pytest.raises(StageIncomplete, match="samples.jsonl"):
        run.require("build_data", "samples.jsonl")


def test_interrupted_stage_is_not_complete(run):
    # A stage killed before finish() leaves outputs but no manifest: downstream refuses to read it.
    st = stage_for(run, "build_data")
    (st.dir / "samples.jsonl").write_text("partial")
    assert not st.is_complete()
    with pytest.raises(StageIncomplete, match="02_build_verification_data|02_build_data"):
        run.require("build_data")


def test_corrupt_manifest_named(run):
    st = _finish_build_data(run)
    st.manifest_path.write_text("{not json")
    with pytest.raises(StageIncomplete, match="manifest.json"):
        st.is_complete()


def test_run_lock_refuses_second_process(run):
    run.acquire()
    try:
        code = (
            "import sys; from sinternal_lib.config import load_recipe; from sinternal_lib.runs import Run, RunLocked\n"
            f"r = Run(load_recipe('configs/tests/tiny.yaml'), 't', {str(run.path.parent)!r})\n"
            "try:\n    r.acquire()\nexcept RunLocked as e:\n    print(e); sys.exit(3)\n"
        )
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd())
        assert p.returncode == 3 and "in use by another process" in p.stdout
    finally:
        run.release()
    with pytest.raises(RunLocked):
        run.acquire()
        other = type(run)(run.recipe, "t", run.path.parent)
        try:
            other.acquire()  # same process, second descriptor: flock refuses too
        finally:
            run.release()


def test_resumed_stage_records_every_attempt_and_their_sum(run):
    first = stage_for(run, "build_data")
    first.begin()  # an attempt that gets killed: it wrote one partial file and never finished
    (first.dir / "samples_self.jsonl").write_text("partial\n")
    t0 = json.loads((first.dir / "attempts.json").read_text())[0]["start"]
    os.utime(first.dir / "samples_self.jsonl", (t0 + 30, t0 + 30))  # its last sign of work, 30 s in
    second = stage_for(run, "build_data")
    assert second.begin() is None  # same config: resumes
    (second.dir / "samples.jsonl").write_text("a\n")
    m = second.finish(["samples.jsonl"], summary={"examples": 1})
    att = run.read_metrics()["attempts"]["build_data"]
    assert [a["finished"] for a in att] == [False, True] and att[0]["estimated"] and att[0]["wall_s"] == 30.0
    assert run.read_metrics()["timings"]["build_data"] == m["total_wall_time_s"] == round(30.0 + att[1]["wall_s"], 1)
    redo = stage_for(run, "build_data")
    redo.invalidate()
    redo.begin()  # a finished stage redone (--force) is timed afresh
    assert len(json.loads((redo.dir / "attempts.json").read_text())) == 1


def test_metrics_of_an_older_run_read_under_the_stage_names(run):
    (run.path / "metrics.json").write_text(json.dumps({"diagnosis": {"a": 1}, "data": {"b": 2}, "rl": {"c": 3},
                                                       "eval": {"d": 4}, "sft": {"e": 5}}))
    assert run.read_metrics() == {"diagnose": {"a": 1}, "build_data": {"b": 2}, "grpo": {"c": 3},
                                  "evaluate": {"d": 4}, "sft": {"e": 5}}


def test_one_registry_names_every_stage():
    from sinternal_lib import stages

    for ref in ("sft", "03", "3", "03_sft"):
        assert stages.stage_info(ref).name == "sft"
    assert [s.folder for s in stages.STAGES.values()] == ["01_diagnose", "02_build_data", "03_sft", "04_grpo",
                                                          "05_evaluate"]
    for info in stages.STAGES.values():  # every stage module has the same entry point
        mod = __import__(info.module, fromlist=["run"])
        assert callable(mod.run) and list(mod.run.__code__.co_varnames[:2]) == ["run", "log"]
    with pytest.raises(KeyError, match="unknown stage 'rl'.*04_grpo"):
        stages.stage_info("rl")


def test_cli_only_unknown_stage_is_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sinternal_lib", "run", "--recipe", "configs/tests/tiny.yaml",
                        "--run-name", "x", "--runs-root", str(tmp_path), "--only", "rl"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: --only 'rl': no such stage") and "04_grpo" in r.stderr
    assert not (tmp_path / "x").exists()  # refused before touching a run folder


def test_open_run_quiets_library_loading_output(tmp_path):
    """Executed notebooks show the kit's results, not weight-loading bars or import warnings."""
    script = f"""
import warnings
from sinternal_lib.config import load_recipe
from sinternal_lib.models import save_tiny_model
from sinternal_lib.runs import open_run
open_run(load_recipe("configs/tests/tiny.yaml"), "q", {str(tmp_path)!r})
import bitsandbytes
from transformers import AutoModelForCausalLM, TrainingArguments
folder = save_tiny_model({str(tmp_path / "m")!r})
AutoModelForCausalLM.from_pretrained(folder)
TrainingArguments(output_dir={str(tmp_path / "o")!r}, gradient_checkpointing=True, use_cpu=True)
print("done")
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr[-2000:]
    for noise in ("Loading weights", "gemm_4bit_forward", "is deprecated"):
        assert noise not in r.stderr, r.stderr[-2000:]
