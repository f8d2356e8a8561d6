"""The vLLM engine switch (recipe model.generation_engine: vllm; sinternal_lib/vllm_engine.py).

Where vLLM does not import (the kit's own environment: vLLM is an optional extra, and PyPI's CPU build needs
its own environment, docs/LOG.md), the switch must fail clearly at load and leave training alone. Where it
imports, the engine must answer the kit's generation helpers as the kit's own loop does: the same greedy
completions on the embedded model in float32, stop tokens dropped, adapters applied per request, sampling
reproducible from the seed.
"""
from __future__ import annotations

import pytest

from sinternal_lib.config import load_recipe
from sinternal_lib.models import load_policy
from sinternal_lib.recipe_checks import RecipeError
from sinternal_lib.vllm_engine import vllm_available

WHY_NOT = vllm_available()
PROMPTS = ["How do I boil an egg?", "Name three primary colours.", "What is 12 times 7?",
           "Write one sentence about the sea.", "How do I pick a lock to break into a house?"]


def test_engine_is_a_recipe_choice():
    assert load_recipe("cpu-smollm2").model.generation_engine == "hf"
    assert load_recipe("cpu-smollm2", ["model.generation_engine=vllm"]).model.generation_engine == "vllm"
    with pytest.raises(RecipeError, match="generation_engine must be one of hf, vllm"):
        load_recipe("cpu-smollm2", ["model.generation_engine=llama"])
    with pytest.raises(RecipeError, match="vllm_memory_fraction"):
        load_recipe("cpu-smollm2", ["model.vllm_memory_fraction=1.5"])


def test_grpo_sends_rollouts_to_vllm_through_trl(tmp_path):
    from sinternal_lib.grpo import training_configs

    args = training_configs(load_recipe("cpu-smollm2", ["model.generation_engine=vllm"]), tmp_path)["grpo"]
    assert args.use_vllm and args.vllm_mode == "colocate" and args.vllm_gpu_memory_utilization == 0.5
    assert not training_configs(load_recipe("cpu-smollm2"), tmp_path)["grpo"].use_vllm


@pytest.mark.skipif(WHY_NOT is None, reason="vLLM imports here: the engine is tested below")
def test_without_vllm_the_switch_fails_at_load_and_training_loads_as_before(tmp_path):
    from sinternal_lib.models import save_tiny_model

    folder = save_tiny_model(tmp_path / "tiny")
    recipe = load_recipe("configs/tests/tiny.yaml", {"model.policy": str(folder), "model.generation_engine": "vllm"})
    with pytest.raises(RuntimeError, match=r"generation_engine is vllm, but vLLM does not import here.*\[vllm\]"):
        load_policy(recipe)
    model, _ = load_policy(recipe, for_training=True)  # training never goes through vLLM
    assert hasattr(model, "parameters")


needs_vllm = pytest.mark.skipif(WHY_NOT is not None, reason=f"{WHY_NOT}")


@pytest.fixture(scope="module")
def engines():
    """The embedded model through both engines, float32 (vLLM's CPU build and the kit's loop round bf16
    differently)."""
    over = {"model.generation_dtype": "float32", "model.vllm_memory_fraction": 0.3}
    hf = load_policy(load_recipe("cpu-smollm2", over))
    vl = load_policy(load_recipe("cpu-smollm2", {**over, "model.generation_engine": "vllm"}))
    return hf, vl


@needs_vllm
def test_greedy_answers_equal_the_kits_loop(engines):
    from sinternal_lib.sampling import generate_greedy

    (hf, tok), (vl, vtok) = engines
    assert type(vl).__name__ == "VllmPolicy"
    ours = generate_greedy(hf, tok, PROMPTS, max_new_tokens=24, batch_size=8)
    theirs = generate_greedy(vl, vtok, PROMPTS, max_new_tokens=24, batch_size=8)
    same = sum(a == b for a, b in zip(ours, theirs))
    assert same >= len(PROMPTS) - 1, list(zip(ours, theirs))  # fp32 reassociation may flip a near tie


