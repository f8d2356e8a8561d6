"""GRPO rollouts through the kit's decode loop (grpo_rollouts.KitRolloutTrainer): the same completions as
TRL's own generation where sampling is (almost) greedy, merged weights that equal the adapter's, the
fall-back to TRL for what the loop does not do, and seeds that differ per step and repeat on a rerun."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from sinternal_lib import grpo
from sinternal_lib.config import load_recipe
from sinternal_lib.grpo_rollouts import KitRolloutTrainer, rollout_seed
from sinternal_lib.judges import make_judge
from sinternal_lib.models import load_model, lora_config, save_tiny_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


def _trainer(folder, tmp_path, *, rollouts: str = "kit", temperature: float = 1.0, lora_b: float = 0.0,
             max_len: int = 8, dropout: float = 0.0, **grpo_over):
    recipe = load_recipe("configs/tests/tiny.yaml", {"model.policy": str(folder), "grpo.gradient_checkpointing": False,
                                                      "grpo.rollouts": rollouts, "grpo.temperature": temperature,
                                                      "grpo.max_completion_length": max_len})
    model, tok = load_model(str(folder), load_in_4bit=False, trainable=True, device="cpu")
    trainer = grpo.build_trainer(recipe, model, tok, make_judge(None, cache_dir=tmp_path / "judge"),
                                 tmp_path / f"ckpt-{rollouts}", lora=lora_config({"r": 4, "lora_alpha": 8, "lora_dropout": dropout}))
    for k, v in grpo_over.items():
        setattr(trainer, k, v)
    if lora_b:  # a trained-looking adapter: merged weights then differ from the base
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in trainer.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * lora_b)
    rows = grpo.build_prompt_mix(recipe.grpo, recipe.run.seed, recipe.model.system_prompt)[:3]
    prompt_ids = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"] for r in rows]
    return trainer, [p for p in prompt_ids for _ in range(2)]


def test_build_trainer_picks_the_rollout_engine(tiny_folder, tmp_path):
    kit, _ = _trainer(tiny_folder, tmp_path)
    trl_, _ = _trainer(tiny_folder, tmp_path, rollouts="trl")
    assert isinstance(kit, KitRolloutTrainer) and not isinstance(trl_, KitRolloutTrainer)


@pytest.mark.parametrize("lora_b", [0.0, 0.5])
def test_near_greedy_rollouts_equal_trl_generation(tiny_folder, tmp_path, lora_b):
    """At temperature 1e-6 both paths take the argmax: token-for-token the same completions, stop token
    included, from the adapter unmerged (TRL) and merged into a plain copy (the kit, on CPU)."""
    kit, prompts = _trainer(tiny_folder, tmp_path, temperature=1e-6, lora_b=lora_b, max_len=12)
    ref, _ = _trainer(tiny_folder, tmp_path, rollouts="trl", temperature=1e-6, lora_b=lora_b, max_len=12)
    ours, _ = kit._generate_single_turn(prompts, None, {}, 2)
    theirs, _ = ref._generate_single_turn(prompts, None, {}, 2)
    assert kit.rollouts_by == "kit, merged weights"
    assert ours == theirs
    assert all(0 < len(c) <= 12 for c in ours)


def test_merged_copy_follows_the_adapter_and_leaves_the_policy_alone(tiny_folder, tmp_path):
    kit, prompts = _trainer(tiny_folder, tmp_path, lora_b=0.5)
    before = {n: p.detach().clone() for n, p in kit.model.named_parameters()}
    kit._generate_single_turn(prompts, None, {}, 2)
    xs = [torch.randn(2, 5, linear.in_features) for _, linear in kit._pairs]
    for (lora, linear), x in zip(kit._pairs, xs):  # the copy's Linear computes what the LoRA layer computes
        assert torch.allclose(linear(x), lora(x), atol=1e-5)
    with torch.no_grad():  # a training step moves the adapter: the next call refreshes the copy
        for n, p in kit.model.named_parameters():
            if "lora_B" in n:
                p.mul_(-1)
    kit._generate_single_turn(prompts, None, {}, 2)
    for (lora, linear), x in zip(kit._pairs, xs):
        assert torch.allclose(linear(x), lora(x), atol=1e-5)
    after = dict(kit.model.named_parameters())
    assert all(torch.equal(before[n], after[n].detach()) or "lora_B" in n for n in before)
    assert all(p.requires_grad for n, p in after.items() if "lora_" in n)  # still trainable


def test_rollouts_run_on_the_merged_copy_not_the_policy(tiny_folder, tmp_path):
    """TRL patches the policy's forward with a closure over the policy itself (its fused LM head); the copy
    must not inherit it, or every rollout runs the policy with its LoRA unmerged."""
    kit, prompts = _trainer(tiny_folder, tmp_path, lora_b=0.5)
    kit._generate_single_turn(prompts, None, {}, 2)  # builds the copy first: a deep copy would copy the hooks
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in kit.model.modules()
             if isinstance(m, torch.nn.Linear)]
    try:
        kit._generate_single_turn(prompts, None, {}, 2)
    finally:
        for h in hooks:
            h.remove()
    assert kit.rollouts_by == "kit, merged weights"
    assert calls == []  # no layer of the policy ran: the copy decoded


def test_lora_dropout_rolls_out_through_the_adapter_unmerged(tiny_folder, tmp_path):
    """TRL rolls out in train mode, so dropout > 0 is part of the rollout policy: no merged copy then."""
    kit, prompts = _trainer(tiny_folder, tmp_path, dropout=0.05)
    out, _ = kit._generate_single_turn(prompts, None, {}, 2)
    assert kit.rollouts_by == "kit" and kit._merged is None and len(out) == len(prompts)


def test_what_the_loop_does_not_do_goes_to_trl(tiny_folder, tmp_path):
    kit, prompts = _trainer(tiny_folder, tmp_path, top_k=5)
    out, _ = kit._generate_single_turn(prompts, None, {}, 2)
    assert kit.rollouts_by == "trl (top_k)" and len(out) == len(prompts)
    kit.top_k, kit.repetition_penalty = 0, 1.1
    assert kit.kit_rollouts_unsupported(None, {}, False) == "repetition_penalty"
    kit.repetition_penalty = 1.0
    assert kit.kit_rollouts_unsupported(None, {}, False) is None
    assert kit.kit_rollouts_unsupported([["an image"]], {}, False) == "images"


def test_sampled_rollouts_differ_per_step_and_repeat_on_a_rerun(tiny_folder, tmp_path):
    kit, prompts = _trainer(tiny_folder, tmp_path, max_len=10)
    first, _ = kit._generate_single_turn(prompts, None, {}, 2)
    second_call, _ = kit._generate_single_turn(prompts, None, {}, 2)  # same step, second call: a new stream
    kit.state.global_step = 1
    next_step, _ = kit._generate_single_turn(prompts, None, {}, 2)
    again, _ = _trainer(tiny_folder, tmp_path, max_len=10)
    rerun, _ = again._generate_single_turn(prompts, None, {}, 2)
    assert first != second_call and first != next_step
    assert rerun == first
    assert len({rollout_seed(0, s, p, c) for s in range(50) for p in range(4) for c in range(3)}) == 600


def test_rollout_engine_is_recorded_in_the_init_summary(tiny_folder, tmp_path):
    recipe = load_recipe("configs/tests/tiny.yaml", {"model.policy": str(tiny_folder), "grpo.max_steps": 1,
                                                      "grpo.gradient_checkpointing": False, "lora.lora_dropout": 0.0,
                                                      "grpo.rollouts": "kit"})
    recipe = dataclasses.replace(recipe, grpo=dataclasses.replace(recipe.grpo, load_in_4bit=False))
    s = grpo.train_from_init(recipe, "base", tmp_path / "base")
    assert s["rollouts_by"] == "kit, merged weights" and s["steps"] == 1
