"""The kit's decode loop (sinternal_lib/decoding.py) against transformers' `generate` and the model's own
next-token distribution: same greedy tokens, same sampling distribution, rows leave the batch correctly."""

from __future__ import annotations

import pytest
import torch

from sinternal_lib import decoding, sampling
from sinternal_lib.decoding import MIN_SAVED, common_prefix_len, decode, shared_prefix_len
from sinternal_lib.models import load_model, tiny_model

SYSTEM = "You check answers against a written safety specification. " * 6  # a long shared prefix
PROMPTS = ["Hi", "What is the capital of France? Answer in one sentence.", "How do I bake bread?",
           "Explain photosynthesis to a ten year old, with an example from a garden.", "2+2?"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def _rows(tok, system=None):
    return [sampling._encode(tok, p, system) for p in PROMPTS]


def _hf_greedy(model, tok, rows, n):
    """transformers' own greedy generate on a left-padded batch (the reference)."""
    stop = sampling._stop_ids(model, tok)
    pad = sampling._pad_id(tok, stop)
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             pad_token_id=pad, eos_token_id=sorted(stop), temperature=None, top_p=None, top_k=None)
    res = []
    for row in out[:, width:].tolist():
        cut = next((j for j, t in enumerate(row) if t in stop), None)
        res.append((row, False) if cut is None else (row[:cut], True))
    return res


def _kit(model, tok, rows, n, **kw):
    stop = sampling._stop_ids(model, tok)
    with torch.inference_mode():
        return decode(model, rows, max_new_tokens=n, stop_ids=stop, pad_id=sampling._pad_id(tok, stop), **kw)


def test_common_prefix_len():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # each row keeps one token of its own
    assert common_prefix_len([[1, 2, 3]]) == 0
    assert common_prefix_len([[7, 2], [1, 2]]) == 0


def test_a_prefix_is_shared_only_where_it_saves_enough():
    rows = [[1] * 24 + [k] for k in range(3)]  # 24 tokens shared by 3 rows: 48 tokens saved
    assert shared_prefix_len(rows) == 24 and MIN_SAVED <= 48
    assert shared_prefix_len(rows[:2]) == 0  # 24 saved
    assert shared_prefix_len(rows[:2], min_saved=24) == 24
    assert shared_prefix_len([[5, 1], [6, 1]], min_saved=0) == 0  # nothing in common


@pytest.mark.parametrize("min_saved", [MIN_SAVED, 10**9])
def test_greedy_matches_generate_on_tiny_model(tiny, min_saved):
    model, tok = tiny
    rows = _rows(tok, SYSTEM)
    assert bool(shared_prefix_len(rows, min_saved)) == (min_saved == MIN_SAVED)  # with and without the split
    assert _kit(model, tok, rows, 12, min_saved=min_saved) == _hf_greedy(model, tok, rows, 12)


def test_finished_rows_leave_the_batch_without_changing_the_others(tiny):
    model, tok = tiny
    rows = _rows(tok)
    alone = [_kit(model, tok, [r], 10)[0] for r in rows]
    # Make every odd row stop at once: its first greedy token becomes a stop token.
    stop = {alone[i][0][0] for i in (1, 3)}
    with torch.inference_mode():
        batch = decode(model, rows, max_new_tokens=10, stop_ids=stop, pad_id=0)
    for i in (1, 3):
        assert batch[i] == ([], True)
    for i in (0, 2, 4):
        ids = alone[i][0]
        cut = next((j for j, t in enumerate(ids) if t in stop), None)
        assert batch[i][0] == (ids if cut is None else ids[:cut])


