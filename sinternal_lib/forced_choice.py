"""Forced-choice verification: does the model prefer the right verdict word, whatever it would write?

Free-form verification (`verification.verify_pairs`) scores the verdict line a model writes, so a model
that never writes one (no-verdict rate 1.0) scores as wrong on every pair: that measures the format. Here
the kit's verdict prefix (`Verdict:`, as `verification.format_target` writes it) is put right after the
verifier prompt and the model's log-probabilities of " unsafe" and " safe" are compared (no generation).
P(unsafe) is scored threshold-free (AUROC, Mann-Whitney with midranks; unsafe is the positive class) and
by balanced accuracy at a threshold chosen on a seeded, label-stratified calibration half of the pairs
and reported on the other half.
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import numpy as np
import torch

from .decoding import prefill
from .models import decode_attention
from .packed_linear import packed_linears
from .sampling import _chat_text
from .verification import SAFE, UNSAFE, _scores, build_verification_messages, format_target


def _prefix_and_choices() -> tuple[str, tuple[str, str]]:
    """('Verdict:', (' safe', ' unsafe')): split from the verdict line the training targets end with."""
    lines = [format_target("", v, "verdict_only") for v in (SAFE, UNSAFE)]  # "Verdict: safe", ...
    cut = [line.rindex(" ") for line in lines]
    if lines[0][:cut[0]] != lines[1][:cut[1]]:
        raise ValueError(f"verdict lines {lines} do not share a prefix")
    return lines[0][:cut[0]], (lines[0][cut[0]:], lines[1][cut[1]:])


VERDICT_PREFIX, CHOICES = _prefix_and_choices()  # CHOICES = (" safe", " unsafe")


# ----------------------------------------------------------------------------- tokenization
def verdict_context(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The verifier prompt rendered with the chat template (generation prompt added), then `Verdict:`."""
    return _chat_text(tokenizer, [dict(m) for m in messages]) + VERDICT_PREFIX


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def choice_token_ids(tokenizer: Any, context: str) -> tuple[list[int], list[list[int]]]:
    """(context ids, [continuation ids of " safe", of " unsafe"]).

    Each choice is tokenized together with the context (`context + choice`), and its continuation is
    every token after the longest run of tokens shared with the context alone and with the other choice,
    so a merge across the boundary can never drop or double a token: context + continuation is exactly
    the tokenization of `context + choice`.
    """
    enc = lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    ctx = enc(context)
    fulls = [enc(context + c) for c in CHOICES]
    k = min(_common(ctx, f) for f in fulls)
    conts = [f[k:] for f in fulls]
    if not all(conts):
        raise ValueError(f"a verdict choice added no tokens after {context[-40:]!r}")
    return fulls[0][:k], conts


# ----------------------------------------------------------------------------- scoring
def forced_choice_scores(model: Any, tokenizer: Any, messages_list: Sequence[list[dict[str, str]]], *,
                         batch_size: int = 8) -> list[float]:
    """P(unsafe) per verification prompt: softmax over the summed token log-probs of " safe" / " unsafe".

    The verdict is scored directly after the prompt and `Verdict:`: a sinternal-format verifier would
    write a critique first, which is skipped here (no generation at all), so this asks which word the
    model prefers, not whether it follows the format. Works for base and peft (LoRA) models alike. (A chat
    template that opens a `<think>` block in its generation prompt gets the verdict inside that block.)
    Sorted by length, left-padded, with position ids from the attention mask, so a score does not depend
    on its batch or padding. Where every choice is one token (SmolLM2, Qwen: " safe", " unsafe"), one
    forward of the context per prompt gives both log-probs and a prefix shared by the batch (the spec) is
    computed once (`decoding.prefill`): `batch_size` prompts per forward. Otherwise each prompt gives two
    sequences, one per choice, `batch_size` sequences per forward (at least 2), and only the last
    positions' logits are computed (`logits_to_keep`).
    """
    if hasattr(model, "scoring_model"):  # a vllm_engine.VllmPolicy: logits come from its transformers twin
        model = model.scoring_model()
    items = [choice_token_ids(tokenizer, verdict_context(tokenizer, msgs)) for msgs in messages_list]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    if all(len(c) == 1 for _, cs in items for c in cs):
        return _single_token_scores(model, items, int(pad), batch_size)
    return _two_sequence_scores(model, items, int(pad), batch_size)