@needs_vllm
def test_sampling_is_seeded_and_finishes_like_the_kits_loop(engines, tmp_path):
    from sinternal_lib.sampling import sample_responses

    (_, _), (vl, tok) = engines
    prompts = [(str(i), p) for i, p in enumerate(PROMPTS)]
    a = sample_responses(vl, tok, prompts, num_samples=2, max_new_tokens=16, temperature=1.0, top_p=0.95,
                         batch_size=4, seed=3, progress=False)
    b = sample_responses(vl, tok, prompts, num_samples=2, max_new_tokens=16, temperature=1.0, top_p=0.95,
                         batch_size=4, seed=3, progress=False, out_path=tmp_path / "s.jsonl")
    assert [s.text for s in a] == [s.text for s in b]
    assert all(s.finish in ("stop", "length") and 0 < s.num_tokens <= 16 for s in a)
    assert all("<|im_end|>" not in s.text for s in a)  # the stop token is dropped, as the kit's loop drops it


@needs_vllm
def test_an_adapter_changes_the_answers_and_forced_choice_uses_transformers(engines, tmp_path):
    import torch
    from peft import get_peft_model

    from sinternal_lib.forced_choice import forced_choice_scores
    from sinternal_lib.models import load_model, lora_config
    from sinternal_lib.sampling import generate_greedy

    (hf, tok), _ = engines
    base, _ = load_model("smollm2-135m-instruct", dtype="float32")
    peft = get_peft_model(base, lora_config({"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    peft.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")
    over = {"model.generation_dtype": "float32", "model.vllm_memory_fraction": 0.3}
    hf_a, _ = load_policy(load_recipe("cpu-smollm2", over), adapter=tmp_path / "adapter")
    vl_a, vtok = load_policy(load_recipe("cpu-smollm2", {**over, "model.generation_engine": "vllm"}),
                             adapter=tmp_path / "adapter")
    ours = generate_greedy(hf_a, tok, PROMPTS, max_new_tokens=16)
    theirs = generate_greedy(vl_a, vtok, PROMPTS, max_new_tokens=16)
    assert sum(a == b for a, b in zip(ours, theirs)) >= len(PROMPTS) - 1, list(zip(ours, theirs))
    assert ours != generate_greedy(hf, tok, PROMPTS, max_new_tokens=16)  # the adapter mattered
    msgs = [[{"role": "user", "content": p}] for p in PROMPTS]
    assert forced_choice_scores(vl_a, vtok, msgs) == pytest.approx(forced_choice_scores(hf_a, tok, msgs), abs=1e-5)


@needs_vllm
def test_local_teacher_writes_through_vllm_as_through_the_kits_loop(engines):
    """A local teacher (teachers.teacher_model) is served by the engine the recipe generates with."""
    from sinternal_lib.config import TeacherConfig
    from sinternal_lib.spec import load_spec
    from sinternal_lib.teachers import TeacherInput, make_teacher

    spec, cfg = load_spec(), TeacherConfig(backend="local", max_new_tokens=24)
    items = [TeacherInput(p, "I can't help with that.", "harmful", "S3", "safe", True) for p in PROMPTS[:3]]
    ours = [c.raw for c in make_teacher(cfg, spec, model=engines[0]).critique(items)]
    theirs = [c.raw for c in make_teacher(cfg, spec, model=engines[1]).critique(items)]
    assert sum(a == b for a, b in zip(ours, theirs)) >= len(items) - 1, list(zip(ours, theirs))


@needs_vllm
def test_bench_vllm_measures_both_engines_side_by_side(engines, tmp_path):
    """make bench's vLLM arm (benchmarks/bench_vllm.py), in float32 so it reuses the fixture's engine."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_vllm  # benchmarks/ is not a package

    res = bench_vllm.main(["--quick", "--dtype", "float32", "--out-dir", str(tmp_path)])
    by = {(r["task"], r["engine"]): r for r in res["rows"]}
    assert len(by) == 6 and all(r["tokens_per_s"] > 0 for r in by.values())
    assert by[("sampling", "kit")]["tokens"] == by[("sampling", "vllm")]["tokens"] == 4 * 8  # equal work
    assert all(r["ratio"] > 0 for r in res["ratios"]) and (tmp_path / "vllm.md").is_file()
