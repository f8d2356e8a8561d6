"""Corrupted artifacts: each is detected with a message naming the file and what to do, and the stage
is redone rather than trusted.

Covered: a samples JSONL cut mid-line (dropped with a warning naming the file, then regenerated) or
broken mid-file (refused); a finished stage's output truncated (stale_reason and `require` name the
file; rerunning the stage restores it; the downstream stage becomes stale); a corrupt manifest and a
corrupt metrics.json (named, with what to do); a half-written, missing or truncated LoRA adapter folder
(`models.ModelNotAvailable` naming the folder). The runner's redo of a stage with a corrupt manifest is
exercised end to end in test_secrets.py (it reruns notebook 02 through `cli.run_notebooks`).
"""

from __future__ import annotations

import re

import pytest
from rel_helpers import SMALL_02, TINY_RECIPE

from sinternal_lib.config import load_recipe
from sinternal_lib.models import ModelNotAvailable, load_model, lora_config
from sinternal_lib.runs import Run, StageIncomplete, stage_for
from sinternal_lib.sampling import read_samples, sample_responses

PROMPTS = [("p1", "How do plants grow?"), ("p2", "Tell me about rivers."), ("p3", "Why is the sky blue?")]


@pytest.fixture(scope="module")
def tiny():
    from sinternal_lib.models import tiny_model

    return tiny_model()


def _sample(tiny, out):
    return sample_responses(*tiny, PROMPTS, num_samples=2, max_new_tokens=4, batch_size=2, seed=3,
                            out_path=out, progress=False)


def test_truncated_samples_line_dropped_with_warning_and_regenerated(tiny, tmp_path, tally):
    out = tmp_path / "samples.jsonl"
    full = _sample(tiny, out)
    good = out.read_bytes()
    out.write_bytes(good[: len(good) - 25])  # the last line cut mid-way (a killed write)
    tally.fault()
    with pytest.warns(UserWarning, match=re.escape(str(out)) + ".*truncated final line.*regenerated"):
        again = _sample(tiny, out)
    assert again == full
    assert sorted(out.read_text().splitlines()) == sorted(good.decode().splitlines())


def test_malformed_line_inside_samples_file_is_refused(tiny, tmp_path, tally):
    out = tmp_path / "samples.jsonl"
    _sample(tiny, out)
    lines = out.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:30] + "\n"  # damage inside the file, not a torn tail: refuse, do not guess
    out.write_text("".join(lines))
    tally.fault()
    with pytest.raises(ValueError, match=re.escape(f"{out}:2") + ".*fix or delete the file"):
        read_samples(out)
    with pytest.raises(ValueError, match=re.escape(f"{out}:2")):
        _sample(tiny, out)


def test_truncated_stage_output_refused_then_redone(ref_copy, reference_02, tally):
    from sinternal_lib.build_data import run as run_build_data

    run = Run(load_recipe(TINY_RECIPE, dict(SMALL_02)), "reference", ref_copy.parent)
    st = stage_for(run, "build_data")
    assert st.is_complete()
    sft = stage_for(run, "sft")  # a finished downstream stage that read this stage
    (sft.dir / "note.txt").write_text("trained on the data\n")
    sft.finish(["note.txt"])
    assert stage_for(run, "sft").is_complete()

    target = st.dir / "verification" / "sinternal.jsonl"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    tally.fault()
    reason = stage_for(run, "build_data").stale_reason()
    assert str(target) in reason and "truncated" in reason
    with pytest.raises(StageIncomplete, match=re.escape(str(target)) + ".*rerun 02_build_data"):
        run.require("build_data", "verification/sinternal.jsonl")

    run_build_data(run, log=lambda s: None)  # what the runner does with a stale stage
    assert stage_for(run, "build_data").is_complete()
    assert target.read_bytes() == (reference_02 / "02_build_data" / "verification" / "sinternal.jsonl").read_bytes()
    assert "an input changed" in stage_for(run, "sft").stale_reason()  # upstream redone: downstream stale


def test_corrupt_manifest_named_with_what_to_do(ref_copy, tally):
    run = Run(load_recipe(TINY_RECIPE, dict(SMALL_02)), "reference", ref_copy.parent)
    st = stage_for(run, "build_data")
    st.manifest_path.write_text('{"stage": "build_data", "config_ha')  # killed mid-write by hand
    tally.fault()
    for call in (st.is_complete, lambda: run.require("build_data", "judged_self.jsonl"),
                 lambda: run.is_done("build_data")):
        with pytest.raises(StageIncomplete, match=re.escape(str(st.manifest_path)) + ".*corrupt.*delete it"):
            call()
    st.invalidate()
    assert "never finished" in st.stale_reason()


def test_corrupt_metrics_json_named(ref_copy, tally):
    run = Run(load_recipe(TINY_RECIPE, dict(SMALL_02)), "reference", ref_copy.parent)
    run.metrics_path.write_text('{"data": {"examples": 3')
    tally.fault()
    with pytest.raises(ValueError, match=re.escape(str(run.metrics_path)) + ".*corrupt"):
        run.update_metrics("build_data", {"x": 1})


def test_broken_adapter_folders_give_clear_errors(tmp_path, tally):
    from peft import get_peft_model

    lora = lora_config({"r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    model = get_peft_model(load_model("tiny-random-llama", trainable=True)[0], lora)
    good = tmp_path / "adapter"
    model.save_pretrained(good)
    load_model("tiny-random-llama", adapter=good)  # control: an intact adapter loads

    half = tmp_path / "half"  # killed during save: config written, weights not
    half.mkdir()
    (half / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    (weights_only / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes())
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    w = (good / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(w[: len(w) // 3])
    cases = {half: "incomplete.*adapter_model", weights_only: "incomplete.*adapter_config.json",
             tmp_path / "deleted": "does not exist", truncated: "could not load the adapter"}
    for folder, what in cases.items():
        tally.fault()
        with pytest.raises(ModelNotAvailable) as e:
            load_model("tiny-random-llama", adapter=folder)
        assert str(folder) in str(e.value) and re.search(what, str(e.value)) and "rerun" in str(e.value)


def test_half_written_newest_checkpoint_is_not_resumed(tmp_path, tally):
    from sinternal_lib.runs import last_complete_checkpoint

    ck = tmp_path / "checkpoints"
    (ck / "checkpoint-1").mkdir(parents=True)
    (ck / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (ck / "checkpoint-2").mkdir()  # killed while saving: adapter config only
    (ck / "checkpoint-2" / "adapter_config.json").write_text("{}")
    tally.fault()
    assert last_complete_checkpoint(ck) == str(ck / "checkpoint-1")
