"""The native decode kernels (sinternal_lib/native_kernels.py, decode_kernels.c): each kernel against torch's ops,
the decode step with them against the step without, sampling's distribution on the real model, and how the
build behaves when it cannot be had (no compiler, a failing one, the switch off)."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

from sinternal_lib import native_kernels, sampling
from sinternal_lib.decode_step import _rotary, decode_step_for
from sinternal_lib.decoding import decode, prefill, reserve
from sinternal_lib.models import load_model
from sinternal_lib.packed_linear import packed_linears, packing_available

from test_decode_step import _after_prefill, assert_same_step, biased_qwen2
from test_decoding import SYSTEM, _rows, tiny  # noqa: F401  (prompts and the tiny-model fixture of the loop's tests)

DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module")
def kernels():
    k = native_kernels.load()
    if k is None:
        pytest.skip(f"native kernels unavailable here: {native_kernels.why_not()} (they need a C compiler, `cc`)")
    return k


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and a forgotten load state; restored after the test."""
    monkeypatch.setenv("SINTERNAL_KERNEL_CACHE", str(tmp_path / "kernels"))
    native_kernels.reset()
    yield tmp_path / "kernels"
    native_kernels.reset()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grp,d", [(3, 64), (1, 128), (7, 128), (2, 32)])
def test_attention_matches_sdpa(kernels, dtype, grp, d):
    """Queries at a row stride (inside the fused projection's output), keys and values in a reserved buffer with
    room after them, padding at the start and in the middle (a split shared prefix), one row fully visible."""
    g = torch.Generator().manual_seed(grp * d)
    b, kvh, t = 4, 2, 37
    qkv = torch.randn(b, (kvh * grp + 2 * kvh) * d, generator=g).to(dtype)
    keys, values = (torch.randn(b, kvh, t + 9, d, generator=g).to(dtype)[:, :, :t] for _ in range(2))
    mask = torch.ones(b, t, dtype=torch.uint8)
    mask[0, :5] = 0
    mask[2, 10:14] = 0
    out = torch.empty(b, kvh * grp * d, dtype=dtype)
    kernels.kernel("attn", dtype)(qkv.data_ptr(), keys.data_ptr(), values.data_ptr(), mask.data_ptr(), out.data_ptr(),
                                  b, kvh, grp, d, t, qkv.stride(0), *keys.stride()[:3], 0.3)
    q = qkv[:, :kvh * grp * d].float().view(b, kvh, grp, d)
    want = F.scaled_dot_product_attention(q, keys.float(), values.float(), attn_mask=mask.bool()[:, None, None, :],
                                          scale=0.3).reshape(b, -1)
    torch.testing.assert_close(out.float(), want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_add_and_norm(kernels, dtype):
    g = torch.Generator().manual_seed(1)
    x, delta = (torch.randn(5, 96, generator=g).to(dtype) for _ in range(2))
    w = torch.randn(96, generator=g).to(dtype)
    want_x = x + delta
    h = want_x.float()
    want = w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)  # transformers' LlamaRMSNorm
    normed = torch.empty_like(x)
    kernels.kernel("add_rms", dtype)(x.data_ptr(), delta.data_ptr(), w.data_ptr(), normed.data_ptr(), 5, 96, 1e-6)
    assert torch.equal(x, want_x)  # the residual stream is rounded as the eager add rounds it
    torch.testing.assert_close(normed, want, atol=TOL[dtype], rtol=TOL[dtype])
    again = torch.empty_like(x)
    kernels.kernel("add_rms", dtype)(x.data_ptr(), None, w.data_ptr(), again.data_ptr(), 5, 96, 1e-6)  # no delta
    assert torch.equal(x, want_x) and torch.equal(again, normed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_matches_the_eager_op(kernels, dtype):
    """bf16 products of bf16 numbers are exact in fp32, so the rounding of each product and of the sum is the
    eager op's: bit for bit in bf16."""
    g = torch.Generator().manual_seed(2)
    b, n, d = 3, 5, 64
    x = torch.randn(b, n * d + 40, generator=g).to(dtype)  # n heads, then columns it must leave alone
    cos, sin = (torch.randn(b, d, generator=g).to(dtype) for _ in range(2))
    want = _rotary(x[:, :n * d].view(b, n, 1, d), cos[:, None, None], sin[:, None, None]).reshape(b, -1)
    tail = x[:, n * d:].clone()
    kernels.kernel("rotary", dtype)(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), b, n, d, x.stride(0))
    if dtype == torch.bfloat16:
        assert torch.equal(x[:, :n * d], want)
    torch.testing.assert_close(x[:, :n * d], want, atol=1e-6, rtol=1e-6)
    assert torch.equal(x[:, n * d:], tail)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_gate(kernels, dtype):
    gu = (torch.randn(6, 2 * 200, generator=torch.Generator().manual_seed(3)) * 6).to(dtype)  # exp's whole range
    act = torch.empty(6, 200, dtype=dtype)
    kernels.kernel("silu_mul", dtype)(gu.data_ptr(), act.data_ptr(), 6, 200)
    torch.testing.assert_close(act.float(), (F.silu(gu[:, :200]) * gu[:, 200:]).float(), atol=TOL[dtype],
                               rtol=TOL[dtype])


