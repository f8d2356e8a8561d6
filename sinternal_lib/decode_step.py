"""The kit's own decode step for Llama-family models on a CPU: one new token per row, the model's weights
read through packed, fused matmuls instead of the model's `forward`.

Why: after packed weights (`packed_linear.py`) a decode step of SmolLM2 at batch 32 still spent time on
what surrounds the arithmetic: seven separate projections per layer, the per-call work of transformers'
modules (mask building, output capture, keyword plumbing) and ~1,500 small tensor ops. This step runs the
same arithmetic with the query, key and value projections as one packed matmul and the gate and up
projections as another (121 matmuls a step instead of 211), the mask built once per step and nothing else
around it (figures: docs/LOG.md, 2026-12-07, session 15).

Same arithmetic as transformers 5.25's Llama / Qwen2 layers, op for op where it matters for rounding:
RMSNorm in fp32 then cast and scaled as `LlamaRMSNorm`; rotary embedding from the model's own
`rotary_emb` applied as `apply_rotary_pos_emb`; SDPA with the query heads packed onto their key-value head
and the padding mask (transformers' `pack_gqa` path for one query token; the mask in the additive form SDPA
makes of a boolean one, built once per step), or `enable_gqa` with no mask when no row is padded (what
transformers does then); the residual adds and SiLU-gated MLP as the decoder layer does. The fused matmuls
compute each output column as the separate ones do. Tests compare its logits and greedy tokens with the
model's forward.

An unmerged PEFT LoRA (how stage 05 evaluates its checkpoints) runs as PEFT's `lora.Linear` computes it: the
input cast to the adapter's dtype, `B(A(x)) * scaling` added to the base output, the sum cast back; the A
matrices of the fused parts are stacked like their bases.

With `native=True` (the decode loop asks for it when sampling) the attention, norms, rotary embedding, residual adds
and SiLU gate run in the kit's native kernels (`native_kernels.py`, `decode_kernels.c`: three calls per layer
between the packed matmuls) where they build on this machine; they sum in another order than torch's ops, so
their logits differ from the forward's in the last bits and greedy decoding never takes them.

`decode_step_for(model)` returns None, and the decode loop calls the model's forward, for anything this step
does not know: other architectures, 4-bit or other non-plain layers, LoRA variants (DoRA, biases, several
active adapters), attention other than SDPA or with dropout in training mode, sliding windows, a GPU, a torch
build without oneDNN packing. `why_not(model)` says which.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from . import native_kernels
from .packed_linear import _DTYPES, _packed_weight, _run, packing_available

__all__ = ["DecodeStep", "decode_step_for", "why_not"]

ARCHITECTURES = ("llama", "qwen2")

def _plain(m: Any) -> bool:
    return type(m) is torch.nn.Linear  # bitsandbytes and PEFT layers subclass or wrap nn.Linear


def _inner(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper


def _lora(p: Any) -> tuple[torch.nn.Linear, torch.nn.Linear, float] | None | str:
    """(lora_A, lora_B, scaling) of a PEFT LoRA projection the step can run as PEFT does, None for a plain
    Linear, else why not."""
    if _plain(p):
        return None
    base = getattr(p, "base_layer", None)
    if not (_plain(base) and hasattr(p, "lora_A") and hasattr(p, "lora_B")):
        return "a projection is not a plain nn.Linear or a LoRA on one (quantized?)"
    names = list(getattr(p, "active_adapters", ()))
    if getattr(p, "merged", False) or getattr(p, "disable_adapters", False) or len(names) != 1:
        return "a LoRA layer merged, disabled or with other than one active adapter"
    name = names[0]
    if name not in p.lora_A:
        return None  # this projection carries no weights of the active adapter: the base alone, as PEFT
    a, b, drop = p.lora_A[name], p.lora_B[name], p.lora_dropout[name]
    if (name in getattr(p, "lora_variant", {}) or not (_plain(a) and _plain(b)) or a.bias is not None
            or b.bias is not None or a.weight.dtype != b.weight.dtype
            or not getattr(p, "cast_input_dtype_enabled", True)
            or not (isinstance(drop, torch.nn.Identity) or not drop.training)):
        return "a LoRA variant (DoRA, biases, dropout in training) the step does not run"
    return a, b, float(p.scaling[name])


def _base(p: Any) -> torch.nn.Linear:
    return p if _plain(p) else p.base_layer


def why_not(model: Any) -> str | None:
    """Why `model` cannot take the kit's decode step (None when it can)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in ARCHITECTURES:
        return f"architecture {getattr(cfg, 'model_type', None)!r} is not one of {ARCHITECTURES}"
    lm = _inner(model)
    inner = getattr(lm, "model", None)
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) \
            or not _plain(getattr(lm, "lm_head", None)) or type(inner.embed_tokens) is not torch.nn.Embedding:
        return "not a plain causal LM (a replaced head or embedding)"
    if getattr(cfg, "_attn_implementation", None) != "sdpa":
        return f"attention {getattr(cfg, '_attn_implementation', None)!r}, not sdpa"
    if getattr(cfg, "attention_dropout", 0.0) and lm.training:
        return "attention dropout in training mode"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"activation {getattr(cfg, 'hidden_act', None)!r}, not silu"
    if getattr(cfg, "use_sliding_window", False) or any(t != "full_attention" for t in
                                                         getattr(cfg, "layer_types", None) or ()):
        return "sliding-window attention"
    w = lm.lm_head.weight
    if w.device.type != "cpu" or w.dtype not in _DTYPES or not packing_available(w.dtype):
        return f"weights {w.dtype} on {w.device.type}: packing is for bf16 / fp32 on a CPU with oneDNN"
    for layer in inner.layers:
        a, m = layer.self_attn, layer.mlp
        parts = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
        for p in parts:
            lora = _lora(p)
            if isinstance(lora, str):
                return lora
            if lora is not None and (lora[0].weight.dtype not in _DTYPES or lora[0].weight.device != w.device
                                     or not packing_available(lora[0].weight.dtype)):
                return f"LoRA weights {lora[0].weight.dtype} on {lora[0].weight.device.type}"
        if any(_base(p).weight.dtype != w.dtype or _base(p).weight.device != w.device for p in parts):
            return "projections of mixed dtype or device"
        if not all(hasattr(n, "variance_epsilon") for n in (layer.input_layernorm, layer.post_attention_layernorm)):
            return "a norm other than RMSNorm"
    return None


