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
and the padding mask (transformers' `pack_gqa` path for one query token; the additive form SDPA makes of
its boolean mask, built once per step), or `enable_gqa` with no mask
when no row is padded (what transformers does then); the residual adds and SiLU-gated MLP as the decoder
layer does. The fused matmuls compute each output column as the separate ones do. Tests compare its logits
and greedy tokens with the model's forward.

`decode_step_for(model)` returns None, and the decode loop calls the model's forward, for anything this step
does not know: other architectures, PEFT wrappers (an unmerged LoRA), 4-bit or other non-plain layers,
attention other than SDPA, sliding windows, a GPU, a torch build without oneDNN packing. `why_not(model)`
says which.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F

from .packed_linear import _DTYPES, _packed_weight, _run, packing_available

__all__ = ["DecodeStep", "decode_step_for", "why_not"]

ARCHITECTURES = ("llama", "qwen2")

# module -> (key of the weights it was built from, packed fused weight, fused bias). Beside the module, not on
# it, for the reason `packed_linear._PACKED` is; the key holds each part's version counter and storage.
_FUSED: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, torch.Tensor, torch.Tensor | None]] = \
    weakref.WeakKeyDictionary()


def _plain(m: Any) -> bool:
    return type(m) is torch.nn.Linear  # bitsandbytes and PEFT layers subclass or wrap nn.Linear


def why_not(model: Any) -> str | None:
    """Why `model` cannot take the kit's decode step (None when it can)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in ARCHITECTURES:
        return f"architecture {getattr(cfg, 'model_type', None)!r} is not one of {ARCHITECTURES}"
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) \
            or not _plain(getattr(model, "lm_head", None)):
        return "not a plain causal LM (a PEFT wrapper or a replaced head)"
    if getattr(cfg, "_attn_implementation", None) != "sdpa":
        return f"attention {getattr(cfg, '_attn_implementation', None)!r}, not sdpa"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"activation {getattr(cfg, 'hidden_act', None)!r}, not silu"
    if getattr(cfg, "use_sliding_window", False) or any(t != "full_attention" for t in
                                                         getattr(cfg, "layer_types", None) or ()):
        return "sliding-window attention"
    w = model.lm_head.weight
    if w.device.type != "cpu" or w.dtype not in _DTYPES or not packing_available(w.dtype):
        return f"weights {w.dtype} on {w.device.type}: packing is for bf16 / fp32 on a CPU with oneDNN"
    for layer in inner.layers:
        a, m = layer.self_attn, layer.mlp
        parts = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
        if not all(_plain(p) for p in parts):
            return "a projection is not a plain nn.Linear (LoRA or quantized)"
        if any(p.weight.dtype != w.dtype or p.weight.device != w.device for p in parts):
            return "projections of mixed dtype or device"
        if not all(hasattr(n, "variance_epsilon") for n in (layer.input_layernorm, layer.post_attention_layernorm)):
            return "a norm other than RMSNorm"
    return None


def _fused(module: torch.nn.Module, parts: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`parts` stacked along their outputs and packed once (rebuilt when any part's weight or bias changes)."""
    tensors = [t for p in parts for t in (p.weight, p.bias) if t is not None]
    key = tuple((t._version, t.data_ptr()) for t in tensors)
    held = _FUSED.get(module)
    if held is None or held[0] != key:
        with torch.no_grad():  # plain tensors even inside inference mode
            w = torch.cat([p.weight.detach() for p in parts])
            bias = None
            if any(p.bias is not None for p in parts):
                bias = torch.cat([p.bias.detach() if p.bias is not None else p.weight.new_zeros(p.out_features)
                                  for p in parts])
            held = (key, torch.ops.mkldnn._reorder_linear_weight(w, 32), bias)
        _FUSED[module] = held
    return held[1], held[2]


def _rms(norm: Any, x: torch.Tensor) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class DecodeStep:
    """One decode step of a supported model (`decode_step_for`), weights packed when built."""

    def __init__(self, model: Any) -> None:
        cfg = model.config
        self.model = model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.layers = []
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            qkv, qkv_b = _fused(a, [a.q_proj, a.k_proj, a.v_proj])
            gu, gu_b = _fused(m, [m.gate_proj, m.up_proj])
            self.layers.append((layer.input_layernorm, qkv, qkv_b, a.scaling, _packed_weight(a.o_proj),
                                a.o_proj.bias, layer.post_attention_layernorm, gu, gu_b, m.gate_proj.out_features,
                                _packed_weight(m.down_proj), m.down_proj.bias))
        self.head = _packed_weight(model.lm_head)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any
                 ) -> torch.Tensor:
        """Logits `[batch, vocab]` for one new token per row. `tokens` `[batch]`, `positions` `[batch, 1]`,
        `mask` `[batch, cached + 1]` (1 = attend), `cache` the transformers cache of the prefill, which gets
        this step's keys and values. Call under `torch.inference_mode()`."""
        b, h, kvh, d = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        x = self.model.model.embed_tokens(tokens)
        cos, sin = self.model.model.rotary_emb(x[:, None], positions)
        cos, sin = cos[:, None], sin[:, None]
        if bool(mask.all()):  # transformers passes no mask then, and SDPA repeats the key-value heads itself
            attn_mask, q_shape, gqa = None, (b, h, 1, d), True
        else:  # SDPA turns a boolean mask into this one in every call; built once per step here
            attn_mask = x.new_zeros((b, 1, 1, mask.shape[1])).masked_fill_(mask[:, None, None, :] == 0, float("-inf"))
            q_shape, gqa = (b, kvh, h // kvh, d), False
        for i, (n1, qkv_w, qkv_b, scale, o_w, o_b, n2, gu_w, gu_b, inter, down_w, down_b) in enumerate(self.layers):
            qkv = _run(_rms(n1, x), qkv_w, qkv_b)
            qk = _rotary(qkv[:, :(h + kvh) * d].view(b, h + kvh, 1, d), cos, sin)  # queries and keys at once
            q, k = qk[:, :h], qk[:, h:]
            keys, values = cache.update(k, qkv[:, (h + kvh) * d:].view(b, kvh, 1, d), i)
            o = F.scaled_dot_product_attention(q.reshape(q_shape), keys, values, attn_mask=attn_mask, scale=scale,
                                               enable_gqa=gqa)
            x = x + _run(o.reshape(b, h * d), o_w, o_b)
            gu = _run(_rms(n2, x), gu_w, gu_b)
            x = x + _run(F.silu(gu[:, :inter]) * gu[:, inter:], down_w, down_b)
        return _run(_rms(self.model.model.norm, x), self.head, self.model.lm_head.bias)


def decode_step_for(model: Any) -> DecodeStep | None:
    """The kit's decode step for `model`, or None where it does not apply (`why_not`)."""
    return None if why_not(model) is not None else DecodeStep(model)