def test_sampling_follows_the_models_distribution(tiny):
    """First sampled token over many rows vs the softmax of the model's logits (temperature 2, top-p 1)."""
    model, tok = tiny
    row = sampling._encode(tok, "Hello there", None)
    with torch.inference_mode():
        probs = (model(input_ids=torch.tensor([row])).logits[0, -1].float() / 2.0).softmax(-1)
    n = 4000
    got = _kit(model, tok, [row] * n, 1, do_sample=True, temperature=2.0, top_p=1.0, seed=3)
    counts = torch.bincount(torch.tensor([g[0][0] for g in got if g[0]]), minlength=probs.numel()).float()
    top = probs.topk(20).indices
    # Each of the 20 likeliest tokens within 5 standard errors of its expected count.
    se = (n * probs[top] * (1 - probs[top])).sqrt()
    assert torch.all((counts[top] - n * probs[top]).abs() <= 5 * se + 1)


def test_top_p_never_samples_outside_the_nucleus(tiny):
    model, tok = tiny
    row = sampling._encode(tok, "Hello there", None)
    with torch.inference_mode():
        probs = model(input_ids=torch.tensor([row])).logits[0, -1].float().softmax(-1)
    sp, idx = probs.sort(descending=True)
    nucleus = set(idx[: int((sp.cumsum(0) < 0.3).sum()) + 1].tolist())
    got = _kit(model, tok, [row] * 500, 1, do_sample=True, temperature=1.0, top_p=0.3, seed=1)
    assert {g[0][0] for g in got if g[0]} <= nucleus


@pytest.mark.parametrize("scale", [8.0, 3.0, 0.5])  # peaked (nucleus in the top 256), wider, near-flat (full sort)
def test_fast_top_p_keeps_the_warpers_nucleus_and_its_weights(scale):
    """`_sample_top_p` (top-k first) draws from the same words, in the same proportions, as the full-sort
    warper: every draw lies in the nucleus, and the likeliest words come up at their renormalised rates."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 8192, generator=gen) * scale
    filtered = decoding._top_p_full(logits, 0.9)
    probs = filtered.softmax(-1)
    n = 2000
    draws = decoding._sample_top_p(logits.repeat_interleave(n, 0), 0.9, gen).view(2, n)
    for r in range(2):
        assert torch.isfinite(filtered[r, draws[r]]).all()  # never outside the nucleus
        counts = torch.bincount(draws[r], minlength=logits.shape[1]).float()
        top = probs[r].topk(5).indices
        se = (n * probs[r, top] * (1 - probs[r, top])).sqrt()
        assert torch.all((counts[top] - n * probs[r, top]).abs() <= 5 * se + 1)


def test_draw_never_picks_a_word_of_zero_mass():
    gen = torch.Generator().manual_seed(1)
    probs = torch.zeros(4, 100)
    probs[:, [3, 50, 99]] = torch.tensor([0.2, 0.5, 0.3])
    probs[3, 99] = 0.0  # the last word empty: u at the very top must not land on it
    got = decoding._draw(probs.repeat(2000, 1), gen).view(2000, 4)
    assert set(got[:, :3].unique().tolist()) == {3, 50, 99}
    assert set(got[:, 3].unique().tolist()) == {3, 50}


def test_sampling_is_reproducible_from_the_seed(tiny):
    model, tok = tiny
    rows = _rows(tok)
    a = _kit(model, tok, rows, 8, do_sample=True, temperature=1.0, top_p=0.95, seed=5)
    assert a == _kit(model, tok, rows, 8, do_sample=True, temperature=1.0, top_p=0.95, seed=5)
    assert a != _kit(model, tok, rows, 8, do_sample=True, temperature=1.0, top_p=0.95, seed=6)


@pytest.mark.slow
def test_greedy_verdicts_unchanged_on_the_real_model():
    """SmolLM2 with the verifier-style shared prefix: the kit's loop writes what `generate` writes."""
    model, tok = load_model("smollm2-135m-instruct", dtype="float32", device="cpu")
    rows = _rows(tok, SYSTEM)
    assert _kit(model, tok, rows, 32) == _hf_greedy(model, tok, rows, 32)