def _step_native_and_not(model, rows):
    """One decode step after a prefill through the kit's step with and without the kernels, each on its own copy
    of the cache: (torch logits, native logits, torch cache, native cache)."""
    with torch.inference_mode(), packed_linears(model):
        _, tok, pos, mask, c1, c2 = _after_prefill(model, rows)
        plain, native = decode_step_for(model), decode_step_for(model, native=True)
        assert not plain.native and native.native
        return plain(tok, pos, mask, c1), native(tok, pos, mask, c2), c1, c2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padded", [True, False])
def test_the_step_with_kernels_gives_the_steps_logits_and_cache(kernels, tiny, dtype, padded):
    if not packing_available(dtype):
        pytest.skip(f"no {dtype} packing in this build")
    model, tok = tiny
    model = copy.deepcopy(model).to(dtype)
    rows = _rows(tok, SYSTEM) if padded else [_rows(tok)[1]] * 3
    assert_same_step(*_step_native_and_not(model, rows), tol=TOL[dtype])


def test_the_step_with_kernels_runs_biases_and_lora(kernels, tiny):
    """Qwen2's biased query/key/value projections, and an unmerged LoRA (stage 05's checkpoints)."""
    from peft import LoraConfig, get_peft_model

    qwen = biased_qwen2(hidden_size=128)  # head dim 32
    want, got, *_ = _step_native_and_not(qwen, [[5, 6, 7, 8, 9], [11, 12, 13], [20, 21, 22, 23]])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    model, tok = tiny
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                           target_modules=["q_proj", "v_proj", "down_proj"])).eval()
    want, got, *_ = _step_native_and_not(lora, _rows(tok, SYSTEM))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_decode_takes_the_kernels_for_sampling_only(kernels, tiny, monkeypatch):
    """Greedy decoding (verdicts) never takes them; sampling does, and rows leaving the batch keep their tokens."""
    model, tok = tiny
    rows = _rows(tok, SYSTEM)
    stop = sampling._stop_ids(model, tok)
    taken = []
    orig = native_kernels.Kernels.kernel

    def counting(self, name, dtype):  # a spy on the real kernel lookup: records, then does the real thing
        taken.append(name)
        return orig(self, name, dtype)

    monkeypatch.setattr(native_kernels.Kernels, "kernel", counting)
    with torch.inference_mode():
        greedy = decode(model, rows, max_new_tokens=8, stop_ids=stop, pad_id=0)
        assert not taken and greedy == decode(model, rows, max_new_tokens=8, stop_ids=stop, pad_id=0, native=False)
        kw = dict(max_new_tokens=12, stop_ids={_rows(tok)[0][-1]}, pad_id=0, do_sample=True, temperature=1.0,
                  top_p=0.9, seed=3)
        a = decode(model, rows, **kw)
        assert taken
        b = decode(model, rows, **kw, native=False)
    # fp32 logits agree to ~1e-6: a seeded draw lands on the same token unless it falls that close to a boundary
    assert sum(x == y for x, y in zip(a, b)) >= len(rows) - 1


