"""Batched response sampling with resume, and greedy generation.

`sample_responses` runs chat prompts through a causal LM (the kit's decode loop, `decoding.decode`:
length-sorted batches, KV cache, finished rows leave the batch, a shared prompt prefix computed once;
temperature/top-p or greedy) and appends one JSON line per sample to
`out_path` after every batch, so a killed run resumes where it stopped. JSONL schema (`Sample`):
prompt_id, sample_idx, prompt, text (full generation, stop token removed), reasoning (str|None) and
answer (str) (split by `reasoning.split_reasoning`), num_tokens (generated tokens, incl. the stop token
when finish == "stop"), finish ("stop"|"length"), model (ref string), seed (the run seed), prefill
(str|None: text forced at the start of the reply, already part of `text`; see `prefill_samples`).
Randomness is seeded per batch from (seed, first item of the batch), so a resumed run writes
byte-identical samples to an uninterrupted one given the same prompts, num_samples and batch_size.
`generate_greedy` is the deterministic helper.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import torch

from . import jsonl
from .datasets import Record
from .decoding import decode
from .models import decode_attention
from .progress import bar as progress_bar
from .reasoning import split_reasoning

__all__ = ["Sample", "sample_responses", "generate_greedy", "read_samples"]

FINISH_STOP, FINISH_LENGTH = "stop", "length"


@dataclass
class Sample:
    """One generated response (one JSONL line); see the module docstring for the fields."""

    prompt_id: str
    sample_idx: int
    prompt: str
    text: str
    reasoning: str | None
    answer: str
    num_tokens: int
    finish: str
    model: str
    seed: int
    prefill: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sample":
        return cls(**d)

    @property
    def key(self) -> tuple[str, int]:
        return (self.prompt_id, self.sample_idx)


# --------------------------------------------------------------------------- prompt building
def _chat_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Render messages with the tokenizer's chat template (generation prompt added)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # No template (plain LM): system text, then the user turns, separated by blank lines.
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def _messages(prompt: str | list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    else:
        msgs = [dict(m) for m in prompt]
    if system_prompt is not None and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def _encode(tokenizer: Any, prompt: str | list[dict[str, str]], system_prompt: str | None) -> list[int]:
    text = _chat_text(tokenizer, _messages(prompt, system_prompt))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _normalise_prompts(prompts: Sequence[tuple[str, str]] | Sequence[Record]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for p in prompts:
        pid, text = (p.id, p.prompt) if isinstance(p, Record) else (p[0], p[1])
        out.append((str(pid), text))
    ids = [pid for pid, _ in out]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"duplicate prompt ids (resume needs unique ids): {dup}")
    return out


# --------------------------------------------------------------------------- generation core
def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif src is not None:
            ids.update(int(i) for i in src)
    return ids


def _pad_id(tokenizer: Any, stop_ids: set[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if stop_ids:
        return min(stop_ids)
    raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")


def _generate_batch(model: Any, tokenizer: Any, batch_ids: list[list[int]], *, max_new_tokens: int,
                    do_sample: bool, temperature: float, top_p: float, seed: int | None
                    ) -> list[tuple[list[int], str]]:
    """Generate for one batch with the kit's decode loop (`decoding.decode`: finished rows leave the
    batch, a prompt prefix shared by every row is computed once), or on vLLM where `model` is a
    `vllm_engine.VllmPolicy`; returns (ids without the stop token, finish)."""
    stop = _stop_ids(model, tokenizer)
    if hasattr(model, "generate_ids"):  # a vllm_engine.VllmPolicy (recipe model.generation_engine: vllm)
        gens = model.generate_ids(batch_ids, max_new_tokens=max_new_tokens, stop_ids=stop, do_sample=do_sample,
                                  temperature=temperature, top_p=top_p, seed=seed)
        return [(ids, FINISH_STOP if stopped else FINISH_LENGTH) for ids, stopped in gens]
    pad = _pad_id(tokenizer, stop)
    device = next(model.parameters()).device
    with decode_attention(device):
        gens = decode(model, batch_ids, max_new_tokens=max_new_tokens, stop_ids=stop, pad_id=pad,
                      do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed)
    return [(ids, FINISH_STOP if stopped else FINISH_LENGTH) for ids, stopped in gens]


def _decode(tokenizer: Any, ids: list[int]) -> str:
    # Special tokens are kept so `<think>` tags survive on tokenizers that mark them special; the
    # stop token and padding were already cut off.
    return tokenizer.decode(ids, skip_special_tokens=False)


def _pick_prefill(prefills: Sequence[str], key: tuple[str, int]) -> str:
    h = hashlib.sha256(f"prefill\x00{key[0]}\x00{key[1]}".encode()).digest()
    return prefills[int.from_bytes(h[:4], "little") % len(prefills)]


def _batch_seed(seed: int, key: tuple[str, int]) -> int:
    h = hashlib.sha256(f"{seed}\x00{key[0]}\x00{key[1]}".encode()).digest()
    return int.from_bytes(h[:8], "little") % (2**63 - 1)


# --------------------------------------------------------------------------- JSONL resume
def read_samples(path: str | os.PathLike, *, repair: bool = False) -> list[Sample]:
    """Read a samples JSONL file with `jsonl.read_resumable`: a truncated final line (a killed write) is
    dropped with a warning naming the file (and cut from the file when `repair`); a bad line elsewhere raises."""
    out: list[Sample] = []
    for i, row in enumerate(jsonl.read_resumable(path, repair=repair), 1):
        try:
            out.append(Sample.from_dict(row))
        except TypeError as e:
            raise ValueError(f"{path}: row {i} is not a sample ({e}); fix or delete the file") from e
    return out


# --------------------------------------------------------------------------- public API
def sample_responses(model: Any, tokenizer: Any, prompts: Sequence[tuple[str, str]] | Sequence[Record], *,
                     num_samples: int = 1, max_new_tokens: int = 128, temperature: float = 0.7,
                     top_p: float = 0.95, batch_size: int = 8, seed: int = 0,
                     out_path: str | os.PathLike | None = None, system_prompt: str | None = None,
                     model_name: str = "", progress: bool = True, do_sample: bool | None = None,
                     reasoning_style: str = "auto",
                     on_batch: Callable[[list[Sample]], None] | None = None,
                     prefills: Sequence[str] = (), prefill_samples: int = 0,
                     prefill_prompt_ids: Collection[str] | None = None) -> list[Sample]:
    """Sample `num_samples` responses per prompt; returns them in (prompt order, sample_idx) order.

    `prompts`: (prompt_id, text) pairs or `Record`s. Greedy when temperature == 0 or do_sample=False.
    With `out_path`, finished samples found there are skipped and each batch is appended (fsync'd);
    `on_batch` is called with each newly written batch (progress hooks, tests).
    `prefill_samples`: the last k samples of each prompt start with one of `prefills` (picked by a hash
    of prompt id and sample index) forced after the generation prompt; the model writes the rest. The
    opener is part of `text`/`answer` and recorded in `Sample.prefill`. `prefill_prompt_ids` limits
    this to those prompts (None: all).
    """
    if num_samples < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("num_samples, batch_size and max_new_tokens must be >= 1")
    if not 0 <= prefill_samples <= num_samples or (prefill_samples and not prefills):
        raise ValueError(f"prefill_samples={prefill_samples} needs 0 <= k <= num_samples={num_samples} "
                         "and a non-empty list of prefills")
    if do_sample is None:
        do_sample = temperature > 0
    if do_sample and temperature <= 0:
        raise ValueError("do_sample=True needs temperature > 0")
    items = _normalise_prompts(prompts)
    order = {pid: i for i, (pid, _) in enumerate(items)}

    done: dict[tuple[str, int], Sample] = {}
    path = Path(out_path) if out_path is not None else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            for s in read_samples(path, repair=True):
                if s.seed != seed or (model_name and s.model and s.model != model_name):
                    raise ValueError(f"{path} holds samples from model={s.model!r} seed={s.seed}, not "
                                     f"model={model_name!r} seed={seed}; use another out_path or delete it")
                if s.prompt_id in order and s.sample_idx < num_samples:
                    done[s.key] = s

    # The batch plan depends only on the inputs (not on what is done), so resumed batches match.
    enc = {pid: _encode(tokenizer, text, system_prompt) for pid, text in items}
    work = [(pid, k) for pid, _ in items for k in range(num_samples)]
    opener = {w: _pick_prefill(prefills, w) for w in work if w[1] >= num_samples - prefill_samples
              and (prefill_prompt_ids is None or w[0] in prefill_prompt_ids)}
    ids_for = {w: enc[w[0]] + (list(tokenizer(opener[w], add_special_tokens=False)["input_ids"])
                               if w in opener else []) for w in work}
    work.sort(key=lambda w: (-len(ids_for[w]), order[w[0]], w[1]))
    batches = [work[i:i + batch_size] for i in range(0, len(work), batch_size)]
    texts = dict(items)

    model.eval()
    bar = progress_bar(total=len(work), initial=len(done), unit="sample", desc="sampling", disable=not progress)
    try:
        with torch.inference_mode():
            for batch in batches:
                if all(w in done for w in batch):
                    continue
                gens = _generate_batch(model, tokenizer, [ids_for[w] for w in batch],
                                       max_new_tokens=max_new_tokens, do_sample=do_sample,
                                       temperature=temperature, top_p=top_p,
                                       seed=_batch_seed(seed, batch[0]))
                new = []
                for (pid, k), (ids, finish) in zip(batch, gens):
                    if (pid, k) in done:  # partially written batch: keep the stored line
                        continue
                    pre = opener.get((pid, k))
                    text = (pre or "") + _decode(tokenizer, ids)
                    reasoning, answer = split_reasoning(text, reasoning_style)
                    new.append(Sample(pid, k, texts[pid], text, reasoning, answer,
                                      len(ids) + (finish == FINISH_STOP), finish, model_name, seed, pre))
                if path is not None:
                    jsonl.append([x.to_dict() for x in new], path)
                for s in new:
                    done[s.key] = s
                bar.update(len(new))
                if on_batch is not None:
                    on_batch(new)
    finally:
        bar.close()
    return [done[w] for w in sorted(work, key=lambda w: (order[w[0]], w[1]))]


def generate_greedy(model: Any, tokenizer: Any, prompts: Sequence[str] | Sequence[list[dict[str, str]]],
                    max_new_tokens: int = 128, batch_size: int = 8, *, system_prompt: str | None = None,
                    progress: bool = False) -> list[str]:
    """Greedy responses (stop token removed) in input order. Each prompt is a user string or a list
    of chat messages (so a system prompt can be given per prompt)."""
    return generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, system_prompt=system_prompt,
                          progress=progress)


def generate_texts(model: Any, tokenizer: Any, prompts: Sequence[str] | Sequence[list[dict[str, str]]],
                   max_new_tokens: int = 128, batch_size: int = 8, *, system_prompt: str | None = None,
                   progress: bool = False, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list[str]:
    """Responses (stop token removed) in input order, through the kit's decode loop or vLLM (a `VllmPolicy`):
    greedy at temperature 0, else sampled with a seed per batch (`seed` + the batch's first position)."""
    enc = [_encode(tokenizer, p, system_prompt) for p in prompts]
    idx = sorted(range(len(enc)), key=lambda i: (-len(enc[i]), i))
    out: list[str] = [""] * len(enc)
    sample = temperature > 0
    model.eval()
    with torch.inference_mode():
        for b in progress_bar(range(0, len(idx), batch_size), desc="generating", disable=not progress):
            chunk = idx[b:b + batch_size]
            gens = _generate_batch(model, tokenizer, [enc[i] for i in chunk], max_new_tokens=max_new_tokens,
                                   do_sample=sample, temperature=temperature if sample else 0.0,
                                   top_p=top_p if sample else 1.0, seed=seed + b if sample else None)
            for i, (ids, _) in zip(chunk, gens):
                out[i] = _decode(tokenizer, ids)
    return out