def test_decoding_passes_the_cache_under_the_current_name(tiny):
    """No deprecation warning from the model's forward (it printed once per notebook cell)."""
    import warnings

    model, tok = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _kit(model, tok, _rows(tok, SYSTEM), 4)


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_reserved_cache_writes_what_the_concatenated_cache_writes(tiny, system):
    """The reserved KV cache (the default) changes where keys live, not the arithmetic: greedy and seeded sampling
    give the same tokens as transformers' concatenating cache, with rows leaving the batch on the way."""
    model, tok = tiny
    rows = _rows(tok, system)
    stop = {_kit(model, tok, [rows[1]], 3)[0][0][2]}  # some rows stop early: the reserved buffers are re-indexed
    for kw in ({}, {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "seed": 3}):
        with torch.inference_mode():
            a, b = (decode(model, rows, max_new_tokens=12, stop_ids=stop, pad_id=0, reserve_cache=r, **kw)
                    for r in (True, False))
        assert a == b
        assert kw or a[1][1]  # greedy: row 1 stops at its third token, as alone


def test_reserved_layer_grows_past_its_room(tiny):
    from transformers import DynamicCache

    from sinternal_lib.decoding import reserve

    model, _ = tiny
    g = torch.Generator().manual_seed(0)
    kv = [torch.randn(2, 2, 5, 16, generator=g) for _ in range(2)]
    steps = [[torch.randn(2, 2, 1, 16, generator=g) for _ in range(2)] for _ in range(4)]
    plain, res = DynamicCache(config=model.config), DynamicCache(config=model.config)
    for c in (plain, res):
        c.update(*kv, layer_idx=0)
    reserve(res, 2)  # room for 2 steps, then a new buffer with 2 more, then another
    for k, v in steps:
        want, got = plain.update(k, v, layer_idx=0), res.update(k, v, layer_idx=0)
        assert all(torch.equal(x, y) for x, y in zip(want, got))
    res.batch_select_indices(torch.tensor([1]))
    plain.batch_select_indices(torch.tensor([1]))
    assert torch.equal(res.layers[0].keys, plain.layers[0].keys) and res.get_seq_length() == 9


def test_packed_weights_write_what_f_linear_writes(tiny):
    """Packed Linear weights (the default on a CPU) change how oneDNN reads the weights, not the tokens."""
    model, tok = tiny
    rows = _rows(tok, SYSTEM)
    for kw in ({}, {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "seed": 3}):
        a, b = (_kit(model, tok, rows, 12, packed=p, **kw) for p in (True, False))
        assert a == b


@pytest.mark.slow
def test_packed_weights_keep_greedy_outputs_of_the_real_model_in_bf16():
    """SmolLM2 in bf16 (what `auto` picks on an AVX512-BF16 CPU), verifier-style shared prefix: packed and
    unpacked weights give the same greedy tokens."""
    model, tok = load_model("smollm2-135m-instruct", dtype="bfloat16", device="cpu")
    rows = _rows(tok, SYSTEM)
    assert _kit(model, tok, rows, 32, packed=True) == _kit(model, tok, rows, 32, packed=False)


def test_repeated_rows_are_prefilled_once_and_still_sampled_apart(tiny):
    """GRPO rolls out each prompt several times and the stages sample each prompt several times: a repeated
    row reuses the first one's prefill. Greedy: every copy writes what its row writes alone in the batch of
    distinct rows. Sampling: the copies still draw their own tokens."""
    model, tok = tiny
    a, b, c = _rows(tok)[:3]
    calls = []
    hook = model.register_forward_pre_hook(lambda _m, args, kw: calls.append(kw["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        out = _kit(model, tok, [a, b, a, a, c, b], 6)
    finally:
        hook.remove()
    assert [n for n in calls if n > 1] == [3]  # the prefill saw the three distinct rows (a shared prefix at batch 1)
    alone = _kit(model, tok, [a, b, c], 6)
    assert out == [alone[0], alone[1], alone[0], alone[0], alone[2], alone[1]]
    sampled = _kit(model, tok, [a] * 6, 10, do_sample=True, temperature=1.0, top_p=1.0, seed=0)
    assert len({tuple(ids) for ids, _ in sampled}) > 1