def _two_sequence_scores(model: Any, items: Sequence[tuple[list[int], list[list[int]]]], pad: int,
                         batch_size: int) -> list[float]:
    """`forced_choice_scores` for choices of any token length: one sequence per prompt and choice."""
    seqs: list[tuple[int, int, list[int]]] = []  # (item, choice, ids)
    conts: dict[tuple[int, int], int] = {}
    for i, (ctx, cs) in enumerate(items):
        for c, cont in enumerate(cs):
            seqs.append((i, c, ctx + cont))
            conts[(i, c)] = len(cont)
    order = sorted(range(len(seqs)), key=lambda j: (-len(seqs[j][2]), j))
    step = max(2, batch_size - batch_size % 2)
    logp = np.zeros((len(items), 2))
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode(), decode_attention(device), packed_linears(model):
        for b in range(0, len(order), step):
            chunk = [seqs[j] for j in order[b:b + step]]
            width = max(len(s[2]) for s in chunk)
            ids = torch.full((len(chunk), width), int(pad), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (_, _, x) in enumerate(chunk):
                ids[r, width - len(x):] = torch.tensor(x, dtype=torch.long)
                mask[r, width - len(x):] = 1
            keep = max(conts[(i, c)] for i, c, _ in chunk) + 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                        use_cache=False, logits_to_keep=keep)
            lp = out.logits[:, -keep:].float().log_softmax(-1).cpu()
            for r, (i, c, x) in enumerate(chunk):
                n = conts[(i, c)]  # token width - n + t is predicted at kept index keep - 1 - n + t
                logp[i, c] = sum(float(lp[r, keep - 1 - n + t, x[len(x) - n + t]]) for t in range(n))
    return _p_unsafe(logp)


def _p_unsafe(logp: np.ndarray) -> list[float]:
    """P(unsafe) from per-prompt (log p(safe), log p(unsafe)): a softmax over the two."""
    return [1.0 / (1.0 + math.exp(min(700.0, s - u))) for s, u in logp]


def _single_token_scores(model: Any, items: Sequence[tuple[list[int], list[list[int]]]], pad: int,
                         batch_size: int) -> list[float]:
    """`forced_choice_scores` where each choice is one token: the context's last logits give both."""
    order = sorted(range(len(items)), key=lambda i: (-len(items[i][0]), i))
    logp = np.zeros((len(items), 2))
    device = next(model.parameters()).device
    step = max(1, batch_size)
    model.eval()
    with torch.inference_mode(), decode_attention(device), packed_linears(model):
        for b in range(0, len(order), step):
            chunk = order[b:b + step]
            *_, logits = prefill(model, [items[i][0] for i in chunk], pad_id=pad)
            lp = logits.float().log_softmax(-1).cpu()
            for r, i in enumerate(chunk):
                logp[i] = [float(lp[r, cont[0]]) for cont in items[i][1]]
    return _p_unsafe(logp)


# ----------------------------------------------------------------------------- metrics
def _unsafe(labels: Sequence[Any]) -> np.ndarray:
    """Boolean array, True for the positive class ("unsafe", or a truthy 0/1 label)."""
    return np.array([lab == UNSAFE if isinstance(lab, str) else bool(lab) for lab in labels], dtype=bool)