def _stacked_bias(parts: list[torch.nn.Linear]) -> torch.Tensor | None:
    if all(p.bias is None for p in parts):
        return None
    return torch.cat([p.bias.detach() if p.bias is not None else p.weight.new_zeros(p.out_features) for p in parts])


# A projection of the step: (packed weight, bias, LoRA or None). A LoRA: (dtype of its weights, packed A of all
# adapted parts stacked, per part (packed B or None, scaling, output width, rank)).
Proj = tuple[torch.Tensor, "torch.Tensor | None", "tuple | None"]


def _projection(key: torch.nn.Module, parts: list[Any]) -> Proj:
    """The packed projection of `parts` (plain or LoRA Linears), fused along their outputs; a fused weight is kept
    under `key` (a module the packed path never runs itself)."""
    bases = [_base(p) for p in parts]
    w = _packed_weight(key, bases) if len(parts) > 1 else _packed_weight(bases[0])
    loras = [_lora(p) for p in parts]
    adapted = [(p, lo) for p, lo in zip(parts, loras) if lo is not None]
    if not adapted:
        return w, _stacked_bias(bases), None
    first, a = adapted[0]
    a_w = _packed_weight(first.lora_A, [lo[0] for _, lo in adapted]) if len(adapted) > 1 else _packed_weight(a[0])
    pieces = [(None, 0.0, b.out_features, 0) if lo is None else (_packed_weight(lo[1]), lo[2], b.out_features,
                                                                  lo[0].out_features) for b, lo in zip(bases, loras)]
    return w, _stacked_bias(bases), (a[0].weight.dtype, a_w, pieces)


