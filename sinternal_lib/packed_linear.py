"""Linear layers with their weights pre-packed for oneDNN while the kit generates on a CPU.

`torch.nn.functional.linear` hands oneDNN a plain row-major weight, and oneDNN reorders it into its blocked
layout on every call. A decode step at batch 32 runs about 200 such small matmuls over weights that no
longer sit in cache, so the reorder is a large share of the step. Packing each weight once
(`torch.ops.mkldnn._reorder_linear_weight`, what inductor's CPU freezing pass does) and calling
`torch.ops.mkldnn._linear_pointwise` gave 1.5x (bf16) and 2.0x (fp32) on the matmuls of a cold decode step,
with the same result (figures: docs/LOG.md, 2026-12-06, session 14).

`packed_linears(model)` switches this on for the duration of a `with` block, for every plain `nn.Linear`
with a bf16 or fp32 weight on the CPU (a PEFT LoRA layer's base Linear included; 4-bit layers are left
alone). A call takes the packed path only where autograd is off (inference mode or `no_grad`) and the
input has the weight's dtype; anything else runs the ordinary `F.linear`. The packed copy is kept for the
module between blocks and is rebuilt when the weight changes (its version counter or storage moves), so a
weight written in place (GRPO's merged rollout policy copies its LoRA delta in every step) never meets a
stale copy. The copy costs the weights' size in memory once more.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Any, Iterator

import torch
import torch.nn.functional as F

__all__ = ["packed_linears", "packing_available", "clear_packed", "is_packed"]

# module -> ((weight version, storage pointer) of each weight packed, packed tensor). Held beside the module,
# not on it: oneDNN's packed tensors have no storage, so `copy.deepcopy` of a model (GRPO's merged rollout
# copy) or pickling would fail on them, and they must not reach a state dict.
_PACKED: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()
_DTYPES = (torch.bfloat16, torch.float32)


@functools.lru_cache(maxsize=None)
def packing_available(dtype: torch.dtype) -> bool:
    """Whether this torch build packs and runs `dtype` weights through oneDNN, and gets `F.linear`'s answer
    (probed once on a small matmul; a build without oneDNN, or an op that errors, says False)."""
    if dtype not in _DTYPES or not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(48, 32, generator=g).to(dtype)
        x = torch.randn(3, 5, 32, generator=g).to(dtype)
        with torch.no_grad():
            got = _run(x, torch.ops.mkldnn._reorder_linear_weight(w, 3), None)
            want = F.linear(x, w)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-4
    return got.shape == want.shape and bool(torch.allclose(got.float(), want.float(), atol=tol, rtol=tol))


def _run(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _packed_weight(module: torch.nn.Module, parts: list[torch.nn.Linear] | None = None) -> torch.Tensor:
    """`module`'s weight packed once, kept beside it and packed again when the weight changes (its version
    counter or storage moves). With `parts`, their weights stacked along the outputs instead, kept under
    `module` (the decode step's fused projections: `decode_step.py`)."""
    weights = [p.weight for p in parts] if parts is not None else [module.weight]
    key = tuple((w._version, w.data_ptr()) for w in weights)
    held = _PACKED.get(module)
    if held is None or held[0] != key:
        with torch.no_grad():  # a plain tensor even inside inference mode, usable in both
            w = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0].detach()
            held = (key, torch.ops.mkldnn._reorder_linear_weight(w, 32))
        _PACKED[module] = held
    return held[1]


def _eligible(module: torch.nn.Module) -> bool:
    # `type is`, not isinstance: bitsandbytes' Linear4bit/Linear8bitLt subclass nn.Linear
    return (type(module) is torch.nn.Linear and module.weight.device.type == "cpu"
            and module.weight.dtype in _DTYPES and packing_available(module.weight.dtype))


def _forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w = module.weight
    if (x.dtype != w.dtype or x.device.type != "cpu" or x.numel() == 0
            or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
        return F.linear(x, w, module.bias)
    b = module.bias
    if b is not None and b.dtype != w.dtype:
        return F.linear(x, w, b)
    return _run(x, _packed_weight(module), b)


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, eligible Linear layers of `model` run on packed weights where autograd is off
    (module docstring); yields how many layers were switched. Restores every forward on exit. Nested
    blocks on the same model leave the outer block in charge."""
    mods = [m for m in model.modules() if _eligible(m) and "forward" not in m.__dict__] if enabled else []
    for m in mods:
        m.forward = functools.partial(_forward, m)  # an instance attribute shadows nn.Linear.forward
    try:
        yield len(mods)
    finally:
        for m in mods:
            m.__dict__.pop("forward", None)


def is_packed(module: torch.nn.Module) -> bool:
    """Whether a packed copy of `module`'s weight is held (it ran the packed path at least once)."""
    return module in _PACKED


def clear_packed(model: Any) -> int:
    """Drop the packed copies held for `model`'s modules, the decode step's fused ones included (frees their
    memory); returns how many. A model that is deleted drops them by itself."""
    n = 0
    for m in model.modules():
        if _PACKED.pop(m, None) is not None:
            n += 1
    return n
