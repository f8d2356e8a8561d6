"""Training across processes (sinternal_lib/launch.py): the launch commands, and a real two-process DDP job on
CPU (gloo) whose losses match one process with the same global batch."""

from __future__ import annotations

import csv
import sys

import pytest

from sinternal_lib import jsonl, launch, sft, sft_data
from sinternal_lib.config import apply_overrides
from sinternal_lib.runs import last_complete_checkpoint

from test_sft import run02, tiny_recipe  # noqa: F401  (fixtures shared with the SFT tests)

TOLERANCE = 2e-3  # relative, per logged loss: float reassociation of gradient all-reduce on CPU


def test_launch_commands():
    ddp = launch.launch_command("ddp", 2, ["sft", "/x"])
    assert ddp[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc_per_node=2" in ddp
    assert ddp[-4:] == ["-m", "sinternal_lib.launch", "sft", "/x"]
    z3 = launch.launch_command("zero3", 4, ["sft", "/x"])
    assert "accelerate.commands.launch" in z3 and str(launch.ACCELERATE["zero3"]) in z3 and "--num_processes=4" in z3
    assert all(p.is_file() for p in launch.ACCELERATE.values())
    with pytest.raises(ValueError, match="does not launch"):
        launch.launch_command("single", 1, ["sft", "/x"])


def test_sharding_launchers_store_4bit_weights_in_the_compute_dtype():
    """ZeRO-3 and FSDP flatten parameters into one dtype: the 4-bit base must store its packed weights in the
    compute dtype there (PEFT's QLoRA + ZeRO-3 / FSDP guides); single, ddp and zero2 keep bitsandbytes' uint8."""
    import torch

    from sinternal_lib.config import load_recipe
    from sinternal_lib.models import policy_quantization

    gpu = load_recipe("configs/gpu-ds-r1-qwen-7b.yaml")
    for launcher, sharded in [("single", False), ("ddp", False), ("zero2", False), ("zero3", True), ("fsdp", True)]:
        r = apply_overrides(gpu, {"run.launcher": launcher, "run.num_processes": 1 if launcher == "single" else 2})
        q = policy_quantization(r, for_training=True)
        assert q.bnb_4bit_compute_dtype == getattr(torch, r.model.dtype), launcher
        assert q.bnb_4bit_quant_storage == (q.bnb_4bit_compute_dtype if sharded else torch.uint8), launcher
    # a bf16 7B base does not fit the recipe's stated 24 GiB (run.gpu_memory_gib), so the size is lifted here
    assert policy_quantization(apply_overrides(gpu, {"model.load_in_4bit": False, "run.gpu_memory_gib": None}),
                               for_training=True) is None


def _losses(folder):
    with open(folder / "loss.csv", encoding="utf-8") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_ddp_on_cpu_matches_one_process_with_the_same_global_batch(run02, tiny_recipe, tmp_path):  # noqa: F811
    rows = jsonl.read(run02.require("build_data", sft_data.variant_file("verdict_only")))
    common = {"lora.lora_dropout": 0.0, "sft.max_steps": 3, "sft.save_steps": 2, "sft.logging_steps": 1}
    single = apply_overrides(tiny_recipe, {**common, "sft.per_device_train_batch_size": 4})
    ddp = apply_overrides(tiny_recipe, {**common, "sft.per_device_train_batch_size": 2, "run.launcher": "ddp",
                                        "run.num_processes": 2})
    _, _, one = sft.train_variant(single, rows, tmp_path / "one")
    model, tok, two = sft.train_variant(ddp, rows, tmp_path / "two")
    assert model is None and two["launcher"] == {"launcher": "ddp", "num_processes": 2} and two["steps"] == 3
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 3
    assert all(abs(x - y) <= TOLERANCE * abs(x) for x, y in zip(a, b)), (a, b)
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    # same adapter; not compared value by value: Adam's first steps move every weight by ~lr whatever the
    # gradient's size, so a near-zero gradient whose sign the all-reduce rounding flips moves it the other way
    assert wa.keys() == wb.keys() and all(wa[k].shape == wb[k].shape for k in wa)
    # resume: the launched job picks up at its last checkpoint like one process does
    assert last_complete_checkpoint(tmp_path / "two" / "checkpoints").endswith("checkpoint-3")
    _, _, more = sft.train_variant(apply_overrides(ddp, {"sft.max_steps": 4}), rows, tmp_path / "two")
    assert more["resumed_from"] == "checkpoint-3" and more["steps"] == 4


def test_failed_job_says_why_and_where(run02, tiny_recipe, tmp_path):  # noqa: F811
    bad = apply_overrides(tiny_recipe, {"run.launcher": "ddp", "run.num_processes": 2, "model.policy": "no-such-model"})
    with pytest.raises(RuntimeError, match="ddp job .2 processes. failed") as e:
        sft.train_variant(bad, [], tmp_path / "v")
    assert str(tmp_path / "v" / launch.LOG) in str(e.value)
