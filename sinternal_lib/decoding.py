"""The kit's decode loop: batched generation that stops paying for a row as soon as it is done and computes
a prompt prefix shared by the whole batch once.

Why not `model.generate`: on a 2-core CPU it kept decoding finished rows to the batch's longest one and
recomputed the verifier's shared spec prompt for every row (profile and before/after figures: docs/LOG.md,
2026-12-05, where generation time goes). This loop does the same arithmetic otherwise:

- prefill each distinct row once (a repeated row gets a copy of its KV cache rows) left-padded
  (`[pad][prompt]`), or, when every row starts with the same tokens and sharing them saves at least
  `min_saved` tokens of prefill (`shared_prefix_len`), prefill that prefix once at batch 1, repeat its KV
  cache across the batch, then prefill the rows' own suffixes laid out `[prefix][pad][suffix]` (position ids
  from the attention mask, so each row sees the positions it would see unpadded);
- each step: last-position logits in fp32, greedy argmax or temperature + nucleus (top-p) sampling with a
  seeded `torch.Generator`; rows that emit a stop token leave the batch (their KV rows are dropped);
- the KV cache gets room for up to `RESERVE_ROOM` more positions after the prefill, and again when full, so a
  step writes its keys and values in place (transformers' dynamic cache copies the whole cache every step);
- on a CPU the model's Linear layers run on weights packed once for oneDNN (`packed_linear.py`) instead of
  being reordered at every call, and the steps after the prefill of a Llama-family model go through the
  kit's own decode step (`decode_step.py`) instead of the model's forward; when sampling, that step's
  attention and elementwise ops run in native kernels (`native_kernels.py`) where a C compiler builds them.

Greedy outputs match `model.generate` up to floating-point reassociation (a test compares them);
sampling matches it in distribution, not token for token (a different random stream, and the native kernels'
last bits).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Sequence

import torch

from .decode_step import DecodeStep, decode_step_for
from .packed_linear import packed_linears

__all__ = ["decode", "prefill", "reserve", "common_prefix_len", "shared_prefix_len", "MIN_SAVED"]

# A split prefill pays for its extra batch-1 forward from about 48 prompt tokens saved (SmolLM2, bf16 and fp32 on a
# CPU, 2-16 rows sharing 24 tokens: docs/LOG.md, 2026-12-07, session 16).
MIN_SAVED = 48


def common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all rows share (at most the shortest row minus one, so every row keeps
    at least one token of its own for the prefill)."""
    if len(rows) < 2:
        return 0
    first, limit = rows[0], min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def shared_prefix_len(rows: Sequence[Sequence[int]], min_saved: int = MIN_SAVED) -> int:
    """The prefix `prefill` computes once for distinct `rows`: their common prefix where computing it once saves
    at least `min_saved` tokens (prefix length x (rows - 1)), else 0."""
    p = common_prefix_len(rows)
    return p if p and p * (len(rows) - 1) >= min_saved else 0


def _cache_kwarg(model: Any) -> str:
    """The forward argument that takes the KV cache: transformers 5.25 renamed `past_key_values` to `cache`
    and warns on the old name (once per cell in a notebook); older 5.x releases know only the old one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper passes it on
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


# Candidate counts tried in turn for the nucleus, then the full sort: a top-k of 256 costs ~3 ms for 8 rows
# x 49k words, of 4,096 ~8 ms, a full sort ~35 ms (one core); see docs/LOG.md (2026-12-06, the sampler held
# sampling back).
TOP_P_KS = (256, 4096)


def _draw(probs: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One index per row from unnormalised `probs` by the inverse CDF: one uniform per row, where
    `torch.multinomial` draws one per vocabulary entry (a whole sampling step at batch 32 x 49k words, softmax
    included: 12 ms vs 70 ms on one core)."""
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=gen, device=probs.device, dtype=cdf.dtype) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u < total: a token of mass > 0
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


