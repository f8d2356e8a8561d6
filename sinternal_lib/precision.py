"""Pick bf16 or fp32 by what the machine does fast, not by assumption.

Recipe values `auto` of `model.dtype`, `model.generation_dtype`, `sft.bf16` and `grpo.bf16` resolve here. On CUDA, bf16 where
the GPU supports it. On CPU, a short matmul probe (bf16 vs fp32, same shapes) decides: bf16 only where it
runs faster. Why a probe and not a flag: on AVX2-only CPUs (most laptops) a bf16 matmul ran at 1.2 GFLOP/s
against 134 in fp32, which made the CPU recipe's SFT ~25x slower, while on AVX512-BF16/AMX CPUs bf16 is
the fast path (docs/LOG.md, 2026-11-29 and 2026-12-05). The CPU's bf16 flags are recorded beside the
probe so a reader sees both. The probe runs once per process (well under a second) and its figures go
into each stage's manifest (`precision_record`).
"""

from __future__ import annotations

import functools
import platform
import time
from typing import Any

import torch

__all__ = ["AUTO", "cpu_bf16_flags", "probe_matmul", "choose_bf16", "bf16_is_fast", "resolve_dtype", "resolve_bf16",
           "precision_record", "format_precision"]

AUTO = "auto"
# bf16 must beat fp32 by this factor to be picked: a tie is not worth bf16's coarser numerics.
MIN_SPEEDUP = 1.1


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bf16 features as the kernel reports them (x86 flags or Arm features), or []."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    words: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            words.update(value.split())
    return sorted(w for w in words if w in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16", "avx_ne_convert"))


def probe_matmul(dtype: torch.dtype, *, size: int = 512, seconds: float = 0.2) -> float:
    """GFLOP/s of a square `size` matmul in `dtype` on the CPU, timed for about `seconds`."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # first call sets up the kernel
    n, t0 = 0, time.perf_counter()
    while True:
        a @ b
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return 2 * size**3 * n / dt / 1e9


@functools.lru_cache(maxsize=None)
def _cpu_probe() -> dict[str, Any]:
    fp32 = probe_matmul(torch.float32)
    bf16 = probe_matmul(torch.bfloat16)
    return {"fp32_gflops": round(fp32, 1), "bf16_gflops": round(bf16, 1),
            "bf16_speedup": round(bf16 / fp32, 2) if fp32 > 0 else None}


def choose_bf16(probe: dict[str, Any], min_speedup: float = MIN_SPEEDUP) -> bool:
    """The CPU rule on a probe's figures: bf16 only when it ran at least `min_speedup` x fp32."""
    speedup = probe.get("bf16_speedup")
    return speedup is not None and speedup >= min_speedup


def bf16_is_fast(device: str = "cpu") -> bool:
    """True where bf16 compute is the fast path on `device` (CUDA: supported; CPU: the probe's verdict)."""
    if torch.device(device).type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return choose_bf16(_cpu_probe())


def resolve_dtype(value: str, device: str = "cpu") -> str:
    """A recipe's `model.dtype`: `auto` -> "bfloat16" where bf16 is fast on `device`, else "float32"."""
    if value != AUTO:
        return value
    return "bfloat16" if bf16_is_fast(device) else "float32"


def resolve_bf16(value: bool | str, device: str = "cpu") -> bool:
    """A recipe's `sft.bf16` / `grpo.bf16`: `auto` -> bf16 autocast where it is fast on `device`."""
    if value == AUTO:
        return bf16_is_fast(device)
    return bool(value)


def precision_record(device: str = "cpu", recipe: Any = None) -> dict[str, Any]:
    """What the choice rested on, for manifests and the report: capability, flags, probe figures, and with
    a `recipe` the values its `auto` fields resolved to (recipe value -> used value)."""
    chosen = {}
    if recipe is not None:
        chosen = {"resolved": {
            "model.dtype": f"{recipe.model.dtype} -> {resolve_dtype(recipe.model.dtype, device)}",
            "model.generation_dtype": f"{recipe.model.generation_dtype} -> "
                                      f"{resolve_dtype(recipe.model.generation_dtype, device)}",
            "sft.bf16": f"{recipe.sft.bf16} -> {resolve_bf16(recipe.sft.bf16, device)}",
            "grpo.bf16": f"{recipe.grpo.bf16} -> {resolve_bf16(recipe.grpo.bf16, device)}"}}
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        return {"device": "cuda", "gpu": name, "bf16_fast": bf16_is_fast(device), **chosen}
    return {**chosen, "device": "cpu", "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": platform.processor() or platform.machine(), "bf16_flags": cpu_bf16_flags(),
            "torch_threads": torch.get_num_threads(), **_cpu_probe(), "bf16_fast": bf16_is_fast(device),
            "min_speedup": MIN_SPEEDUP, "decode_kernels": _decode_kernels()}


def _decode_kernels() -> str:
    """Whether sampling's decode step runs native kernels here (`native_kernels.status`)."""
    from .native_kernels import status  # builds them at first call (a few seconds, cached across processes)

    return status()


# make reproduce on the dev machine with both math libraries held to AVX2 (fp32 everywhere) took 1.2x the stage
# time of the same machine in bf16 once weights were packed for oneDNN (1.9x before): docs/LOG.md (2026-12-06,
# session 14)
FP32_SLOWDOWN = 1.2


def format_precision(record: dict[str, Any]) -> str:
    """One line for the runner's start: what the probe measured and what the recipe's `auto` fields became, and,
    where a CPU runs fp32 because bf16 is slow, that stage times will be about `FP32_SLOWDOWN` x the README's
    (which are for CPUs with fast bf16)."""
    resolved = record.get("resolved", {})
    used = ", ".join(f"{k} {v.split(' -> ')[-1]}" for k, v in resolved.items() if v.split(" -> ")[0] == AUTO)
    if record.get("device") != "cpu":
        return f"precision: {record.get('device')}, bf16 {'supported' if record.get('bf16_fast') else 'not supported'}" \
               + (f"; auto -> {used}" if used else "")
    line = (f"precision: bf16 {record.get('bf16_gflops')} vs fp32 {record.get('fp32_gflops')} GFLOP/s on this CPU "
            f"({record.get('cpu_capability')})" + (f"; auto -> {used}" if used else ""))
    if record.get("decode_kernels", "").startswith("torch ops"):
        line += f"; sampling without the native decode kernels: {record['decode_kernels']}"
    if used and not record.get("bf16_fast"):
        line += (f". This CPU has no fast bf16, so the run computes in fp32: expect stage times about "
                 f"{FP32_SLOWDOWN}x the README's CPU figures (docs/LOG.md, 2026-12-06, session 14)")
    return line
