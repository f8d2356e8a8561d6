"""Packed Linear weights (sinternal_lib/packed_linear.py): the same outputs as `F.linear`, only where autograd
is off, never from a stale copy, never on 4-bit layers, and every forward restored after the block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sinternal_lib.packed_linear import clear_packed, is_packed, packed_linears, packing_available

pytestmark = pytest.mark.skipif(not packing_available(torch.float32), reason="this torch build has no oneDNN")


def _net(dtype=torch.float32, bias=True):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 48, bias=bias), torch.nn.SiLU(),
                               torch.nn.Linear(48, 16, bias=bias)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_forward_gives_what_f_linear_gives(dtype, bias):
    if not packing_available(dtype):
        pytest.skip(f"no oneDNN {dtype} packing in this build")
    net = _net(dtype, bias)
    x = torch.randn(4, 7, 32).to(dtype)
    with torch.inference_mode():
        want = net(x)
        with packed_linears(net) as n:
            got = net(x)
    assert n == 2
    assert is_packed(net[0]) and is_packed(net[2])  # the packed path ran
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_the_block_restores_every_forward():
    net = _net()
    with packed_linears(net):
        assert "forward" in net[0].__dict__
    assert "forward" not in net[0].__dict__ and "forward" not in net[2].__dict__
    with pytest.raises(ValueError), packed_linears(net):
        raise ValueError("a failure inside the block")
    assert "forward" not in net[0].__dict__


def test_a_weight_changed_in_place_is_repacked():
    """GRPO's merged rollout policy copies new weights into the same tensors every step."""
    net = _net()
    x = torch.randn(3, 32)
    with torch.no_grad(), packed_linears(net):
        before = net(x)
        net[0].weight.mul_(2.0)
        after = net(x)
    with torch.no_grad():
        plain = net(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, plain, atol=1e-5, rtol=1e-5)


def test_training_keeps_the_ordinary_path_and_its_gradients():
    net = _net()
    x = torch.randn(3, 32, requires_grad=True)
    with packed_linears(net):
        net(x).sum().backward()
    assert net[0].weight.grad is not None and x.grad is not None
    assert not is_packed(net[0])  # autograd on: nothing was packed


def test_a_frozen_base_with_grad_enabled_input_falls_back():
    """A LoRA base layer is frozen, but its input carries gradients from the adapters below it."""
    net = _net()
    net.requires_grad_(False)
    x = torch.randn(3, 32, requires_grad=True)
    with packed_linears(net):
        net(x).sum().backward()
    assert x.grad is not None


def test_a_different_input_dtype_uses_f_linear():
    net = _net(torch.float32)
    x = torch.randn(3, 32, dtype=torch.float64)
    with torch.no_grad(), packed_linears(net):
        with pytest.raises(RuntimeError):  # F.linear's own dtype error, not a silent packed cast
            net(x)
    assert not is_packed(net[0])  # the packed path was never entered


def test_lora_base_layers_are_packed_and_the_adapter_still_adds():
    from peft import LoraConfig, get_peft_model

    from sinternal_lib.models import tiny_model

    model, _ = tiny_model()
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.eval()
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.inference_mode():
        want = peft(input_ids=ids).logits
        with packed_linears(peft) as n:
            got = peft(input_ids=ids).logits
    assert n > 0
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    base = peft.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert is_packed(base)
    assert clear_packed(peft) >= 1 and not is_packed(base)


def test_4bit_layers_are_left_alone():
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(32, 16, compute_dtype=torch.float32)
    net = torch.nn.Sequential(layer, torch.nn.Linear(16, 8))
    with packed_linears(net) as n:
        assert "forward" not in layer.__dict__
    assert n == 1


def test_disabled_switches_nothing():
    net = _net()
    with packed_linears(net, enabled=False) as n:
        assert n == 0 and "forward" not in net[0].__dict__
    with torch.no_grad():
        torch.testing.assert_close(net[0](torch.ones(1, 32)), F.linear(torch.ones(1, 32), net[0].weight,
                                                                       net[0].bias))


def test_a_model_with_packed_layers_still_deep_copies():
    """GRPO's merged rollout policy is a deep copy of the trained model (grpo_rollouts.py)."""
    import copy

    net = _net()
    with torch.no_grad(), packed_linears(net):
        net(torch.randn(2, 32))
    assert is_packed(net[0])
    twin = copy.deepcopy(net)
    assert not is_packed(twin[0])
    assert "forward" not in twin[0].__dict__
    torch.testing.assert_close(twin(torch.ones(1, 32)), net(torch.ones(1, 32)))