def _project(x: torch.Tensor, proj: Proj) -> torch.Tensor:
    """`x` through a projection: the base, plus each LoRA part as PEFT's `lora.Linear` computes it (input cast to
    the adapter's dtype, `B(A(x)) * scaling` added to the base output, the sum cast back)."""
    w, bias, lora = proj
    out = _run(x, w, bias)
    if lora is None:
        return out
    dtype, a_w, pieces = lora
    a = _run(x.to(dtype), a_w, None)
    deltas, at = [], 0
    for b_w, scaling, width, rank in pieces:
        if b_w is None:
            deltas.append(a.new_zeros((a.shape[0], width)))
        else:
            deltas.append(_run(a[:, at:at + rank].contiguous(), b_w, None) * scaling)
            at += rank
    return (out + (deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=-1))).to(out.dtype)


def _rms(norm: Any, x: torch.Tensor) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def native_why_not(heads: int, kv_heads: int, head_dim: int) -> str | None:
    """Why the native kernels cannot run a model of these attention shapes, or the machine (None when they can)."""
    if head_dim % 16 or head_dim > 256 or heads // kv_heads > 16:
        return (f"head_dim {head_dim} (needs a multiple of 16, <= 256) or {heads // kv_heads} query heads per "
                "key-value head (<= 16)")
    return native_kernels.why_not()


