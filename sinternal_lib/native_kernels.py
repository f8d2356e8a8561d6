"""The native kernels of the kit's decode step (`decode_kernels.c`): built with the machine's C compiler at first
use, loaded with ctypes, checked against torch's ops before they are trusted.

Why: on a CPU the decode step's attention for one query token and its ~25 small elementwise ops per layer cost as
much as a third of a batch-32 step in eager PyTorch; in C they take three calls per layer (figures: docs/LOG.md,
2026-12-07, session 17). They compute what the eager ops compute, summed in another order, so the decode loop
takes them for sampling only (`decoding.decode`); greedy decoding stays on torch's ops, bit for bit the model's
forward.

Where they cannot be had, generation runs on torch's ops and `why_not()` says why: no C compiler (`$CC`, else
`cc`), a platform other than Linux, a build that fails or whose outputs disagree with torch's, or
`SINTERNAL_NATIVE_KERNELS=off` in the environment. Builds are cached under `$SINTERNAL_KERNEL_CACHE` (default
`~/.cache/sinternal/kernels`), one file per source, compiler, flags and CPU kind, written under a temporary name
and renamed when complete.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["load", "why_not", "status", "reset", "library_path", "Kernels", "SOURCE", "FLAGS"]

SOURCE = Path(__file__).with_name("decode_kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
VERSION = 1  # kernels_version() of decode_kernels.c
ENV_SWITCH = "SINTERNAL_NATIVE_KERNELS"

_P, _I, _L, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
_SIGNATURES = {
    "attn": [_P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _L, _L, _L, _L, _F],
    "add_rms": [_P, _P, _P, _P, _I, _I, _F],
    "rotary": [_P, _P, _P, _I, _I, _I, _L],
    "silu_mul": [_P, _P, _I, _I],
}


def _cache_dir() -> Path:
    if os.environ.get("SINTERNAL_KERNEL_CACHE"):
        return Path(os.environ["SINTERNAL_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sinternal" / "kernels"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC") or "cc")


def _cpu_identity() -> str:
    """The CPU's model and instruction-set flags: `-march=native` builds for them, so a cache shared by machines
    (a home directory on a cluster) keeps one build per CPU kind instead of handing one an illegal instruction."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    pick = [next((ln for ln in info if ln.lower().startswith(k)), "") for k in ("model name", "flags", "features")]
    return "\n".join([platform.machine(), *pick])


def library_path(cc: str) -> Path:
    """Where the build for this source, compiler (and its version), flags and CPU lives in the cache."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    key = hashlib.sha256(SOURCE.read_bytes() + "\0".join([cc, version, *FLAGS, _cpu_identity()]).encode())
    return _cache_dir() / f"decode_kernels-{key.hexdigest()[:16]}.so"


def _build(out: Path, cc: str) -> Path:
    """Compile the source into `out`, complete or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so.part", dir=out.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"`{Path(cc).name} {' '.join(FLAGS)}` failed ({done.returncode}): {tail}")
        os.replace(tmp, out)  # complete or absent: a half-written library never carries the final name
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class Kernels:
    """The loaded library: `kernel(name, dtype)` gives the ctypes function for a dtype (bf16 or fp32)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lib = ctypes.CDLL(str(path))
        if self._lib.kernels_version() != VERSION:
            raise RuntimeError(f"{path.name} is version {self._lib.kernels_version()}, expected {VERSION}")
        self._fns: dict[tuple[str, torch.dtype], Any] = {}
        for name, argtypes in _SIGNATURES.items():
            for dtype, suffix in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
                fn = getattr(self._lib, f"{name}_{suffix}")
                fn.argtypes, fn.restype = argtypes, None
                self._fns[name, dtype] = fn

    def kernel(self, name: str, dtype: torch.dtype) -> Any:
        return self._fns[name, dtype]


def _self_check(k: Kernels) -> None:
    """The kernels against torch's ops on small random inputs, both dtypes; raises where they disagree."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        b, kvh, grp, d, t = 3, 2, 3, 64, 21
        q = torch.randn(b, kvh * grp * d, generator=g).to(dtype)
        keys, values = (torch.randn(b, kvh, t + 5, d, generator=g).to(dtype)[:, :, :t] for _ in range(2))
        mask = torch.ones(b, t, dtype=torch.uint8)
        mask[1, :4] = 0
        out = torch.empty_like(q)
        k.kernel("attn", dtype)(q.data_ptr(), keys.data_ptr(), values.data_ptr(), mask.data_ptr(), out.data_ptr(), b,
                                kvh, grp, d, t, q.stride(0), *keys.stride()[:3], d ** -0.5)
        want = F.scaled_dot_product_attention(q.float().view(b, kvh, grp, d), keys.float(), values.float(),
                                              attn_mask=mask.bool()[:, None, None, :], scale=d ** -0.5)
        torch.testing.assert_close(out.float(), want.reshape(b, -1), atol=tol, rtol=tol)
        x, delta = (torch.randn(b, 48, generator=g).to(dtype) for _ in range(2))
        w = torch.randn(48, generator=g).to(dtype)
        normed = torch.empty_like(x)
        want_x = x + delta
        h = want_x.float()
        want_n = w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
        k.kernel("add_rms", dtype)(x.data_ptr(), delta.data_ptr(), w.data_ptr(), normed.data_ptr(), b, 48, 1e-5)
        torch.testing.assert_close(x, want_x, atol=0, rtol=0)
        torch.testing.assert_close(normed.float(), want_n.float(), atol=tol, rtol=tol)
        gu = torch.randn(b, 2 * 40, generator=g).to(dtype)
        act = torch.empty(b, 40, dtype=dtype)
        k.kernel("silu_mul", dtype)(gu.data_ptr(), act.data_ptr(), b, 40)
        torch.testing.assert_close(act.float(), (F.silu(gu[:, :40]) * gu[:, 40:]).float(), atol=tol, rtol=tol)


@functools.lru_cache(maxsize=1)
def _load() -> tuple[Kernels | None, str | None]:
    if os.environ.get(ENV_SWITCH, "").lower() in ("0", "off", "false", "no"):
        return None, f"{ENV_SWITCH}={os.environ[ENV_SWITCH]} in the environment"
    if not sys.platform.startswith("linux"):
        return None, f"native kernels are built on Linux only (this is {sys.platform})"
    cc = _compiler()
    if cc is None:
        return None, f"no C compiler ({os.environ.get('CC') or 'cc'}) on PATH"
    try:
        path = library_path(cc)
        try:
            k = Kernels(path if path.exists() else _build(path, cc))
        except OSError:  # a cached file that does not load (truncated, another machine's): built again
            path.unlink(missing_ok=True)
            k = Kernels(_build(path, cc))
        _self_check(k)
    except Exception as e:  # noqa: BLE001 -- any failure means torch's ops, with the reason on record
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    return k, None


def load() -> Kernels | None:
    """The kernels, built and checked once per process, or None (`why_not()` says why)."""
    return _load()[0]


def why_not() -> str | None:
    """Why the native kernels are not in use in this process (None when they are)."""
    return _load()[1]


def status() -> str:
    """One line for manifests: in use, from which file, or why not."""
    k, why = _load()
    return f"native ({k.path.name})" if k is not None else f"torch ops ({why})"


def reset() -> None:
    """Forget the loaded state (the next `load()` looks again: after changing the environment)."""
    _load.cache_clear()
