"""Score only the completion positions through the LM head in TRL's SFT loss, on CPU too.

TRL 1.16 computes the SFT loss through a fused, chunked LM head that never materialises the
(batch, length, vocabulary) logits. Where TRL runs its Triton kernel (CUDA, XPU) it first keeps only the
positions that carry a label; elsewhere it scores every position (prompt and padding included) and masks
afterwards. Verification rows are mostly prompt, so on CPU most of the LM-head work over SmolLM2's
49,152-word vocabulary is thrown away. `compact_lm_head()` makes TRL keep only the labelled positions on
every device. The loss is the same; speed and memory against the kit without it (`benchmarks/bench_sft.py`,
arm `kit-full-lm-head`): see docs/LOG.md (2026-11-27, compact LM head adopted for SFT).

How: TRL's loss asks the module-level name `trl.trainer.utils._use_triton(device)` only to choose
compaction (the kernel choice is made in `trl.kernels` through its own binding), so the context manager
rebinds that one name and restores it on exit. A private name: when another TRL lacks it or its call
site, nothing is patched and `unsupported_reason()` says why (`tests/test_compact_loss.py` is the canary).
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from typing import Iterator

CALL_SITE = "compact = _use_triton("


def unsupported_reason() -> str | None:
    """None when the installed TRL can be switched to compaction; otherwise why not."""
    try:
        import trl.trainer.utils as tu
    except ImportError as e:  # pragma: no cover - trl is a dependency
        return f"trl not importable: {e}"
    if not callable(getattr(tu, "_use_triton", None)):
        return "trl.trainer.utils has no _use_triton (TRL changed): loss computed without compaction"
    try:
        src = inspect.getsource(tu)
    except (OSError, TypeError) as e:
        return f"cannot read trl.trainer.utils source: {e}"
    if CALL_SITE not in src:
        return f"trl.trainer.utils no longer contains {CALL_SITE!r} (TRL changed): loss computed without compaction"
    return None


@contextlib.contextmanager
def compact_lm_head(enabled: bool = True) -> Iterator[bool]:
    """Within the block TRL's fused LM-head loss scores only labelled positions. Yields whether it applies."""
    reason = unsupported_reason() if enabled else "disabled"
    if reason is not None:
        if enabled:
            warnings.warn(f"compact_lm_head: {reason}", stacklevel=3)
        yield False
        return
    import trl.trainer.utils as tu

    original = tu._use_triton
    tu._use_triton = lambda _device: True
    try:
        yield True
    finally:
        tu._use_triton = original
