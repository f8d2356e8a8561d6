"""Recipes: every shipped recipe loads and validates; overrides; unknown keys; one level of base; a bad
recipe or override is a RecipeError naming the file (or override), the field and what is allowed, and the
CLI prints it as one line without a traceback.

Run: .venv/bin/pytest -q tests/test_config.py
"""

import dataclasses
import os
import subprocess
import sys

import pytest

from sinternal_lib.config import (
    CONFIG_DIR, GRPO_TRL_FIELDS, LORA_PEFT_FIELDS, NO_RANGE, RANGES, RENAMED, REPO_ROOT, SECTIONS, SFT_TRL_FIELDS,
    GrpoConfig, LoraSection, Recipe, RecipeError, SftConfig, allowed, apply_overrides, dump_recipe, load_recipe,
    parse_override_strings, validate,
)


@pytest.mark.parametrize("path", sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.parent.name != "accelerate"),
                         ids=lambda p: p.name)  # configs/accelerate/: launcher configs (launch.py), not recipes
def test_every_shipped_recipe_loads(path):
    r = load_recipe(path)
    assert r.model.policy
    assert r.build_data.num_samples > 0


def test_gpu_recipe_has_paper_settings():
    r = load_recipe("gpu-ds-r1-qwen-7b")
    assert r.model.policy == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    assert (r.build_data.num_samples, r.lora.r, r.lora.lora_alpha, r.sft.learning_rate,
            r.sft.num_train_epochs) == (8, 16, 32, 2e-4, 2.0)
    g = r.grpo  # paper: 64 prompts x 8 rollouts = 512 completions per step, here in 8 micro-batches of 64
    assert g.per_device_train_batch_size * g.gradient_accumulation_steps == 64 * g.num_generations
    assert g.num_generations == 8
    assert (g.learning_rate, g.beta) == (1e-6, 0.0)


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


# --------------------------------------------------------------------------- bad recipes: one clear line
def _error(path, overrides=None) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _write(tmp_path, text, name="bad.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_every_numeric_field_has_a_range_and_defaults_are_valid():
    numeric = {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)
               if (isinstance(f.default, (int, float)) and not isinstance(f.default, bool))
               or str(f.type) in ("int | None", "float | None")}  # optional numbers: ranged when set
    assert numeric == set(RANGES) | NO_RANGE
    validate(Recipe())


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    p = _write(tmp_path, "sft:\n  max_steps: 3\n  variants: [sinternal\n")
    msg = _error(p)
    assert msg.startswith(f"{p}: invalid YAML at line 4, column 1:") and "flow sequence started at line 3" in msg


def test_tab_indentation_is_a_yaml_error(tmp_path):
    msg = _error(_write(tmp_path, "sft:\n\tmax_steps: 3\n"))
    assert "bad.yaml: invalid YAML at line 2, column 1" in msg


def test_duplicate_key_is_an_error(tmp_path):
    msg = _error(_write(tmp_path, "sft:\n  max_steps: 3\n  max_steps: 4\n"))
    assert "bad.yaml" in msg and "duplicate key 'max_steps'" in msg and "line 3" in msg


@pytest.mark.parametrize("text, expected", [
    ("- sft\n- grpo\n", "the top level must be a mapping of sections (run, model,"),
    ("just text\n", "the top level must be a mapping of sections"),
    ("sft: 5\n", "section 'sft' must be a mapping of keys (key: value), got int 5"),
    ("grpo: [max_steps, 3]\n", "section 'grpo' must be a mapping of keys"),
    ("base: 5\n", "base must be a recipe name or path (a string), got 5"),
    ("base: no-such-recipe\n", "base 'no-such-recipe' not found"),
])
def test_bad_structure(tmp_path, text, expected):
    msg = _error(_write(tmp_path, text))
    assert msg.startswith(f"{tmp_path / 'bad.yaml'}: ") and expected in msg


@pytest.mark.parametrize("text, field, expected", [
    ("sft: {max_steps: many}", "sft.max_steps", "-1 (train num_train_epochs epochs) or an integer >= 1, got 'many'"),
    ("lora: {r: 2.5}", "lora.r", "an integer >= 1, got 2.5"),
    ("sft: {max_steps: }", "sft.max_steps", "-1 (train num_train_epochs epochs) or an integer >= 1, got None"),
    ("sft: {gradient_accumulation_steps: true}", "sft.gradient_accumulation_steps",
     "an integer >= 1, got True"),  # bools are not ints
    ("sft: {learning_rate: fast}", "sft.learning_rate", "a number > 0, got 'fast'"),
    ("sft: {learning_rate: .nan}", "sft.learning_rate", "a number > 0, got nan"),
    ("model: {load_in_4bit: 'yes'}", "model.load_in_4bit", "true or false, got 'yes'"),
    ("model: {others: [1, 2]}", "model.others", "a list of strings, got [1, 2]"),
    ("model: {others: x}", "model.others", "a list of strings, got 'x'"),
    ("model: {policy: 7}", "model.policy", "a string, got 7"),
    ("judge: {model: 7}", "judge.model", "a string or null, got 7"),
])
def test_wrong_types(tmp_path, text, field, expected):
    msg = _error(_write(tmp_path, text + "\n"))
    assert msg == f"{tmp_path / 'bad.yaml'}: {field} must be {expected}"