def _top_p_full(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' TopPLogitsWarper: drop the tail whose mass is <= 1 - top_p (a full sort per row)."""
    sorted_logits, idx = logits.sort(-1, descending=False)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum <= 1 - top_p
    drop[:, -1] = False  # always keep the most likely token
    return logits.masked_fill(drop.scatter(1, idx, drop), float("-inf"))


def _sample_top_p(logits: torch.Tensor, top_p: float, gen: torch.Generator | None) -> torch.Tensor:
    """A draw from the top-p nucleus, the same set as `_top_p_full`, sorting only the top k words of a row
    where its nucleus lies within them (k from `TOP_P_KS`; rows whose nucleus is wider take the full sort)."""
    tok = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    rows = torch.arange(logits.shape[0], device=logits.device)
    lse = logits.logsumexp(-1, keepdim=True)
    for k in TOP_P_KS:
        if k >= logits.shape[-1] or len(rows) == 0:
            break
        whole = len(rows) == logits.shape[0]  # indexing copies the [rows, vocab] logits (~1.5 ms at batch 32)
        vals, idx = (logits if whole else logits[rows]).topk(k, -1)  # descending
        p = (vals - (lse if whole else lse[rows])).exp()
        cum = p.cumsum(-1)
        # descending order: a word is kept while the mass above it is < top_p (the warper's rule, read upwards)
        keep = (cum - p) < top_p
        keep[:, 0] = True
        inside = cum[:, -1] >= top_p  # the whole nucleus lies in the top k
        if inside.any():
            pick = _draw((p * keep)[inside], gen)
            tok[rows[inside]] = idx[inside].gather(1, pick[:, None]).squeeze(1)
        rows = rows[~inside]
    if len(rows):
        tok[rows] = _draw(_top_p_full(logits[rows], top_p).softmax(-1), gen)
    return tok


def _next_tokens(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
                 gen: torch.Generator | None) -> torch.Tensor:
    logits = logits.float()
    if not do_sample:
        return logits.argmax(-1)
    if temperature != 1.0:  # a [batch, vocab] copy: ~1 ms of a 60-70 ms step at batch 32 (profile, LOG session 15)
        logits = logits / temperature
    if top_p < 1.0:
        return _sample_top_p(logits, top_p, gen)
    return _draw(logits.softmax(-1), gen)


RESERVE_ROOM = 128  # positions reserved at a time: at most this many unused per row (long GPU generations)


def _grown(t: torch.Tensor, n: int, size: int) -> torch.Tensor:
    out = t.new_empty(*t.shape[:2], size, t.shape[-1])
    out[:, :, :n] = t[:, :, :n]
    return out


@functools.cache
def _reserved_layer_class() -> type:
    """transformers' `DynamicLayer` with its keys and values in a reserved buffer (`_reserved_layer`); built on
    first use so that importing this module does not import transformers. A subclass: transformers finds attention
    layers by type."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        _room: int  # positions added each time the buffer is full

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            m = key_states.shape[-2]
            if self._n + m > self._k.shape[-2]:  # past the room: a new buffer with `room` more positions
                self._k, self._v = (_grown(t, self._n, self._n + m + self._room) for t in (self._k, self._v))
            self._k[:, :, self._n:self._n + m] = key_states
            self._v[:, :, self._n:self._n + m] = value_states
            self._n += m
            self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]

        def crop(self, tokens_to_remove: int) -> None:  # never called by decode; the buffer would not follow
            raise NotImplementedError("a reserved decode cache is not cropped")

    return ReservedLayer


def _reserved_layer(layer: Any, room: int) -> Any:
    """A copy of a prefilled transformers `DynamicLayer` whose keys and values live in a buffer with `room` more
    positions: `update` writes the step's keys and values in place and returns views of the filled part, where
    `DynamicLayer` concatenates (a copy of the layer's whole cache every step). When full, it moves to a buffer
    with `room` more positions (one copy per `room` steps)."""
    new = _reserved_layer_class()()
    new.__dict__.update(layer.__dict__)
    n = layer.keys.shape[-2]
    new._k, new._v = _grown(layer.keys, n, n + room), _grown(layer.values, n, n + room)
    new._n, new._room = n, room
    new.keys, new.values = new._k[:, :, :n], new._v[:, :, :n]
    return new


def reserve(cache: Any, room: int) -> None:
    """Give every prefilled layer of a transformers `DynamicCache` a buffer with `room` more positions
    (`_reserved_layer`); layers of other kinds (sliding windows) are left as they are."""
    from transformers.cache_utils import DynamicLayer

    cache.layers = [_reserved_layer(lay, room) if type(lay) is DynamicLayer and lay.is_initialized
                    and lay.keys is not None and lay.keys.numel() else lay for lay in cache.layers]


def prefill(model: Any, rows: Sequence[Sequence[int]], *, pad_id: int, min_saved: int = MIN_SAVED
            ) -> tuple[Any, dict[str, Any], torch.Tensor, torch.Tensor]:
    """Run the prompts of a batch through `model` once: (KV cache, its call kwarg, attention mask, last-position
    logits `[batch, vocab]`). A prefix shared by every row is computed once at batch 1 where that saves
    `>= min_saved` tokens (`shared_prefix_len`), and rows that repeat an earlier row (GRPO's group of rollouts
    per prompt, a stage's samples per prompt) are computed once and their cache rows copied (module docstring).
    Call under `torch.inference_mode()`."""
    from transformers import DynamicCache

    first: dict[tuple[int, ...], int] = {}
    which = [first.setdefault(tuple(r), len(first)) for r in rows]
    if len(first) < len(rows):
        cache, kv, mask, logits = prefill(model, [list(r) for r in first], pad_id=pad_id, min_saved=min_saved)
        idx = torch.tensor(which, dtype=torch.long, device=mask.device)
        cache.batch_select_indices(idx)
        return cache, kv, mask[idx], logits[idx]
    device = next(model.parameters()).device
    b = len(rows)
    p = shared_prefix_len(rows, min_saved)
    cache = DynamicCache(config=model.config)
    kv = {_cache_kwarg(model): cache}
    if p:  # the shared prefix once, at batch 1, then repeated across the batch
        pre = torch.tensor([list(rows[0][:p])], dtype=torch.long, device=device)
        model(input_ids=pre, **kv, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(b)
    suffix = [list(r[p:]) for r in rows]
    width = max(len(s) for s in suffix)
    ids = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((b, p + width), dtype=torch.long, device=device)
    mask[:, :p] = 1
    for i, s in enumerate(suffix):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long, device=device)
        mask[i, p + width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, p:]
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kv, use_cache=True,
                logits_to_keep=1)
    return cache, kv, mask, out.logits[:, -1, :]


def decode(model: Any, rows: Sequence[Sequence[int]], *, max_new_tokens: int, stop_ids: set[int], pad_id: int,
           do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
           min_saved: int = MIN_SAVED, keep_stop: bool = False, reserve_cache: bool = True,
           packed: bool = True, own_step: bool = True, native: bool = True) -> list[tuple[list[int], bool]]:
    """Generate for a batch of token-id rows; returns (new ids, stopped) per row.

    `stopped` is False when the row ran to `max_new_tokens`. The stop token is left out of the ids unless
    `keep_stop` (TRL's GRPO completions end with it, and it counts towards `max_new_tokens` there as here).
    `reserve_cache` writes each step's keys and values into a buffer reserved after the prefill (`reserve`)
    instead of concatenating; outputs are the same (docs/LOG.md, 2026-12-06, session 11).
    `packed` runs the model's Linear layers on oneDNN-packed weights on a CPU (`packed_linear`; same tokens,
    docs/LOG.md, 2026-12-06, session 14).
    `own_step` runs the steps after the prefill through the kit's decode step (`decode_step.py`: fused packed
    matmuls, no module machinery) where the model is one it knows and `packed` is on; otherwise, and with it
    off, each step calls the model's forward (same tokens, docs/LOG.md, 2026-12-07, session 15).
    `native` lets that step run its attention, norms and elementwise ops in the kit's native kernels
    (`native_kernels.py`) when sampling, where they build on this machine: the same distribution, not the same
    bits (1.3x a bf16 step of SmolLM2 at batch 32, docs/LOG.md, 2026-12-07, session 17). Greedy decoding never
    takes them, so verdicts stay those of the model's forward.
    Call under `torch.inference_mode()` or `torch.no_grad()`.
    """
    with packed_linears(model, enabled=packed):
        return _decode(model, rows, max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id,
                       do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed, min_saved=min_saved,
                       keep_stop=keep_stop, reserve_cache=reserve_cache,
                       step=decode_step_for(model, native=native and do_sample) if packed and own_step else None)


def _decode(model: Any, rows: Sequence[Sequence[int]], *, max_new_tokens: int, stop_ids: set[int], pad_id: int,
            do_sample: bool, temperature: float, top_p: float, seed: int | None, min_saved: int, keep_stop: bool,
            reserve_cache: bool, step: DecodeStep | None) -> list[tuple[list[int], bool]]:
    device = next(model.parameters()).device
    b = len(rows)
    gen = None
    if do_sample:
        gen = torch.Generator(device=device)
        gen.manual_seed(0 if seed is None else seed)
    cache, kv, mask, logits = prefill(model, rows, pad_id=pad_id, min_saved=min_saved)
    if reserve_cache:
        reserve(cache, min(max_new_tokens, RESERVE_ROOM))
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    active = list(range(b))  # original row index of each live batch row
    new: list[list[int]] = [[] for _ in range(b)]
    stopped = [False] * b
    for i in range(max_new_tokens):
        tok = _next_tokens(logits, do_sample, temperature, top_p, gen)
        done = torch.isin(tok, stop) if len(stop) else torch.zeros_like(tok, dtype=torch.bool)
        for j, (t, d) in enumerate(zip(tok.tolist(), done.tolist())):
            if d:
                stopped[active[j]] = True
                if keep_stop:
                    new[active[j]].append(t)
            else:
                new[active[j]].append(t)
        if i == max_new_tokens - 1:
            break
        keep = (~done).nonzero().squeeze(1)
        if len(keep) == 0:
            break
        if len(keep) < len(active):  # finished rows leave the batch: no more compute for them
            cache.batch_select_indices(keep)
            mask, tok = mask[keep], tok[keep]
            active = [active[j] for j in keep.tolist()]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        pos = mask.sum(-1, keepdim=True) - 1
        if step is not None:
            logits = step(tok, pos, mask, cache)
        else:
            logits = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, **kv,
                           use_cache=True).logits[:, -1, :]
    return [(new[i], stopped[i]) for i in range(b)]
