"""The kit's own decode step (sinternal_lib/decode_step.py) against the model's forward: same logits, same cache,
same tokens through the decode loop; it declines what it does not know."""

from __future__ import annotations

import copy

import pytest
import torch

from sinternal_lib import sampling
from sinternal_lib.decode_step import decode_step_for, why_not
from sinternal_lib.decoding import decode, prefill, reserve, shared_prefix_len
from sinternal_lib.models import load_model
from sinternal_lib.packed_linear import packing_available

from test_decoding import SYSTEM, _rows, tiny  # noqa: F401  (prompts and the tiny-model fixture of the loop's tests)

pytestmark = pytest.mark.skipif(not packing_available(torch.float32), reason="this torch build packs no weights")


def _after_prefill(model, rows):
    """Prefill `rows` with room for a step: (the cache's call kwarg, next tokens, positions, mask, two copies of the
    cache). Call under `torch.inference_mode()`."""
    cache, kv, mask, logits = prefill(model, rows, pad_id=0)
    reserve(cache, 4)
    mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
    return next(iter(kv)), logits.argmax(-1), mask.sum(-1, keepdim=True) - 1, mask, *(copy.deepcopy(cache)
                                                                                      for _ in range(2))


def _step_both_ways(model, rows):
    """Prefill `rows`, then one step through the model's forward and one through the kit's step, each on its own
    copy of the cache: (forward logits, step logits, forward cache, step cache)."""
    with torch.inference_mode():
        name, tok, pos, mask, c1, c2 = _after_prefill(model, rows)
        want = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, **{name: c1},
                     use_cache=True).logits[:, -1, :]
        got = decode_step_for(model)(tok, pos, mask, c2)
    return want, got, c1, c2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padded", [True, False])
def test_step_gives_the_forwards_logits_and_cache(tiny, dtype, padded):
    """Padded rows take the packed-GQA path with a mask, unpadded rows transformers' maskless one."""
    if not packing_available(dtype):
        pytest.skip(f"no {dtype} packing in this build")
    model, tok = tiny
    model = copy.deepcopy(model).to(dtype)
    rows = _rows(tok, SYSTEM) if padded else [_rows(tok)[1]] * 3
    assert_same_step(*_step_both_ways(model, rows), tol=1e-5 if dtype == torch.float32 else 2e-2)


def assert_same_step(want, got, c1, c2, *, tol):
    """Two steps' logits and the caches they wrote agree within `tol`."""
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    for a, b in zip(c1.layers, c2.layers):
        torch.testing.assert_close(a.keys, b.keys, atol=tol, rtol=tol)
        torch.testing.assert_close(a.values, b.values, atol=tol, rtol=tol)


def biased_qwen2(hidden_size: int = 64):
    """A tiny random Qwen2 (the R1-Distill models' architecture) with non-zero query, key and value biases."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=300, hidden_size=hidden_size, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                p.bias.normal_()  # zero at init: make the biases count
    return model


def test_step_handles_biases_and_another_architecture():
    """Qwen2 (the R1-Distill models' architecture) has biased query, key and value projections."""
    model = biased_qwen2()
    assert why_not(model) is None
    rows = [[5, 6, 7, 8, 9], [11, 12, 13], [20, 21, 22, 23]]
    want, got, *_ = _step_both_ways(model, rows)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "seed": 3}])
def test_decode_writes_the_same_tokens_with_and_without_it(tiny, kw):
    model, tok = tiny
    rows = _rows(tok, SYSTEM)
    stop = sampling._stop_ids(model, tok)
    with torch.inference_mode():
        a, b = (decode(model, rows, max_new_tokens=12, stop_ids=stop, pad_id=0, own_step=o, **kw)
                for o in (True, False))
    assert a == b


def test_decode_uses_it_and_skips_the_forward(tiny):
    """After the prefill, no forward of the model runs: the step is really taken."""
    model, tok = tiny
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with torch.inference_mode():
            decode(model, _rows(tok), max_new_tokens=6, stop_ids=set(), pad_id=0)
    finally:
        hook.remove()
    assert len(calls) == 1 + bool(shared_prefix_len(_rows(tok)))  # the prefill's forwards only


def test_weights_changed_in_place_are_repacked(tiny):
    """GRPO's merged rollout copy writes new weights into the same tensors before every call."""
    model, tok = tiny
    model = copy.deepcopy(model)
    rows = _rows(tok)
    with torch.inference_mode():
        decode(model, rows, max_new_tokens=4, stop_ids=set(), pad_id=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight.mul_(3.0)
            layer.mlp.up_proj.weight.add_(0.05)
    want, got, *_ = _step_both_ways(model, rows)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _lora(model, **kw):
    from peft import LoraConfig, get_peft_model

    cfg = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
               init_lora_weights=False)  # random A and B: the adapter changes the outputs
    return get_peft_model(copy.deepcopy(model), LoraConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_unmerged_lora_runs_as_peft_runs_it(tiny, dtype):
    """Some parts of the fused projections adapted, others not; in bf16 the adapter stays fp32 (PEFT's cast)."""
    model, tok = tiny
    base = copy.deepcopy(model).to(dtype)
    lora = _lora(base)
    assert why_not(lora) is None
    assert lora.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32
    want, got, *_ = _step_both_ways(lora, _rows(tok, SYSTEM))
    plain, *_ = _step_both_ways(base, _rows(tok, SYSTEM))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    assert (want.float() - plain.float()).abs().max() > 10 * tol  # the adapter counts


def test_lora_decoding_writes_the_same_tokens_with_and_without_it(tiny):
    model, tok = tiny
    lora = _lora(model)
    rows = _rows(tok, SYSTEM)
    for kw in ({}, {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "seed": 3}):
        with torch.inference_mode():
            a, b = (decode(lora, rows, max_new_tokens=12, stop_ids=set(), pad_id=0, own_step=o, **kw)
                    for o in (True, False))
        assert a == b


def test_it_declines_what_it_does_not_know(tiny):
    model, _ = tiny
    assert why_not(model) is None
    dora = _lora(model, use_dora=True)
    assert "variant" in why_not(dora) and decode_step_for(dora) is None

    class Quantized(torch.nn.Linear):  # bitsandbytes' layers subclass nn.Linear the same way
        pass

    other = copy.deepcopy(model)
    old = other.model.layers[1].mlp.up_proj
    other.model.layers[1].mlp.up_proj = Quantized(old.in_features, old.out_features, bias=False)
    assert "not a plain nn.Linear" in why_not(other)
    eager = copy.deepcopy(model)
    eager.config._attn_implementation = "eager"
    assert "eager" in why_not(eager)
    half = copy.deepcopy(model).to(torch.float16)
    assert "float16" in why_not(half)
    dropping = copy.deepcopy(model)
    dropping.config.attention_dropout = 0.1
    assert why_not(dropping) is None  # eval mode: transformers applies no attention dropout either
    assert "dropout" in why_not(dropping.train())


@pytest.mark.slow
def test_greedy_tokens_of_the_real_model_unchanged_in_bf16():
    """SmolLM2 in bf16, verifier-style shared prefix and padded rows: the kit's step writes what the model's
    forward writes."""
    model, tok = load_model("smollm2-135m-instruct", dtype="bfloat16", device="cpu")
    rows = _rows(tok, SYSTEM) + _rows(tok)
    stop = sampling._stop_ids(model, tok)
    with torch.inference_mode():
        a, b = (decode(model, rows, max_new_tokens=32, stop_ids=stop, pad_id=sampling._pad_id(tok, stop),
                       own_step=o) for o in (True, False))
    assert a == b