def test_ints_for_floats_and_yaml_1_1_exponents_are_fine(tmp_path):
    r = load_recipe(_write(tmp_path, "grpo: {learning_rate: 1, temperature: 2}\nsft: {learning_rate: 2e-4}\n"))
    assert r.grpo.learning_rate == 1.0 and isinstance(r.grpo.learning_rate, float)
    assert r.sft.learning_rate == 2e-4 and r.grpo.temperature == 2.0


@pytest.mark.parametrize("key, value, expected", [
    ("sft.max_steps", 0, "-1 (train num_train_epochs epochs) or an integer >= 1"),
    ("sft.max_steps", -5, "-1 (train num_train_epochs epochs) or an integer >= 1"),
    ("grpo.max_steps", -1, "an integer >= 1"),
    ("sft.num_train_epochs", 0, "a number > 0"),
    ("build_data.num_samples", 0, "an integer >= 1"),
    ("build_data.batch_size", 0, "an integer >= 1"),
    ("build_data.max_new_tokens", 0, "an integer >= 1"),
    ("sft.max_length", 0, "an integer >= 1"),
    ("lora.r", 0, "an integer >= 1"),
    ("lora.lora_alpha", 0, "an integer > 0"),
    ("lora.lora_dropout", 1.0, "a number in [0, 1)"),
    ("lora.lora_dropout", -0.1, "a number in [0, 1)"),
    ("sft.learning_rate", 0, "a number > 0"),
    ("grpo.learning_rate", -1e-6, "a number > 0"),
    ("sft.chat_mix_fraction", 1.0, "a number in [0, 1)"),
    ("grpo.harmful_fraction", 1.5, "a number in [0, 1]"),
    ("grpo.math_fraction", -0.1, "a number in [0, 1]"),
    ("build_data.top_p", 1.1, "a number in [0, 1]"),
    ("build_data.temperature", -0.5, "a number >= 0"),
    ("teacher.temperature", -1, "a number >= 0"),
    ("grpo.temperature", 0, "a number > 0"),
    ("grpo.num_generations", 1, "an integer >= 2"),
    ("grpo.beta", -0.1, "a number >= 0"),
    ("run.seed", -1, "an integer in [0, 4294967295]"),
    ("judge.timeout_s", 0, "a number > 0"),
    ("judge.max_retries", -1, "an integer >= 0"),
    ("evaluate.num_per_benchmark", -1, "0 (the full set) or an integer >= 1"),
    ("diagnose.num_human_pairs", -2, "an integer >= 0"),
])
def test_out_of_range_in_file(tmp_path, key, value, expected):
    section, name = key.split(".")
    p = _write(tmp_path, f"base: cpu-smollm2\n{section}:\n  {name}: {value}\n")
    msg = _error(p)
    got = float(value) if "number" in allowed(key) else value  # float fields hold floats
    assert msg == f"{p}: {key} must be {expected}, got {got!r}"


def test_max_steps_minus_five_on_top_of_tiny_recipe(tmp_path):
    # tiny.yaml has a base itself, so a recipe on top of it is refused (one level only); its base works:
    tiny = REPO_ROOT / "configs" / "tests" / "tiny.yaml"
    assert "one level only" in _error(_write(tmp_path, f"base: {tiny}\nsft: {{max_steps: 2}}\n", "child.yaml"))
    p = _write(tmp_path, "base: cpu-smollm2\nsft: {max_steps: -5}\n")
    assert _error(p) == f"{p}: sft.max_steps must be -1 (train num_train_epochs epochs) or an integer >= 1, got -5"


@pytest.mark.parametrize("key, value", [("sft.max_steps", -1), ("sft.chat_mix_fraction", 0.0), ("run.seed", 0),
                                        ("build_data.temperature", 0.0), ("grpo.math_fraction", 0.0),
                                        ("evaluate.num_per_benchmark", 0), ("build_data.top_p", 1.0),
                                        ("build_data.refusal_prefill_samples", 8), ("grpo.num_generations", 2)])
