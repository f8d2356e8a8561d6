"""Recipes: one YAML file per run configuration, loaded into typed dataclasses; the public entry point.

`load_recipe(name_or_path, overrides)` finds a recipe (a path, or a bare name under configs/), reads it
with one optional level of `base:`, applies overrides, validates and returns a `Recipe`. Overrides
(`{"sft.learning_rate": 1e-3}` from a notebook, or `--set sft.learning_rate=1e-3` on the CLI) go through
`apply_overrides`, the one place that does it. Unknown keys are errors, so a typo never silently falls
back to a default; every bad recipe is a one-line `RecipeError` naming the file (or the override), the
field and what is allowed. `dump_recipe` writes the resolved recipe to `runs/<run>/recipe.yaml`; that file
is the truth for the run. The sections and their defaults are in `recipe_sections`, allowed values in
`recipe_checks`, strict file reading in `recipe_files`; their public names are importable from here too.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from .recipe_checks import (
    NO_RANGE, RANGES, RENAMED, RULES, RecipeError, allowed, build_section, renamed_key, show_path, unknown_key,
    validate,
)
from .recipe_files import read_recipe_file, yaml_error
from .recipe_sections import (
    CONFIG_DIR, GRPO_TRL_FIELDS, LORA_PEFT_FIELDS, REPO_ROOT, SECTIONS, SFT_TRL_FIELDS, BuildDataConfig,
    DataConfig, DiagnoseConfig, EvaluateConfig, GrpoConfig, JudgeConfig, LoraSection, ModelConfig, Recipe,
    RunConfig, SelfVerificationConfig, SftConfig, SpecConfig, TeacherConfig,
)

__all__ = [  # the recipe API; the names from recipe_sections and recipe_checks are re-exported on purpose
    "load_recipe", "apply_overrides", "dump_recipe", "find_recipe", "parse_override_strings",
    "Recipe", "RecipeError", "REPO_ROOT", "CONFIG_DIR", "SECTIONS", "RunConfig", "ModelConfig", "SpecConfig",
    "DataConfig", "JudgeConfig", "TeacherConfig", "DiagnoseConfig", "BuildDataConfig", "LoraSection",
    "SftConfig", "GrpoConfig", "EvaluateConfig", "SelfVerificationConfig", "SFT_TRL_FIELDS", "GRPO_TRL_FIELDS",
    "LORA_PEFT_FIELDS", "RANGES", "NO_RANGE", "RULES", "RENAMED", "allowed", "validate",
]


def find_recipe(name_or_path: str | Path) -> Path:
    """Accept a path, or a bare name such as `cpu-smollm2` looked up under configs/."""
    p = Path(name_or_path)
    for cand in (p, REPO_ROOT / p, CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand.resolve()
    raise RecipeError(f"recipe {str(name_or_path)!r} not found (looked in {CONFIG_DIR})")


def load_recipe(name_or_path: str | Path, overrides: Mapping[str, Any] | list[str] | None = None) -> Recipe:
    """Load a recipe (with one level of `base:`), apply overrides, validate, return typed config."""
    path = find_recipe(name_or_path)
    shown = show_path(path)
    raw = read_recipe_file(path)
    base_ref = raw.pop("base", None)
    where: dict[str, str] = {}
    if base_ref is not None:
        base_path = (path.parent / base_ref) if not Path(base_ref).is_absolute() else Path(base_ref)
        if not base_path.is_file():
            try:
                base_path = find_recipe(base_ref)
            except RecipeError:
                raise RecipeError(f"{shown}: base {base_ref!r} not found (looked next to the file and in "
                                  f"{show_path(CONFIG_DIR)})") from None
        base_raw = read_recipe_file(base_path)
        if "base" in base_raw:
            raise RecipeError(f"{shown}: its base {show_path(base_path)} has a base too; one level only")
        base_shown = f"{show_path(base_path)} (base of {shown})"
        where.update({f"{s}.{k}": base_shown for s, vals in base_raw.items() for k in (vals or {})})
    where.update({f"{s}.{k}": shown for s, vals in raw.items() for k in (vals or {})})
    if base_ref is not None:
        raw = _merge(base_raw, raw)
    data = {n: dict(raw.get(n) or {}) for n in SECTIONS}
    if overrides:
        where.update(_apply(data, overrides, shown))
    recipe = Recipe(**{n: build_section(n, data[n], shown) for n in SECTIONS}, source=str(path))
    validate(recipe, where, shown)
    return recipe


def parse_override_strings(items: list[str]) -> dict[str, Any]:
    """`["sft.learning_rate=1e-3", "model.others=[a, b]"]` -> dict; values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise RecipeError(f"override {item!r} must look like section.key=value, e.g. sft.max_steps=40")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise RecipeError(f"override {item!r}: the value is not valid YAML: {yaml_error(e)}") from None
    return out


def _override_text(key: str, value: Any) -> str:
    if isinstance(value, (dict, list)):
        shown = json.dumps(value, default=str)
    elif value is None:
        shown = "null"
    elif isinstance(value, bool):
        shown = str(value).lower()
    else:
        shown = str(value)
    return f"{key}={shown}"


def _apply(data: dict[str, dict], overrides: Mapping[str, Any] | list[str], source: str) -> dict[str, str]:
    """Apply `section.key` overrides to `data` in place; returns {"section.key": "override ... (on top of file)"}."""
    if isinstance(overrides, (list, tuple)):
        items = list(overrides)
        overrides = parse_override_strings(items)
        texts = {i.split("=", 1)[0].strip(): f"override {i.strip()}" for i in items}  # as typed (--set)
    elif isinstance(overrides, Mapping):
        texts = {}
    else:
        raise RecipeError(f"overrides must be a dict {{'section.key': value}} or a list of 'section.key=value' "
                          f"strings, got {type(overrides).__name__}")
    where: dict[str, str] = {}
    for key, value in overrides.items():
        text = f"{texts.get(key) or 'override ' + _override_text(str(key), value)} (on top of {source})"
        if not isinstance(key, str) or "." not in key:
            raise RecipeError(f"{text}: an override must name a section and a key, e.g. 'sft.learning_rate'")
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise RecipeError(f"{text}: {unknown_key(section, list(SECTIONS))}")
        known = [f.name for f in dataclasses.fields(SECTIONS[section])]
        if name not in known:
            raise RecipeError(f"{text}: {renamed_key(key) or unknown_key(name, known, section)}")
        data[section][name] = value
        where[key] = text
    return where


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any] | list[str] | None) -> Recipe:
    """Return a copy of `recipe` with `section.key` overrides applied and validated."""
    source = show_path(Path(recipe.source)) if recipe.source else "recipe"
    if not overrides:
        validate(recipe, None, source)
        return recipe
    data = recipe.to_dict()
    where = _apply(data, overrides, source)
    out = Recipe(**{n: build_section(n, data[n], source) for n in SECTIONS}, source=recipe.source)
    validate(out, where, source)
    return out


def dump_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write the resolved recipe as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    header = f"# resolved recipe (from {Path(recipe.source).name or 'defaults'}; base and overrides applied)\n"
    tmp.write_text(header + yaml.safe_dump(recipe.to_dict(), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


def _merge(base: dict, top: dict) -> dict:
    """A recipe's raw sections on top of its base's: keys of a section replace the base's one by one."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        elif v is None and isinstance(out.get(k), dict):  # an empty section keeps the base's values
            continue
        else:
            out[k] = v
    return out