class DecodeStep:
    """One decode step of a supported model (`decode_step_for`), weights packed when built; with `native` its
    non-matmul work in the native kernels where they load (`self.native` says whether they did)."""

    def __init__(self, model: Any, native: bool = False) -> None:
        lm = _inner(model)
        cfg = lm.config
        self.model = lm
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.layers = []
        for layer in lm.model.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((layer.input_layernorm, _projection(a, [a.q_proj, a.k_proj, a.v_proj]), a.scaling,
                                _projection(a.o_proj, [a.o_proj]), layer.post_attention_layernorm,
                                _projection(m, [m.gate_proj, m.up_proj]), _base(m.gate_proj).out_features,
                                _projection(m.down_proj, [m.down_proj])))
        self.head = _packed_weight(lm.lm_head)
        norms = [n for layer in lm.model.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        same = all(t.dtype == self.head.dtype and t.is_contiguous() for t in
                   [n.weight for n in norms + [lm.model.norm]] + [lm.model.embed_tokens.weight])
        # the kernels read every tensor as the step's dtype: a norm kept in fp32 beside bf16 weights takes torch's ops
        self.kernels = native_kernels.load() if native and same and native_why_not(
            self.heads, self.kv_heads, self.head_dim) is None else None

    @property
    def native(self) -> bool:
        return self.kernels is not None

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any
                 ) -> torch.Tensor:
        """Logits `[batch, vocab]` for one new token per row. `tokens` `[batch]`, `positions` `[batch, 1]`,
        `mask` `[batch, cached + 1]` (1 = attend), `cache` the transformers cache of the prefill, which gets
        this step's keys and values. Call under `torch.inference_mode()`."""
        b, h, kvh, d = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        x = self.model.model.embed_tokens(tokens)
        cos, sin = self.model.model.rotary_emb(x[:, None], positions)
        if self.kernels is not None:
            return self._native_step(x, cos.reshape(b, d).contiguous(), sin.reshape(b, d).contiguous(), mask, cache)
        cos, sin = cos[:, None], sin[:, None]
        if bool(mask.all()):  # transformers passes no mask then, and SDPA repeats the key-value heads itself
            attn_mask, q_shape, gqa = None, (b, h, 1, d), True
        else:  # SDPA turns a boolean mask into this one in every call; built once per step here
            attn_mask = x.new_zeros((b, 1, 1, mask.shape[1])).masked_fill_(mask[:, None, None, :] == 0, float("-inf"))
            q_shape, gqa = (b, kvh, h // kvh, d), False
        for i, (n1, qkv_p, scale, o_p, n2, gu_p, inter, down_p) in enumerate(self.layers):
            qkv = _project(_rms(n1, x), qkv_p)
            qk = _rotary(qkv[:, :(h + kvh) * d].view(b, h + kvh, 1, d), cos, sin)  # queries and keys at once
            q, k = qk[:, :h], qk[:, h:]
            keys, values = cache.update(k, qkv[:, (h + kvh) * d:].view(b, kvh, 1, d), i)
            o = F.scaled_dot_product_attention(q.reshape(q_shape), keys, values, attn_mask=attn_mask, scale=scale,
                                               enable_gqa=gqa)
            x = x + _project(o.reshape(b, h * d), o_p)
            gu = _project(_rms(n2, x), gu_p)
            x = x + _project(F.silu(gu[:, :inter]) * gu[:, inter:], down_p)
        return _run(_rms(self.model.model.norm, x), self.head, self.model.lm_head.bias)


    def _native_step(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, cache: Any
                     ) -> torch.Tensor:
        """`__call__` with the native kernels: per layer the residual add and norm, rotary embedding and attention,
        and the SiLU gate each in one call, around the same packed projections. `x` (the embedded tokens) is
        updated in place as the residual stream."""
        b, (h, kvh, d), width = x.shape[0], (self.heads, self.kv_heads, self.head_dim), x.shape[1]
        kern = functools.partial(self.kernels.kernel, dtype=x.dtype)
        add_rms, rotary, attn, silu_mul = (kern(n) for n in ("add_rms", "rotary", "attn", "silu_mul"))
        visible = mask.to(torch.uint8).contiguous()
        normed, stride = torch.empty_like(x), (h + 2 * kvh) * d
        norms = [layer[0] for layer in self.layers[1:]] + [self.model.model.norm]
        add_rms(x.data_ptr(), None, self.layers[0][0].weight.data_ptr(), normed.data_ptr(), b, width,
                self.layers[0][0].variance_epsilon)
        for i, (_, qkv_p, scale, o_p, n2, gu_p, inter, down_p) in enumerate(self.layers):
            qkv = _project(normed, qkv_p)  # [b, (h + 2 kvh) d] contiguous: queries, keys, values per row
            rotary(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), b, h + kvh, d, stride)  # queries and keys
            keys, values = cache.update(qkv[:, h * d:(h + kvh) * d].view(b, kvh, 1, d),
                                        qkv[:, (h + kvh) * d:].view(b, kvh, 1, d), i)
            if keys.stride(-1) != 1 or values.stride() != keys.stride() or keys.dtype != x.dtype \
                    or keys.shape[2] != visible.shape[1]:
                raise RuntimeError(f"native attention needs keys and values of one layout with the head dim "
                                   f"contiguous, {x.dtype}, one per mask position; got {keys.dtype} "
                                   f"{tuple(keys.shape)} strides {keys.stride()} / {values.stride()}")
            o = torch.empty((b, h * d), dtype=x.dtype)
            attn(qkv.data_ptr(), keys.data_ptr(), values.data_ptr(), visible.data_ptr(), o.data_ptr(), b, kvh, h // kvh,
                 d, keys.shape[2], stride, *keys.stride()[:3], scale)
            delta = _project(o, o_p)  # named: a pointer is passed, the tensor must outlive the call
            add_rms(x.data_ptr(), delta.data_ptr(), n2.weight.data_ptr(), normed.data_ptr(), b, width,
                    n2.variance_epsilon)
            gu = _project(normed, gu_p)
            act = torch.empty((b, inter), dtype=x.dtype)
            silu_mul(gu.data_ptr(), act.data_ptr(), b, inter)
            delta = _project(act, down_p)
            add_rms(x.data_ptr(), delta.data_ptr(), norms[i].weight.data_ptr(), normed.data_ptr(), b, width,
                    norms[i].variance_epsilon)
        return _run(normed, self.head, self.model.lm_head.bias)


def decode_step_for(model: Any, native: bool = False) -> DecodeStep | None:
    """The kit's decode step for `model`, or None where it does not apply (`why_not`); `native` as `DecodeStep`."""
    return None if why_not(model) is not None else DecodeStep(model, native)