def test_boundary_values_are_allowed(key, value):
    r = load_recipe("cpu-smollm2", {key: value})
    section, name = key.split(".")
    assert getattr(getattr(r, section), name) == value


def test_value_from_the_base_is_reported_against_the_base(tmp_path):
    _write(tmp_path, "lora: {r: 0}\n", "a.yaml")
    p = _write(tmp_path, "base: a.yaml\nrun: {seed: 1}\n", "b.yaml")
    assert _error(p) == f"{tmp_path / 'a.yaml'} (base of {p}): lora.r must be an integer >= 1, got 0"


def test_cross_field_rules(tmp_path):
    msg = _error(_write(tmp_path, "build_data: {num_samples: 2, refusal_prefill_samples: 3}\n"))
    assert msg.startswith(f"{tmp_path / 'bad.yaml'}: build_data.refusal_prefill_samples must be <= "
                          "build_data.num_samples, got build_data.refusal_prefill_samples=3")
    msg = _error(_write(tmp_path, "grpo: {harmful_fraction: 0, benign_fraction: 0, math_fraction: 0}\n"))
    assert "grpo.harmful_fraction + grpo.benign_fraction + grpo.math_fraction must be > 0" in msg
    # the mix is normalised by its sum (grpo.py mix_counts): fractions need not add up to 1
    assert load_recipe("cpu-smollm2", {"grpo.math_fraction": 0.0}).grpo.harmful_fraction == 0.5


def test_unknown_keys_suggest_and_list(tmp_path):
    msg = _error(_write(tmp_path, "sft:\n  learning_rat: 1.0\n"))
    assert "sft.learning_rat is not a known key (did you mean sft.learning_rate?)" in msg
    assert "keys of sft: variants, learning_rate," in msg and str(tmp_path / "bad.yaml") in msg
    msg = _error(_write(tmp_path, "sfx:\n  max_steps: 1\n"))
    assert "sfx is not a known section (did you mean sft?); sections: run, model," in msg
    msg = _error("cpu-smollm2", {"grpo.max_step": 3})
    assert msg.startswith("override grpo.max_step=3 (on top of configs/cpu-smollm2.yaml): grpo.max_step is not "
                          "a known key (did you mean grpo.max_steps?); keys of grpo:")


@pytest.mark.parametrize("overrides", [{"sft.max_steps": -5}, ["sft.max_steps=-5"]], ids=["dict", "strings"])
def test_out_of_range_override_names_the_override(overrides):
    assert _error("cpu-smollm2", overrides) == (
        "override sft.max_steps=-5 (on top of configs/cpu-smollm2.yaml): "
        "sft.max_steps must be -1 (train num_train_epochs epochs) or an integer >= 1, got -5")


def test_apply_overrides_validates_too():
    r = load_recipe("configs/tests/tiny.yaml")
    with pytest.raises(RecipeError, match=r"^override grpo.num_generations=1 \(on top of configs/tests/tiny.yaml\): "
                                          r"grpo.num_generations must be an integer >= 2, got 1$"):
        apply_overrides(r, {"grpo.num_generations": 1})
    with pytest.raises(RecipeError, match="override build_data.num_samples=0"):
        apply_overrides(r, ["build_data.num_samples=0"])
    with pytest.raises(RecipeError, match="must be <= build_data.num_samples"):
        apply_overrides(r, {"build_data.refusal_prefill_samples": 5})
    assert apply_overrides(r, {"sft.max_steps": -1}).sft.max_steps == -1


@pytest.mark.parametrize("items, expected", [
    (["model.others=[a"], "override 'model.others=[a': the value is not valid YAML: invalid YAML at line 1"),
    (["sft.max_steps"], "override 'sft.max_steps' must look like section.key=value"),
])
def test_bad_override_strings(items, expected):
    with pytest.raises(RecipeError) as info:
        parse_override_strings(items)
    assert str(info.value).startswith(expected)


@pytest.mark.parametrize("args, expected", [
    (["--recipe", "{bad}"], "{bad}: sft.max_steps must be -1 (train num_train_epochs epochs) or an integer >= 1, got -5"),
    (["--recipe", "{syntax}"], "{syntax}: invalid YAML at line 2, column 1:"),
    (["--recipe", "configs/tests/tiny.yaml", "--set", "grpo.temperature=0"],
     "override grpo.temperature=0 (on top of configs/tests/tiny.yaml): grpo.temperature must be a number > 0"),
    (["--recipe", "configs/tests/tiny.yaml", "--set", "model.others=[a"], "override 'model.others=[a':"),
], ids=["range", "syntax", "set", "set-yaml"])
def test_cli_bad_recipe_is_one_line_rc_2(tmp_path, args, expected):
    files = {"bad": str(_write(tmp_path, "base: cpu-smollm2\nsft:\n  max_steps: -5\n")),
             "syntax": str(_write(tmp_path, "sft: [1\n", "syntax.yaml"))}
    args, expected = [a.format(**files) for a in args], expected.format(**files)
    proc = subprocess.run([sys.executable, "-m", "sinternal_lib", "run", *args, "--run-name", "x",
                           "--runs-root", str(tmp_path / "runs")],
                          cwd=REPO_ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"recipe error: {expected}"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "runs").exists()  # a refused recipe writes nothing