@pytest.mark.slow
def test_sampling_distribution_unchanged_on_the_real_model(kernels):
    """SmolLM2, chat prompts, teacher-forced on one token sequence: the next-token distributions of bf16 with the
    kernels are as far from fp32's as bf16 without them (total variation), and fp32 with them is fp32 without."""
    m16, tok = load_model("smollm2-135m-instruct", dtype="bfloat16", device="cpu")
    m32, _ = load_model("smollm2-135m-instruct", dtype="float32", device="cpu")
    rows = [sampling._encode(tok, p, None) for p in ("Hi", "How do I bake bread?", "Name three rivers.",
                                                      "Write a haiku about rain.", "What is 17 x 3?")]

    def probs(model, native, forced=None, n=16):
        with torch.inference_mode(), packed_linears(model):
            step = decode_step_for(model, native=native)
            cache, kv, mask, logits = prefill(model, rows, pad_id=0)
            reserve(cache, n)
            toks, out = [], []
            for i in range(n):
                t = logits.argmax(-1) if forced is None else forced[:, i]
                toks.append(t)
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
                logits = step(t, mask.sum(-1, keepdim=True) - 1, mask, cache)
                out.append(logits.float().softmax(-1))
        return torch.stack(toks, 1), torch.stack(out, 1)

    forced, ref = probs(m32, False)
    tv = {name: 0.5 * (p - ref).abs().sum(-1) for name, p in (
        ("bf16", probs(m16, False, forced)[1]), ("bf16 kernels", probs(m16, True, forced)[1]),
        ("fp32 kernels", probs(m32, True, forced)[1]))}
    assert tv["bf16 kernels"].mean() <= 1.25 * tv["bf16"].mean() + 1e-3, {k: v.mean().item() for k, v in tv.items()}
    assert tv["fp32 kernels"].max() < 1e-3, tv["fp32 kernels"].max()


def test_the_switch_turns_them_off(fresh, monkeypatch, tiny):
    monkeypatch.setenv(native_kernels.ENV_SWITCH, "off")
    assert native_kernels.load() is None and native_kernels.ENV_SWITCH in native_kernels.why_not()
    assert native_kernels.status().startswith("torch ops")
    model, tok = tiny
    assert not decode_step_for(model, native=True).native  # sampling then runs on torch's ops
    with torch.inference_mode():
        assert decode(model, _rows(tok), max_new_tokens=4, stop_ids=set(), pad_id=0, do_sample=True, seed=1)


def test_a_failing_or_missing_compiler_leaves_torch_ops_and_no_library(fresh, monkeypatch, tmp_path):
    bad = tmp_path / "badcc"
    bad.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo badcc 1.0; exit 0; fi\n"
                   "echo 'badcc: internal error' >&2\nexit 3\n")
    bad.chmod(0o755)
    monkeypatch.setenv("CC", str(bad))
    assert native_kernels.load() is None
    assert "failed (3)" in native_kernels.why_not() and "internal error" in native_kernels.why_not()
    assert not list(fresh.glob("*.so")) and not list(fresh.glob("*.part"))  # nothing that looks built
    native_kernels.reset()
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert native_kernels.load() is None and "no C compiler" in native_kernels.why_not()


def test_a_build_is_cached_and_a_broken_cached_file_is_rebuilt(fresh, kernels, monkeypatch, tmp_path):
    first = native_kernels.load()
    assert first is not None and first.path.parent == fresh
    stamp = os.stat(first.path).st_mtime_ns
    native_kernels.reset()
    assert native_kernels.load().path == first.path and os.stat(first.path).st_mtime_ns == stamp  # reused
    monkeypatch.setenv("SINTERNAL_KERNEL_CACHE", str(tmp_path / "other"))  # a path this process never loaded
    native_kernels.reset()
    broken = native_kernels.library_path(native_kernels._compiler())
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a shared library")  # e.g. cut short by a full disk under another tool
    again = native_kernels.load()
    assert again is not None and again.path == broken, native_kernels.why_not()
    assert broken.read_bytes()[:4] == b"\x7fELF"


def test_a_norm_in_another_dtype_takes_torch_ops(kernels, tiny):
    """The kernels read each tensor as the step's dtype: a norm kept in fp32 beside bf16 weights must not reach them."""
    model, _ = tiny
    mixed = copy.deepcopy(model).to(torch.bfloat16)
    mixed.model.layers[1].post_attention_layernorm.float()
    with packed_linears(mixed):
        assert decode_step_for(mixed, native=True).native is False
        assert decode_step_for(copy.deepcopy(model).to(torch.bfloat16), native=True).native is True


def test_the_cache_key_names_the_cpu():
    """`-march=native` builds for this CPU: a cache shared by machines must keep one build per CPU kind."""
    ident = native_kernels._cpu_identity()
    if os.path.exists("/proc/cpuinfo"):
        assert any(line.startswith(("flags", "Features", "features")) for line in ident.splitlines()[1:]), ident