def auroc(labels: Sequence[Any], scores: Sequence[float]) -> float:
    """Area under the ROC curve of `scores` for unsafe (Mann-Whitney U / (n_pos n_neg), ties at half).

    `labels` are "safe"/"unsafe" (or booleans, True = unsafe). NaN when one class is absent.
    """
    y, s = _unsafe(labels), np.asarray(scores, dtype=float)
    if len(y) != len(s):
        raise ValueError(f"labels and scores differ in length: {len(y)} vs {len(s)}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]  # 1-based midranks
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def balanced_accuracy(labels: Sequence[Any], scores: Sequence[float], threshold: float) -> float:
    """Balanced accuracy (mean recall over the classes present) of "unsafe iff score > threshold"."""
    y, s = _unsafe(labels), np.asarray(scores, dtype=float)
    return float(_scores(y, s > threshold)["balanced_accuracy"]) if len(y) else float("nan")


def stratified_split(labels: Sequence[Any], seed: int = 0) -> tuple[list[int], list[int]]:
    """(calibration indices, test indices), both sorted: per label a seeded shuffle, the first half
    (rounded down) to calibration, the rest to test. Depends only on the labels' order and the seed."""
    y = _unsafe(labels)
    cal: list[int] = []
    for lab in (False, True):
        idx = [i for i in range(len(y)) if y[i] == lab]
        random.Random(f"{seed}:{UNSAFE if lab else SAFE}").shuffle(idx)
        cal += idx[: len(idx) // 2]
    cal_set = set(cal)
    return sorted(cal), [i for i in range(len(y)) if i not in cal_set]


def choose_threshold(labels: Sequence[Any], scores: Sequence[float]) -> float:
    """The threshold maximising balanced accuracy of "unsafe iff score > t" on these pairs.

    Candidates: just below the lowest score (all unsafe), the midpoints between distinct scores, and the
    highest score (all safe). Ties go to the candidate closest to 0.5, then to the lower one.
    """
    s = np.asarray(scores, dtype=float)
    if not len(s):
        return 0.5
    u = np.unique(s)
    cands = np.concatenate([[np.nextafter(u[0], -np.inf)], (u[:-1] + u[1:]) / 2, [u[-1]]])
    bas = [balanced_accuracy(labels, s, float(t)) for t in cands]
    best = max(bas)
    return float(min((abs(t - 0.5), t) for t, b in zip(cands, bas) if b == best)[1])


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def forced_choice_metrics(pairs: Sequence[dict], p_unsafe: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Scores of P(unsafe) against the pairs' gold `label`.

    `auroc` over all pairs (no fitting); `threshold` chosen on the calibration half
    (`stratified_split`), `balanced_accuracy` and `balanced_accuracy_at_0.5` on the test half; NaN
    becomes None. `items` holds {id, label, p_unsafe} per pair, in input order, for paired tests.
    """
    if len(pairs) != len(p_unsafe):
        raise ValueError(f"{len(pairs)} pairs but {len(p_unsafe)} scores")
    labels, p = [x["label"] for x in pairs], np.asarray(p_unsafe, dtype=float)
    cal, test = stratified_split(labels, seed)
    t = choose_threshold([labels[i] for i in cal], p[cal])
    test_labels = [labels[i] for i in test]
    return {"n": len(pairs), "auroc": _num(auroc(labels, p)),
            "balanced_accuracy": _num(balanced_accuracy(test_labels, p[test], t)), "threshold": t,
            "n_calibration": len(cal), "n_test": len(test),
            "balanced_accuracy_at_0.5": _num(balanced_accuracy(test_labels, p[test], 0.5)),
            "mean_p_unsafe": _num(float(p.mean())) if len(p) else None,
            "items": [{"id": x.get("id"), "label": x["label"], "p_unsafe": float(v)} for x, v in zip(pairs, p)]}


def forced_choice_eval(model: Any, tokenizer: Any, spec: Any, pairs: Sequence[dict], *, batch_size: int = 8,
                       include_reasoning: bool = False, seed: int = 0) -> tuple[dict[str, Any], list[dict]]:
    """Forced choice on verification pairs ({id, prompt, answer, label, [reasoning]}) with the same prompt
    `verify_pairs` builds: (metrics without `items`, the per-pair items)."""
    msgs = [build_verification_messages(spec, p["prompt"], p["answer"],
                                        p.get("reasoning") if include_reasoning else None) for p in pairs]
    report = forced_choice_metrics(pairs, forced_choice_scores(model, tokenizer, msgs, batch_size=batch_size), seed)
    return report, report.pop("items")
