"""Sampling: reasoning split, batched == per-prompt greedy, num_samples, seeding, resume after a kill."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from sinternal_lib.datasets import Record
from sinternal_lib.models import tiny_model
from sinternal_lib.reasoning import split_reasoning
from sinternal_lib.sampling import Sample, generate_greedy, read_samples, sample_responses

PROMPTS = [
    ("p0", "Hi"),
    ("p1", "What is the capital of France? Please answer in one short sentence."),
    ("p2", "How do I bake bread?"),
    ("p3", "Explain photosynthesis to a ten year old, with an example from a garden."),
    ("p4", "2+2?"),
]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def _sorted_lines(path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return sorted(lines, key=lambda ln: (json.loads(ln)["prompt_id"], json.loads(ln)["sample_idx"]))


# --------------------------------------------------------------------------- split_reasoning
@pytest.mark.parametrize("text,expected", [
    ("<think>step 1</think>The answer is 4.", ("step 1", "The answer is 4.")),
    ("  <think>\na\nb\n</think>\n\nFinal.  ", ("a\nb", "Final.")),
    ("mid-thought reasoning</think>Answer here", ("mid-thought reasoning", "Answer here")),
    ("<think>never finished thinking", ("never finished thinking", "")),
    ("  plain answer  ", (None, "plain answer")),
    ("<think></think>Just answer", ("", "Just answer")),
])
def test_split_reasoning(text, expected):
    assert split_reasoning(text) == expected


def test_split_reasoning_none_style_and_bad_style():
    assert split_reasoning("<think>x</think>y", style="none") == (None, "<think>x</think>y")
    with pytest.raises(ValueError, match="style"):
        split_reasoning("x", style="bogus")


# --------------------------------------------------------------------------- batching correctness
def test_batched_greedy_equals_per_prompt_generate(tiny):
    model, tok = tiny
    texts = [p for _, p in PROMPTS]
    batched = generate_greedy(model, tok, texts, max_new_tokens=10, batch_size=3)
    for text, got in zip(texts, batched):
        enc = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=10, do_sample=False)
        ref = tok.decode(out[0, enc["input_ids"].shape[1]:]).split(tok.eos_token)[0]
        assert got == ref


def test_generate_greedy_accepts_message_lists(tiny):
    model, tok = tiny
    msgs = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]
    a = generate_greedy(model, tok, msgs, max_new_tokens=6)
    b = generate_greedy(model, tok, ["Hi"], max_new_tokens=6, system_prompt="Be brief.")
    assert a == b and isinstance(a[0], str) and a[0]


def test_temperature_zero_is_greedy(tiny):
    model, tok = tiny
    samples = sample_responses(model, tok, PROMPTS, temperature=0.0, max_new_tokens=8, batch_size=2,
                               progress=False)
    greedy = generate_greedy(model, tok, [p for _, p in PROMPTS], max_new_tokens=8, batch_size=4)
    assert [s.text for s in samples] == greedy
    assert all(s.finish == "length" and s.num_tokens == 8 for s in samples)


# --------------------------------------------------------------------------- samples and seeds
def test_num_samples_copies_order_and_schema(tiny):
    model, tok = tiny
    recs = [Record(id=pid, prompt=p, label="benign") for pid, p in PROMPTS[:3]]
    samples = sample_responses(model, tok, recs, num_samples=3, max_new_tokens=6, batch_size=4,
                               seed=1, model_name="tiny", progress=False)
    assert [(s.prompt_id, s.sample_idx) for s in samples] == [(r.id, k) for r in recs for k in range(3)]
    for pid in ("p0", "p1", "p2"):  # random model at T=0.7: copies differ
        assert len({s.text for s in samples if s.prompt_id == pid}) > 1
    s = samples[0]
    assert s.model == "tiny" and s.seed == 1 and s.prompt == "Hi" and s.reasoning is None
    assert set(s.to_dict()) == {"prompt_id", "sample_idx", "prompt", "text", "reasoning", "answer",
                                "num_tokens", "finish", "model", "seed", "prefill"}
    assert all(x.prefill is None for x in samples)


def test_prefill_forces_opener_on_last_samples_of_chosen_prompts(tiny, tmp_path):
    model, tok = tiny
    recs = [Record(id=pid, prompt=p, label="harmful") for pid, p in PROMPTS[:3]]
    openers = ["I'm sorry, but I can't help with that.", "No."]
    out = tmp_path / "s.jsonl"
    kw = dict(num_samples=4, max_new_tokens=5, batch_size=4, seed=3, progress=False, prefills=openers,
              prefill_samples=2, prefill_prompt_ids={"p0", "p2"})
    samples = sample_responses(model, tok, recs, out_path=out, **kw)
    for s in samples:
        if s.prompt_id in ("p0", "p2") and s.sample_idx >= 2:
            assert s.prefill in openers and s.text.startswith(s.prefill) and s.answer.startswith(s.prefill)
            assert len(s.text) > len(s.prefill)  # the model wrote a continuation
        else:
            assert s.prefill is None
    assert len({s.prefill for s in samples if s.prefill}) >= 1
    again = sample_responses(model, tok, recs, out_path=out, **kw)  # resume: read back, nothing new
    assert [s.to_dict() for s in again] == [s.to_dict() for s in samples]
    with pytest.raises(ValueError, match="prefill"):
        sample_responses(model, tok, recs, num_samples=2, prefill_samples=3, prefills=openers, progress=False)
    with pytest.raises(ValueError, match="prefill"):
        sample_responses(model, tok, recs, num_samples=2, prefill_samples=1, prefills=[], progress=False)


def test_same_seed_same_samples_different_seed_differs(tiny):
    model, tok = tiny
    kw = dict(num_samples=2, max_new_tokens=8, batch_size=4, progress=False)
    a = sample_responses(model, tok, PROMPTS, seed=3, **kw)
    b = sample_responses(model, tok, PROMPTS, seed=3, **kw)
    c = sample_responses(model, tok, PROMPTS, seed=4, **kw)
    assert a == b
    assert [s.text for s in a] != [s.text for s in c]


def test_stop_token_gives_finish_stop(tiny):
    model, tok = tiny
    m = copy.deepcopy(model)
    head = torch.nn.Linear(m.config.hidden_size, m.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 10.0
    m.lm_head = head
    s = sample_responses(m, tok, PROMPTS[:2], temperature=0.0, max_new_tokens=5, progress=False)
    assert all(x.finish == "stop" and x.text == "" and x.num_tokens == 1 for x in s)


# --------------------------------------------------------------------------- resume
def test_resume_after_kill_matches_uninterrupted(tiny, tmp_path):
    model, tok = tiny
    kw = dict(num_samples=2, max_new_tokens=8, batch_size=3, seed=7, model_name="tiny", progress=False)
    full = tmp_path / "full.jsonl"
    ref = sample_responses(model, tok, PROMPTS, out_path=full, **kw)

    part = tmp_path / "part.jsonl"
    calls = []

    def kill_after_first(batch):
        calls.append(len(batch))
        raise KeyboardInterrupt  # simulated kill right after the first batch was written

    with pytest.raises(KeyboardInterrupt):
        sample_responses(model, tok, PROMPTS, out_path=part, on_batch=kill_after_first, **kw)
    assert len(part.read_text().splitlines()) == calls[0] == 3
    # a second kill mid-write leaves a truncated trailing line
    with open(part, "a", encoding="utf-8") as f:
        f.write('{"prompt_id": "p3", "sample_idx": 0, "prompt": "Expl')

    with pytest.warns(UserWarning, match="part.jsonl"):
        resumed = sample_responses(model, tok, PROMPTS, out_path=part, **kw)
    assert resumed == ref
    assert _sorted_lines(part) == _sorted_lines(full)

    # a finished file: nothing regenerated, same result
    again = sample_responses(model, tok, PROMPTS, out_path=part, on_batch=kill_after_first, **kw)
    assert again == ref and len(calls) == 1


def test_resume_rejects_other_seed_and_bad_middle_line(tiny, tmp_path):
    model, tok = tiny
    out = tmp_path / "s.jsonl"
    sample_responses(model, tok, PROMPTS[:2], max_new_tokens=4, seed=0, out_path=out, progress=False)
    with pytest.raises(ValueError, match="seed"):
        sample_responses(model, tok, PROMPTS[:2], max_new_tokens=4, seed=1, out_path=out, progress=False)
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n{broken\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match=r"s\.jsonl:2"):
        read_samples(out)


def test_duplicate_ids_and_model_name(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="duplicate"):
        sample_responses(model, tok, [("a", "x"), ("a", "y")], progress=False)
    out = sample_responses(model, tok, PROMPTS[:1], max_new_tokens=3, progress=False, model_name="tiny")
    assert isinstance(out[0], Sample) and out[0].model == "tiny"


def test_recipe_reasoning_style_r1_is_accepted_where_stages_pass_it():
    """Stages pass the recipe's `model.reasoning_style` as is, and the GPU recipes say "r1"."""
    from sinternal_lib.reasoning import split_reasoning

    assert split_reasoning("<think>plan</think>answer", "r1") == split_reasoning("<think>plan</think>answer", "think")
    assert split_reasoning("plan</think>answer", "r1") == ("plan", "answer")
