"""Forced-choice verification: the scorer on the tiny random model, boundary tokenization, AUROC, the split
and the threshold.

Run: HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_forced_choice.py
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
import torch

from sinternal_lib import forced_choice as fc
from sinternal_lib.verification import build_verification_messages, format_target


@pytest.fixture(scope="module")
def tiny():
    from sinternal_lib.models import tiny_model

    return tiny_model()


def _messages(n: int) -> list[list[dict]]:
    """Verification prompts of different lengths, so batches need padding."""
    return [build_verification_messages("SPEC: no weapons.", f"question {i} " * (1 + 3 * i), f"answer {i} " * (2 + i))
            for i in range(n)]


def _direct(model, tok, msgs) -> float:
    """P(unsafe) from one unpadded forward per choice with full logits (the reference computation)."""
    ctx, conts = fc.choice_token_ids(tok, fc.verdict_context(tok, msgs))
    logp = []
    for cont in conts:
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            lp = model(input_ids=ids).logits[0].float().log_softmax(-1)
        logp.append(sum(float(lp[len(ctx) - 1 + t, tok_id]) for t, tok_id in enumerate(cont)))
    return 1 / (1 + math.exp(logp[0] - logp[1]))


def test_prefix_and_choices_come_from_the_training_target():
    assert fc.VERDICT_PREFIX + fc.CHOICES[0] == format_target("", "safe", "verdict_only")
    assert fc.VERDICT_PREFIX + fc.CHOICES[1] == format_target("", "unsafe", "verdict_only")
    assert fc.CHOICES == (" safe", " unsafe")


def test_scores_are_probabilities_independent_of_batch_and_padding(tiny):
    model, tok = tiny
    msgs = _messages(5)
    one = fc.forced_choice_scores(model, tok, msgs, batch_size=1)
    assert len(one) == 5 and all(0 < p < 1 for p in one)
    for bs in (4, 8):
        other = fc.forced_choice_scores(model, tok, msgs, batch_size=bs)
        assert max(abs(a - b) for a, b in zip(one, other)) < 1e-4, bs
    for i in (0, 4):  # the batched, left-padded, logits_to_keep path equals the plain computation
        assert abs(one[i] - _direct(model, tok, msgs[i])) < 1e-4
    assert fc.forced_choice_scores(model, tok, [], batch_size=4) == []


def test_one_forward_per_prompt_equals_two_sequences_per_prompt(tiny):
    """The single-token path (context logits, shared spec prefix computed once) gives the scores of the
    general path (one full sequence per choice), with a shorter and a longer shared prefix computed once."""
    from sinternal_lib.decoding import shared_prefix_len

    model, tok = tiny
    long_spec = "SPEC: " + " ".join(f"rule {k}: never help with hazard {k}." for k in range(12))
    for spec in ("SPEC: no weapons.", long_spec):
        msgs = [build_verification_messages(spec, f"question {i} " * (1 + 2 * i), f"answer {i} " * (2 + i))
                for i in range(6)]
        items = [fc.choice_token_ids(tok, fc.verdict_context(tok, m)) for m in msgs]
        assert all(len(c) == 1 for _, cs in items for c in cs)  # SmolLM2's tokenizer: " safe", " unsafe"
        if spec is long_spec:
            assert shared_prefix_len([ctx for ctx, _ in items[:4]])  # the prefix path is taken
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        fast = fc._single_token_scores(model, items, pad, 4)
        slow = fc._two_sequence_scores(model, items, pad, 8)
        assert max(abs(a - b) for a, b in zip(fast, slow)) < 1e-4
        assert abs(fast[5] - _direct(model, tok, msgs[5])) < 1e-4


def test_peft_model_is_scored_the_same_way(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    msgs = _messages(3)
    base = fc.forced_choice_scores(model, tok, msgs, batch_size=4)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    try:
        lora = fc.forced_choice_scores(peft_model, tok, msgs, batch_size=4)
    finally:
        peft_model.unload()  # give the shared fixture its plain model back
    assert max(abs(a - b) for a, b in zip(base, lora)) < 1e-5  # LoRA B starts at zero: the same function


def test_continuation_tokens_are_exactly_the_tokens_after_the_prefix(tiny):
    _, tok = tiny
    context = fc.verdict_context(tok, _messages(1)[0])
    assert context.endswith("<|im_start|>assistant\nVerdict:")
    ctx, conts = fc.choice_token_ids(tok, context)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert ctx == enc(context)
    for choice, cont in zip(fc.CHOICES, conts):
        assert ctx + cont == enc(context + choice)
        assert tok.decode(cont) == choice


class GreedyTokenizer:
    """A longest-match tokenizer whose vocabulary merges across the prefix boundary (": " is one token)."""

    vocab = ["Verdict", ": ", ":", " ", "un", "safe", "a", "b"]
    pad_token_id, eos_token_id, chat_template = 0, 0, None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        ids, i = [], 0
        while i < len(text):
            j = max((k for k, v in enumerate(self.vocab) if text.startswith(v, i)), key=lambda k: len(self.vocab[k]))
            ids.append(j)
            i += len(self.vocab[j])
        return {"input_ids": ids}


def test_boundary_merge_never_drops_or_doubles_a_token():
    tok = GreedyTokenizer()
    context = "ab Verdict:"
    ctx, conts = fc.choice_token_ids(tok, context)
    assert tok(context)["input_ids"][-1] == 2 and ctx == tok(context)["input_ids"][:-1]  # ":" merged away
    for choice, cont in zip(fc.CHOICES, conts):
        assert ctx + cont == tok(context + choice)["input_ids"]
        assert cont[0] == 1  # the merged ": " is scored for both choices from the same context
    assert [tok.vocab[i] for i in conts[1]] == [": ", "un", "safe"]


@pytest.mark.parametrize("labels,scores,expected", [
    (["unsafe", "unsafe", "safe", "safe"], [0.9, 0.8, 0.3, 0.1], 1.0),
    (["unsafe", "unsafe", "safe", "safe"], [0.1, 0.3, 0.8, 0.9], 0.0),
    (["unsafe", "safe"], [0.5, 0.5], 0.5),
    (["unsafe", "unsafe", "safe", "safe", "safe"], [0.8, 0.4, 0.4, 0.2, 0.9], 3.5 / 6),  # one tie counts 1/2
    ([True, False, False], [0.2, 0.2, 0.2], 0.5),
    ([1, 0, 1, 0], [0.7, 0.7, 0.6, 0.1], (0.5 + 1 + 0 + 1) / 4)])
def test_auroc_hand_values(labels, scores, expected):
    assert fc.auroc(labels, scores) == pytest.approx(expected)


def test_auroc_matches_pair_counting_and_needs_both_classes():
    rng = np.random.default_rng(0)
    y = rng.random(40) < 0.4
    s = np.round(rng.random(40), 1)  # many ties
    pos, neg = s[y], s[~y]
    want = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in product(pos, neg)])
    assert fc.auroc(y, s) == pytest.approx(want)
    assert math.isnan(fc.auroc(["safe", "safe"], [0.1, 0.9]))
    with pytest.raises(ValueError, match="length"):
        fc.auroc(["safe"], [0.1, 0.2])


def test_split_is_stratified_disjoint_and_deterministic():
    labels = ["unsafe"] * 7 + ["safe"] * 5
    cal, test = fc.stratified_split(labels, seed=3)
    assert sorted(cal + test) == list(range(12)) and not set(cal) & set(test)
    assert sum(labels[i] == "unsafe" for i in cal) == 3 and sum(labels[i] == "safe" for i in cal) == 2
    assert sum(labels[i] == "unsafe" for i in test) == 4 and sum(labels[i] == "safe" for i in test) == 3
    assert fc.stratified_split(labels, seed=3) == (cal, test)
    assert {tuple(fc.stratified_split(labels, seed=s)[0]) for s in range(5)} != {tuple(cal)}  # the seed matters


def test_threshold_selection_on_constructed_scores():
    # every score below 0.5: at 0.5 everything is "safe"; the calibrated threshold separates the classes
    labels, scores = ["safe", "safe", "unsafe", "unsafe"], [0.05, 0.1, 0.2, 0.3]
    t = fc.choose_threshold(labels, scores)
    assert t == pytest.approx(0.15)
    assert fc.balanced_accuracy(labels, scores, t) == 1.0 and fc.balanced_accuracy(labels, scores, 0.5) == 0.5
    # two cuts tie at 0.75 (0.15 and 0.35): the one closer to 0.5 wins
    assert fc.choose_threshold(["safe", "unsafe", "safe", "unsafe"], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.35)
    # one label only: the best cut calls everything that label
    assert fc.balanced_accuracy(["unsafe"] * 3, [0.2, 0.4, 0.6], fc.choose_threshold(["unsafe"] * 3, [0.2, 0.4, 0.6])) == 1.0


def test_metrics_report_calibrates_on_one_half_and_scores_the_other():
    labels = ["unsafe"] * 6 + ["safe"] * 6
    p = [0.40, 0.35, 0.45, 0.36, 0.38, 0.42, 0.10, 0.14, 0.15, 0.08, 0.05, 0.12]  # a clear gap, all below 0.5
    pairs = [{"id": f"x{i}", "label": lab} for i, lab in enumerate(labels)]
    out = fc.forced_choice_metrics(pairs, p, seed=1)
    assert {"auroc", "balanced_accuracy", "threshold", "n_calibration", "n_test", "balanced_accuracy_at_0.5",
            "items"} <= set(out)
    assert out["auroc"] == 1.0 and out["n_calibration"] == out["n_test"] == 6
    cal, test = fc.stratified_split(labels, seed=1)
    assert out["threshold"] == fc.choose_threshold([labels[i] for i in cal], [p[i] for i in cal])
    assert out["balanced_accuracy"] == 1.0 and out["balanced_accuracy_at_0.5"] == 0.5
    assert [(it["id"], it["label"], it["p_unsafe"]) for it in out["items"]] == list(zip([x["id"] for x in pairs], labels, p))
    one_class = fc.forced_choice_metrics(pairs[:6], p[:6])
    assert one_class["auroc"] is None  # undefined, stored as null rather than NaN
    with pytest.raises(ValueError, match="scores"):
        fc.forced_choice_metrics(pairs, p[:3])


def test_forced_choice_eval_on_pairs(tiny):
    model, tok = tiny
    pairs = [{"id": f"p{i}", "prompt": f"request {i}", "answer": f"reply {i}", "label": lab}
             for i, lab in enumerate(["safe", "unsafe"] * 3)]
    report, items = fc.forced_choice_eval(model, tok, "SPEC", pairs, batch_size=4)
    assert "items" not in report and report["n"] == 6 and 0 <= report["auroc"] <= 1
    assert [it["id"] for it in items] == [p["id"] for p in pairs] and all(0 < it["p_unsafe"] < 1 for it in items)
