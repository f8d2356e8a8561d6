"""Run folders: manifests written last, stage skipping, redo after an interruption, locks, kept stages.

Run: .venv/bin/pytest -q tests/test_runs.py
"""

import json
import os
import subprocess
import sys

import pytest

from sinternal_lib.cli import run_notebooks
from sinternal_lib.config import load_recipe
from sinternal_lib.kept_stages import StageConfigChanged, prepare, upstream
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


def test_another_config_never_silently_replaces_a_finished_stage(run, tmp_path):
    """A finished under config A; B is refused naming the changed keys; set aside, B runs and A is kept
    findable; asking for A again restores it (files, manifest, metrics) instead of recomputing, and a stage
    that read A stays valid."""
    a = _finish_build_data(run, "made under A\n")
    sft = stage_for(run, "sft")
    (sft.dir / "x").write_text("1")
    sft.finish(["x"])
    manifest_a = a.manifest_path.read_bytes()
    executed = run.path / "notebooks" / "02_build_data.ipynb"  # the runner's executed copy travels with the stage
    executed.parent.mkdir()
    executed.write_text("executed under A")
    b_run = open_run(load_recipe("configs/tests/tiny.yaml", {"build_data.num_samples": 2, "build_data.top_p": 0.5}),
                     "t", tmp_path)
    b = stage_for(b_run, "build_data")
    with pytest.raises(StageConfigChanged) as refused:
        b.begin()  # what a notebook's `build_data.run(run)` does first
    msg = str(refused.value)
    assert "02_build_data" in msg and "build_data.num_samples: 4 -> 2" in msg and "build_data.top_p: 0.95 -> 0.5" in msg
    assert 'run_name = "try-num-samples"' in msg and "stage.set_aside()" in msg and "--force" in msg
    assert refused.value.changes == ["build_data.num_samples: 4 -> 2", "build_data.top_p: 0.95 -> 0.5"]
    assert stage_for(run, "build_data").is_complete() and a.manifest_path.read_bytes() == manifest_a  # untouched

    slot_a = b.set_aside()  # the notebook way to replace it (the runner: --force)
    assert slot_a == run.path / "02_build_data.previous" / a._config_hash()
    assert (slot_a / "samples.jsonl").read_text() == "made under A\n" and (slot_a / "manifest.json").read_bytes() == manifest_a
    assert "build_data" not in run.read_metrics() and "build_data" not in run.read_metrics()["timings"]  # kept with A
    assert (slot_a / "kept_notebook.ipynb").read_text() == "executed under A" and not executed.exists()
    assert b.begin() is None
    (b.dir / "samples.jsonl").write_text("made under B\n")
    b.finish(["samples.jsonl"], summary={"examples": 2})
    assert "input changed" in stage_for(run, "sft").stale_reason()

    back = stage_for(run, "build_data")
    why = back.begin()  # config A again: restored, not recomputed, and B is kept in its own slot
    assert "restored from" in why and str(slot_a) in why and "not recomputed" in why
    assert (back.dir / "samples.jsonl").read_text() == "made under A\n" and back.manifest_path.read_bytes() == manifest_a
    assert (run.path / "02_build_data.previous" / b._config_hash() / "samples.jsonl").read_text() == "made under B\n"
    assert run.read_metrics()["build_data"] == {"examples": 1} and not slot_a.exists()
    assert not (back.dir / "kept_metrics.json").exists() and executed.read_text() == "executed under A"
    back.finish(["samples.jsonl"], summary={"examples": 1})  # the notebook finishes the stage as it is
    assert back.manifest_path.read_bytes() == manifest_a  # same outputs: the manifest stays, so ...
    assert stage_for(run, "sft").is_complete()  # ... the stage that read A is valid again
    assert "restored" in stage_for(b_run, "build_data").begin()  # and B comes back the same way


