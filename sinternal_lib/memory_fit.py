"""Will a recipe's training fit one GPU? A peak-memory estimate per training stage, before any download.

The estimate adds up the parts that dominate QLoRA / LoRA training of a decoder-only model, from the model's
shape (a table of the models the recipes name, or the config.json of a local folder) and the recipe:

- weights: 4-bit NF4 linear layers at 0.5 byte per parameter plus ~3% of quantization constants, the
  embeddings, norms and an untied LM head at the recipe's dtype; or every parameter at that dtype;
- LoRA: its parameters in fp32 with their gradients and two Adam moments (16 bytes each);
- activations: with gradient checkpointing, every layer's input (2 bytes per hidden unit per token) plus
  one layer recomputed in full (about 34 bytes per hidden unit and 6 per MLP unit, per token: Korthikanti
  et al. 2022, without the attention-score term that SDPA does not store); without it, every layer in full;
- logits: TRL 1.16's SFT and GRPO losses run the LM head in tiles (4,096 tokens x at most 32,768 vocabulary
  entries, fp32, forward and backward), never the whole logits; a plain transformers loss (`fused=False`, what
  the GPU check measured) keeps them whole: bf16 logits, their fp32 copy for the loss and both gradients,
  12 bytes per token and vocabulary entry;
- GRPO generation: the KV cache of one generation batch (TRL generates `per_device_train_batch_size x
  steps_per_generation` completions at once on the transformers path), 2 x layers x kv_heads x head_dim
  values per token at the generation dtype;
- overhead: 10% for the allocator and temporaries, plus ~0.5 GiB of CUDA context (torch's peak counters do
  not see the context; `nvidia-smi` does).

How rough: the parts are upper bounds for padded batches at the longest allowed length. Checked against the
peak memory measured on an H100 (benchmarks/results/gpu_check_h100_*_memory.json: SmolLM2-135M and
Qwen2-1.5B shapes, bf16 and 4-bit LoRA, batch 8 x ~580 tokens, gradient checkpointing), where it lands
within 25% (tests/test_memory_fit.py); at 7B nothing has been measured yet (docs/LOG.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 2**30
CUDA_CONTEXT_GIB = 0.5
OVERHEAD = 0.10
LOGIT_BYTES = 12  # plain loss: bf16 logits + fp32 copy for the loss + both gradients
TILE_TOKENS, TILE_VOCAB = 4096, 32768  # trl.kernels: the LM-head tile of the fused loss
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a decoder-only transformer (Llama / Qwen2 layout)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False
    head_dim: int | None = None

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def proj_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection of one layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.hd, self.kv_heads * self.hd
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.proj_shapes().values())

    @property
    def other_params(self) -> int:
        """Embeddings, an untied LM head and the norms: what 4-bit loading leaves unquantized."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params


# Shapes of the models the recipes and notes name (their config.json on the hub), so the estimate needs no download.
KNOWN_SHAPES: dict[str, ModelShape] = {
    "deepseek-ai/deepseek-r1-distill-qwen-1.5b": ModelShape(28, 1536, 8960, 12, 2, 151936),
    "deepseek-ai/deepseek-r1-distill-qwen-7b": ModelShape(28, 3584, 18944, 28, 4, 152064),
    "deepseek-ai/deepseek-r1-distill-qwen-14b": ModelShape(48, 5120, 13824, 40, 8, 152064),
    "deepseek-ai/deepseek-r1-distill-llama-8b": ModelShape(32, 4096, 14336, 32, 8, 128256),
    "qwen/qwen2-1.5b": ModelShape(28, 1536, 8960, 12, 2, 151936, tied=True),
    "qwen/qwen3guard-gen-0.6b": ModelShape(28, 1024, 3072, 16, 8, 151936, tied=True, head_dim=128),
    "qwen/qwen3guard-gen-4b": ModelShape(36, 2560, 9728, 32, 8, 151936, tied=True, head_dim=128),
    "qwen/qwen3guard-gen-8b": ModelShape(36, 4096, 12288, 32, 8, 151936, head_dim=128),
    "smollm2-135m-instruct": ModelShape(30, 576, 1536, 9, 3, 49152, tied=True),
    "huggingfacetb/smollm2-135m-instruct": ModelShape(30, 576, 1536, 9, 3, 49152, tied=True),
}