# --------------------------------------------------------------------------- TRL / PEFT names
@pytest.mark.parametrize("names, upstream, ours", [
    (SFT_TRL_FIELDS, "trl.SFTConfig", SftConfig),
    (GRPO_TRL_FIELDS, "trl.GRPOConfig", GrpoConfig),
    (LORA_PEFT_FIELDS, "peft.LoraConfig", LoraSection),
], ids=["sft", "grpo", "lora"])
def test_pass_through_keys_are_upstream_fields(names, upstream, ours):
    """Every recipe key passed to TRL / PEFT unchanged is a field of that class under the same name, so an
    upstream rename fails here, not in a run."""
    import importlib

    module, cls = upstream.split(".")
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    assert set(names) <= fields, f"not fields of {upstream}: {sorted(set(names) - fields)}"
    assert set(names) <= {f.name for f in dataclasses.fields(ours)}
    assert len(set(names)) == len(names)


def test_lora_section_is_all_peft_names():
    assert [f.name for f in dataclasses.fields(LoraSection)] == list(LORA_PEFT_FIELDS)


@pytest.mark.parametrize("key", sorted(RENAMED))
def test_old_keys_say_their_new_name(tmp_path, key):
    section, name = key.split(".")
    p = _write(tmp_path, f"base: cpu-smollm2\n{section}:\n  {name}: 4\n")
    msg = _error(p)
    assert msg.startswith(f"{p}: {key} {RENAMED[key]}")
    new = RENAMED[key].split(" to ", 1)[-1].split(" by ", 1)[-1].split(" ", 1)[0]
    new_section, new_name = new.split(".")
    assert new_name in {f.name for f in dataclasses.fields(SECTIONS[new_section])}, new
    assert _error("cpu-smollm2", {key: 4}).startswith(f"override {key}=4 (on top of configs/cpu-smollm2.yaml): {key} ")


def test_renamed_message_reads_well():
    assert _error("cpu-smollm2", {"sft.lora_r": 8}).endswith("sft.lora_r was renamed to lora.r (PEFT LoraConfig's "
                                                             "name; the lora section serves SFT and GRPO)")


def test_grpo_completions_per_step_hold_whole_groups(tmp_path):
    msg = _error(_write(tmp_path, "base: cpu-smollm2\ngrpo: {num_generations: 4, per_device_train_batch_size: 6}\n"))
    assert "grpo.per_device_train_batch_size x grpo.gradient_accumulation_steps x run.num_processes (launched " \
           "jobs; completions per step) must be a multiple of grpo.num_generations" in msg
    # a launched job's processes each take a share of the step: 1 completion x 2 processes is one group of 2
    two = load_recipe("cpu-smollm2", {"grpo.num_generations": 2, "grpo.per_device_train_batch_size": 1,
                                      "run.launcher": "ddp", "run.num_processes": 2})
    assert two.run.num_processes == 2
    with pytest.raises(RecipeError, match="run.num_processes"):
        load_recipe("cpu-smollm2", {"grpo.num_generations": 2, "grpo.per_device_train_batch_size": 1})
    ok = load_recipe("cpu-smollm2", {"grpo.per_device_train_batch_size": 2, "grpo.gradient_accumulation_steps": 8})
    assert ok.grpo.per_device_train_batch_size * ok.grpo.gradient_accumulation_steps == 16


def test_run_stages_choose_what_a_plain_run_executes(tmp_path):
    from sinternal_lib.cli import _select

    msg = _error(_write(tmp_path, "base: cpu-smollm2\nrun: {stages: [diagnose, sft, evaluation]}\n"))
    assert "run.stages must be a non-empty list of stage names" in msg
    r = load_recipe("cpu-smollm2", {"run.stages": ["evaluate", "diagnose"]})
    assert _select(None, r.run.stages) == ["diagnose", "evaluate"]  # pipeline order, not the list's
    assert _select(["06"], r.run.stages) == ["self_verification"]  # --only wins over the recipe