def test_runner_refuses_another_config_naming_keys_and_force_keeps_the_finished_stage(run, tmp_path):
    _finish_build_data(run, "made under A\n")
    recipe_yaml = (run.path / "recipe.yaml").read_text()
    lines: list[str] = []
    code = run_notebooks("configs/tests/tiny.yaml", "t", only=["02", "03"], overrides={"build_data.num_samples": 2},
                         root=str(tmp_path), log=lines.append)
    assert code == 2 and len(lines) == 1, lines  # refused before any notebook ran
    assert lines[0].startswith("error: stage 02_build_data of run 't' finished under another config")
    assert "build_data.num_samples: 4 -> 2" in lines[0] and "--run-name try-num-samples" in lines[0]
    assert "add --force" in lines[0] and "03_sft" not in lines[0]  # 03 never finished: nothing to lose there
    assert (run.path / "recipe.yaml").read_text() == recipe_yaml and stage_for(run, "build_data").is_complete()
    # --force: the runner calls prepare(stage, force=True) before executing the notebook
    forced = stage_for(open_run(load_recipe("configs/tests/tiny.yaml", {"build_data.num_samples": 2}), "t", tmp_path),
                       "build_data")
    note = prepare(forced, force=True)
    kept = run.path / "02_build_data.previous" / stage_for(run, "build_data")._config_hash()
    assert "kept in" in note and (kept / "samples.jsonl").read_text() == "made under A\n"
    assert not forced.manifest_path.exists() and forced.begin() is None  # the new config starts afresh


def test_upstream_redo_keeps_the_downstream_stage_and_restores_it(run, tmp_path):
    """Same config, other inputs (an earlier stage redone): set aside without asking, restored with its inputs."""
    _finish_build_data(run, "A\n")
    sft = stage_for(run, "sft")
    (sft.dir / "adapter.bin").write_text("trained on A")
    sft.finish(["adapter.bin"])
    other = open_run(load_recipe("configs/tests/tiny.yaml", {"build_data.num_samples": 2}), "t", tmp_path)
    stage_for(other, "build_data").set_aside()
    _finish_build_data(other, "B\n")
    on_b = stage_for(other, "sft")
    assert "other inputs" in on_b.begin()  # no refusal: the config is the same
    (on_b.dir / "adapter.bin").write_text("trained on B")
    on_b.finish(["adapter.bin"])
    assert "restored" in stage_for(run, "build_data").begin()
    assert "restored" in stage_for(run, "sft").begin()
    assert (sft.dir / "adapter.bin").read_text() == "trained on A" and stage_for(run, "sft").is_complete()


def test_refusal_in_a_later_notebook_names_the_notebooks_a_new_run_needs_first(run, tmp_path):
    grpo = stage_for(run, "grpo")
    (grpo.dir / "rewards.csv").write_text("step,reward\n1,0.5\n")
    grpo.finish(["rewards.csv"])
    longer = open_run(load_recipe("configs/tests/tiny.yaml", {"grpo.max_steps": 5}), "t", tmp_path)
    with pytest.raises(StageConfigChanged, match="grpo.max_steps: 2 -> 5") as refused:
        stage_for(longer, "grpo").begin()
    assert 'run_name = "try-max-steps") and run notebooks 02_build_data, 03_sft with it first' in str(refused.value)
    assert upstream("evaluate") == ["01_diagnose", "02_build_data", "03_sft", "04_grpo"] and upstream("diagnose") == []


def test_a_previous_folder_of_an_older_kit_becomes_its_configs_slot(run, tmp_path):
    st = _finish_build_data(run, "old\n")
    old = run.path / "02_build_data.previous"
    st.dir.rename(old)  # the layout before kept copies: one stage folder
    assert "restored" in stage_for(run, "build_data").begin()
    assert (st.dir / "samples.jsonl").read_text() == "old\n" and not (old / "manifest.json").exists()


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
                                                          "05_evaluate", "06_self_verification"]
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