def shape_from_config(cfg: dict[str, Any]) -> ModelShape:
    """A ModelShape from a transformers config.json dict (Llama / Qwen2 / Mistral key names)."""
    return ModelShape(cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"],
                      cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                      cfg["vocab_size"], bool(cfg.get("tie_word_embeddings", False)), cfg.get("head_dim"))


def shape_for(ref: str) -> ModelShape | None:
    """The shape of `ref`: a local folder's config.json, else the known-shapes table, else None (no download)."""
    cfg = Path(ref) / "config.json"
    if cfg.is_file():
        return shape_from_config(json.loads(cfg.read_text(encoding="utf-8")))
    return KNOWN_SHAPES.get(ref.lower().rstrip("/"))


def lora_params(shape: ModelShape, r: int, targets: tuple[str, ...] | list[str] = PROJ) -> int:
    """Trainable LoRA parameters: r x (in + out) per targeted projection per layer."""
    return shape.layers * sum(r * (a + b) for name, (a, b) in shape.proj_shapes().items() if name in targets)


def _weights(shape: ModelShape, load_in_4bit: bool, dtype_bytes: int) -> float:
    if load_in_4bit:
        return shape.linear_params * 0.5 * 1.03 + shape.other_params * dtype_bytes
    return shape.params * dtype_bytes


def _activations(shape: ModelShape, tokens: int, checkpointing: bool) -> float:
    full_layer = tokens * (34 * shape.hidden + 6 * shape.intermediate)
    if checkpointing:
        return tokens * shape.hidden * 2 * shape.layers + full_layer
    return full_layer * shape.layers


def _logits(shape: ModelShape, tokens: int, fused: bool) -> float:
    if fused:  # one fp32 tile forward and its gradient
        return min(tokens, TILE_TOKENS) * min(shape.vocab, TILE_VOCAB) * 4 * 2
    return tokens * shape.vocab * LOGIT_BYTES


def _total(parts: dict[str, float], apart: tuple[str, ...] = ()) -> dict[str, float]:
    """Parts in GiB, the overhead (10% + CUDA context) and the peak. The parts named in `apart` are never held
    at once with the training ones (GRPO's generation cache is freed before the backward pass): the peak
    counts the larger of the two."""
    gib = {k: v / GIB for k, v in parts.items()}
    fixed = ("weights", "LoRA + grads + Adam", "reference model", "judge model")
    train = sum(v for k, v in gib.items() if k not in apart and k not in fixed)
    held = sum(gib.get(k, 0) for k in fixed) + max([train] + [gib[k] for k in apart])
    gib["overhead (10% + CUDA context)"] = OVERHEAD * held + CUDA_CONTEXT_GIB
    gib["peak"] = held * (1 + OVERHEAD) + CUDA_CONTEXT_GIB
    return {k: round(v, 2) for k, v in gib.items()}


def sft_memory(shape: ModelShape, *, load_in_4bit: bool, dtype_bytes: int = 2, r: int = 16,
               targets: tuple[str, ...] | list[str] = PROJ, micro_batch: int, seq_len: int,
               loss_tokens: int | None = None, checkpointing: bool = True, fused: bool = True) -> dict[str, float]:
    """Peak GiB of one SFT micro-batch of `micro_batch` rows padded to `seq_len`; `loss_tokens` per row carry
    the loss (all of the row by default); `fused`: TRL's tiled LM-head loss, else a plain transformers loss."""
    tokens = micro_batch * seq_len
    lp = lora_params(shape, r, targets)
    return _total({"weights": _weights(shape, load_in_4bit, dtype_bytes), "LoRA + grads + Adam": 16 * lp,
                   "activations": _activations(shape, tokens, checkpointing),
                   "logits": _logits(shape, micro_batch * (loss_tokens or seq_len), fused)})


def grpo_memory(shape: ModelShape, *, load_in_4bit: bool, dtype_bytes: int = 2, r: int = 16,
                targets: tuple[str, ...] | list[str] = PROJ, micro_batch: int, prompt_len: int, completion_len: int,
                generation_batch: int, checkpointing: bool = True, reference_model: bool = False,
                fused: bool = True, judge: ModelShape | None = None) -> dict[str, float]:
    """Peak GiB of a GRPO step: the KV cache of one generation batch, then one training micro-batch (the loss on
    the completion tokens); a reference model (beta > 0 without LoRA) adds its weights, and a guard-model judge
    (the reward) its bf16 weights, resident on the same GPU."""
    seq = prompt_len + completion_len
    lp = lora_params(shape, r, targets)
    kv = generation_batch * seq * shape.layers * 2 * shape.kv_heads * shape.hd * dtype_bytes
    parts = {"weights": _weights(shape, load_in_4bit, dtype_bytes), "LoRA + grads + Adam": 16 * lp,
             "generation KV cache": kv,
             "activations": _activations(shape, micro_batch * seq, checkpointing),
             "logits": _logits(shape, micro_batch * completion_len, fused)}
    if reference_model:
        parts["reference model"] = _weights(shape, load_in_4bit, dtype_bytes)
    if judge is not None:
        parts["judge model"] = judge.params * 2
    return _total(parts, apart=("generation KV cache",))


