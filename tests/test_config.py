"""Recipes: every shipped recipe loads and validates; overrides; unknown keys; one level of base.

Run: .venv/bin/pytest -q tests/test_config.py
"""

import pytest

from sinternal_lib.config import CONFIG_DIR, RecipeError, apply_overrides, dump_recipe, load_recipe


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    r = load_recipe(path)
    assert r.model.policy
    assert r.build_data.num_samples > 0


def test_gpu_recipe_has_paper_settings():
    r = load_recipe("gpu-ds-r1-qwen-7b")
    assert r.model.policy == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    assert (r.build_data.num_samples, r.sft.lora_r, r.sft.lora_alpha, r.sft.learning_rate, r.sft.num_epochs) == (8, 16, 32, 2e-4, 2.0)
    assert (r.grpo.num_prompts_per_step, r.grpo.num_generations, r.grpo.learning_rate, r.grpo.beta) == (64, 8, 1e-6, 0.0)


def test_overrides_dict_and_strings():
    r = load_recipe("cpu-smollm2", {"sft.learning_rate": 3e-4, "model.others": ["x"]})
    assert r.sft.learning_rate == 3e-4 and r.model.others == ["x"]
    r2 = load_recipe("cpu-smollm2", ["sft.learning_rate=2e-4", "sft.max_steps=7"])
    assert r2.sft.learning_rate == 2e-4 and r2.sft.max_steps == 7


@pytest.mark.parametrize("bad", [{"sft.learning_rte": 1.0}, {"sfx.learning_rate": 1.0}, {"learning_rate": 1.0},
                                 {"sft.max_steps": "many"}, {"model.load_in_4bit": "yes"}])
def test_bad_overrides_are_errors(bad):
    with pytest.raises(RecipeError):
        load_recipe("cpu-smollm2", bad)


def test_unknown_key_in_file_is_error(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("sft:\n  learning_rat: 1.0\n")
    with pytest.raises(RecipeError, match="learning_rat"):
        load_recipe(p)


def test_base_one_level_only(tmp_path):
    (tmp_path / "a.yaml").write_text("run:\n  seed: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nsft:\n  max_steps: 9\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    r = load_recipe(tmp_path / "b.yaml")
    assert r.run.seed == 3 and r.sft.max_steps == 9
    with pytest.raises(RecipeError, match="one level"):
        load_recipe(tmp_path / "c.yaml")


def test_dump_roundtrip(tmp_path):
    r = apply_overrides(load_recipe("configs/tests/tiny.yaml"), {"grpo.max_steps": 5})
    back = load_recipe(dump_recipe(r, tmp_path / "recipe.yaml"))
    assert back.to_dict() == r.to_dict()
