"""The compact LM-head switch: TRL still has the private name it rebinds, the loss is unchanged, and the
original binding comes back (also after an error)."""

from __future__ import annotations

import pytest
import torch

from sinternal_lib.compact_loss import compact_lm_head, unsupported_reason
from sinternal_lib.models import tiny_model


def test_installed_trl_supports_compaction():
    # Canary: a TRL that renames the choice makes this fail, instead of the CPU recipe silently slowing down.
    assert unsupported_reason() is None


def test_binding_is_restored_even_after_an_error():
    import trl.trainer.utils as tu

    original = tu._use_triton
    assert original(torch.device("cpu")) is False  # TRL's own choice on CPU: score every position
    with pytest.raises(RuntimeError), compact_lm_head() as applied:
        assert applied and tu._use_triton(torch.device("cpu")) is True
        raise RuntimeError("interrupted")
    assert tu._use_triton is original
    with compact_lm_head(enabled=False) as applied:
        assert applied is False and tu._use_triton is original


def test_same_loss_with_and_without_compaction():
    """TRL's fused LM-head loss over the labelled (completion) positions, computed both ways, equals a plain
    cross-entropy over those positions."""
    from trl.trainer.utils import add_fused_lm_head

    model, _ = tiny_model(seed=3)
    add_fused_lm_head(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :17] = -100  # prompt positions carry no loss, as in the verification rows
    labels[1, 21:] = -100  # a shorter second row (padding)

    def loss() -> torch.Tensor:
        return model(input_ids=ids, labels=labels, fused_lm_head=True).loss

    full = loss()
    with compact_lm_head() as applied:
        compact = loss()
    assert applied
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    plain = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                              ignore_index=-100)
    assert torch.allclose(full, compact, atol=1e-5) and torch.allclose(compact, plain, atol=1e-4)
    compact.backward()  # the compacted loss stays connected to the weights
    assert model.model.embed_tokens.weight.grad is not None