PROMPT_LEN = 512  # GRPO prompt tokens assumed (the recipe bounds completions, not prompts)


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2  # "auto" picks bf16 on a GPU that has it


def recipe_fit(recipe: Any, gpu_gib: float | None = None) -> list[dict[str, Any]]:
    """Per training stage of `recipe` (SFT, GRPO): the estimated peak GiB by part, the largest part and, given
    `gpu_gib`, whether it fits. A model whose shape is unknown (not local, not in KNOWN_SHAPES) gets one row
    saying so. Assumes one process, the longest allowed rows and GRPO prompts of PROMPT_LEN tokens."""
    m, lo, s, g = recipe.model, recipe.lora, recipe.sft, recipe.grpo
    shape = shape_for(m.policy)
    if shape is None:
        return [{"stage": "all", "peak": None, "fits": None,
                 "note": f"shape of {m.policy!r} unknown: put its config.json in a local folder or add it to "
                         "memory_fit.KNOWN_SHAPES"}]
    common = {"r": lo.r, "targets": tuple(lo.target_modules) if isinstance(lo.target_modules, list) else PROJ}
    sft = sft_memory(shape, load_in_4bit=m.load_in_4bit, dtype_bytes=_dtype_bytes(m.dtype), **common,
                     micro_batch=s.per_device_train_batch_size, seq_len=s.max_length,
                     checkpointing=s.gradient_checkpointing)
    spg = getattr(g, "steps_per_generation", None) or g.gradient_accumulation_steps  # TRL's default
    grpo = grpo_memory(shape, load_in_4bit=m.load_in_4bit and g.load_in_4bit,
                       dtype_bytes=_dtype_bytes(m.generation_dtype if not g.load_in_4bit else m.dtype), **common,
                       micro_batch=g.per_device_train_batch_size, prompt_len=PROMPT_LEN,
                       completion_len=g.max_completion_length, generation_batch=g.per_device_train_batch_size * spg,
                       checkpointing=g.gradient_checkpointing,
                       judge=shape_for(recipe.judge.model) if recipe.judge.backend == "guard" and recipe.judge.model else None)
    rows = []
    for stage, est, setting in (
            ("sft", sft, f"micro-batch {s.per_device_train_batch_size} x {s.max_length} tokens"),
            ("grpo", grpo, f"micro-batch {g.per_device_train_batch_size} x ({PROMPT_LEN} + {g.max_completion_length}) "
                           f"tokens, generation batch {g.per_device_train_batch_size * spg}")):
        parts = {k: v for k, v in est.items() if k not in ("peak", "overhead (10% + CUDA context)")}
        rows.append({"stage": stage, "setting": setting, "peak": est["peak"], "parts": est,
                     "largest": max(parts, key=parts.get),
                     "fits": None if gpu_gib is None else est["peak"] <= gpu_gib})
    return rows


def format_fit(rows: list[dict[str, Any]], gpu_gib: float | None = None) -> str:
    """The estimate as a few lines for the terminal (the `fit` command and the runner on CUDA)."""
    head = "memory estimate per training stage (peak GiB, rough: see sinternal_lib/memory_fit.py)" + (
        f" against {gpu_gib:g} GiB" if gpu_gib else "")
    lines = [head]
    for r in rows:
        if r["peak"] is None:
            lines.append(f"  {r['stage']}: {r['note']}")
            continue
        verdict = "" if r["fits"] is None else ("  fits" if r["fits"] else "  DOES NOT FIT")
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["parts"].items() if k != "peak")
        lines.append(f"  {r['stage']:<5} {r['peak']:6.1f} GiB{verdict}  ({r['setting']}; largest: {r['largest']})")
        lines.append(f"        {parts}")
    return "\n".join(lines)
