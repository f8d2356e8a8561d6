"""`auto` precision: bf16 only where the machine runs it faster (sinternal_lib/precision.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sinternal_lib import precision
from sinternal_lib.config import RecipeError, apply_overrides, load_recipe


def test_rule_picks_bf16_only_when_clearly_faster():
    assert precision.choose_bf16({"bf16_speedup": 5.4})
    assert precision.choose_bf16({"bf16_speedup": 1.1})
    assert not precision.choose_bf16({"bf16_speedup": 1.05})  # a tie is not worth bf16's numerics
    assert not precision.choose_bf16({"bf16_speedup": 0.01})  # AVX2-only CPUs: ~1 vs ~130 GFLOP/s
    assert not precision.choose_bf16({"bf16_speedup": None})


def test_explicit_values_pass_through():
    assert precision.resolve_dtype("float32") == "float32"
    assert precision.resolve_dtype("bfloat16") == "bfloat16"
    assert precision.resolve_bf16(True) is True and precision.resolve_bf16(False) is False


def test_auto_follows_this_machines_probe():
    probe = precision._cpu_probe()
    assert probe["fp32_gflops"] > 0 and probe["bf16_gflops"] > 0
    fast = precision.choose_bf16(probe)
    assert precision.resolve_bf16("auto") is fast
    assert precision.resolve_dtype("auto") == ("bfloat16" if fast else "float32")
    rec = precision.precision_record("cpu")
    assert rec["bf16_fast"] is fast and rec["cpu_capability"] and "bf16_flags" in rec


_PROBE = ("import json; from sinternal_lib import precision as p; "
          "print(json.dumps({'probe': p._cpu_probe(), 'dtype': p.resolve_dtype('auto'), "
          "'bf16': p.resolve_bf16('auto')}))")


def test_auto_picks_fp32_on_an_avx2_only_cpu():
    """oneDNN limited to AVX2 runs bf16 matmuls as an AVX2-only laptop does (no native bf16): slow."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["probe"]["bf16_speedup"] < 1.0, got
    assert got["dtype"] == "float32" and got["bf16"] is False


@pytest.mark.parametrize("override", ["sft.bf16=auto", "grpo.bf16=auto", "model.dtype=auto", "model.generation_dtype=auto",
                                      "sft.bf16=false"])
def test_recipe_accepts_auto(override):
    apply_overrides(load_recipe("configs/tests/tiny.yaml"), [override])


@pytest.mark.parametrize("override, words", [("sft.bf16=fast", "sft.bf16 must be one of true, false, auto"),
                                             ("sft.bf16=1", "sft.bf16 must be one of"),
                                             ("model.dtype=float64", "model.dtype must be one of auto, float32")])
def test_recipe_refuses_other_values(override, words):
    with pytest.raises(RecipeError, match=words):
        apply_overrides(load_recipe("configs/tests/tiny.yaml"), [override])


def test_cpu_recipe_decides_by_measurement():
    r = load_recipe("cpu-smollm2")
    assert r.model.generation_dtype == "auto" and r.sft.bf16 == "auto" and r.grpo.bf16 == "auto"


def test_runner_line_says_what_auto_became_and_warns_where_bf16_is_slow():
    """The runner's first lines name the probe's figures and what each `auto` field resolved to; on a CPU without
    fast bf16 they say the run computes in fp32 and takes about FP32_SLOWDOWN x the README's times."""
    from sinternal_lib.precision import FP32_SLOWDOWN, format_precision

    resolved = {"model.dtype": "float32 -> float32", "model.generation_dtype": "auto -> float32",
                "sft.bf16": "auto -> False", "grpo.bf16": "auto -> False"}
    slow = {"resolved": resolved, "device": "cpu", "cpu_capability": "AVX2", "fp32_gflops": 134.0,
            "bf16_gflops": 1.2, "bf16_fast": False}
    line = format_precision(slow)
    assert "bf16 1.2 vs fp32 134.0 GFLOP/s" in line and "(AVX2)" in line and "model.dtype" not in line
    assert "sft.bf16 False" in line and f"{FP32_SLOWDOWN}x" in line and "fp32" in line
    fast = {**slow, "cpu_capability": "AVX512", "bf16_gflops": 410.0, "bf16_fast": True,
            "resolved": {**resolved, "model.generation_dtype": "auto -> bfloat16", "sft.bf16": "auto -> True"}}
    assert "x the README" not in format_precision(fast) and "model.generation_dtype bfloat16" in format_precision(fast)
    # no field left to `auto`: nothing was chosen for the user, so no warning either
    pinned = {**slow, "resolved": {k: "float32 -> float32" for k in resolved}}
    assert "x the README" not in format_precision(pinned)
    assert format_precision({"device": "cuda", "bf16_fast": True, "resolved": resolved}).startswith("precision: cuda")


def test_runner_line_says_where_sampling_runs_without_the_native_kernels():
    from sinternal_lib.precision import format_precision

    base = {"resolved": {}, "device": "cpu", "cpu_capability": "AVX512", "fp32_gflops": 180.0, "bf16_gflops": 410.0,
            "bf16_fast": True}
    off = format_precision({**base, "decode_kernels": "torch ops (no C compiler (cc) on PATH)"})
    assert "without the native decode kernels: torch ops (no C compiler (cc) on PATH)" in off
    assert "native decode kernels" not in format_precision({**base, "decode_kernels": "native (decode_kernels-x.so)"})
