"""What a recipe may hold: every bad value is a one-line `RecipeError`.

`RANGES` gives every numeric key its allowed values (a test checks none is missing), `RULES` the
cross-field constraints, `RENAMED` the keys of older recipes with what replaced them. `validate` checks
each field's type and range and then the rules. Each error names the file (or the override), the field
and what is allowed. `config.load_recipe` / `apply_overrides` call these; reading one YAML file strictly is
`recipe_files.read_recipe_file`; the sections themselves are in `recipe_sections`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .memory_fit import recipe_fit
from .recipe_sections import GUARD_POLICIES, REPO_ROOT, SECTIONS, Recipe
from .spec import load_edit
from .stages import STAGES


class RecipeError(ValueError):
    """A recipe file or override that cannot be applied. The message is one line: the CLI prints it as
    `recipe error: <message>` and exits 2, without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))


# Keys of older recipes, with what replaced them: loading one is a RecipeError that says so.
RENAMED: dict[str, str] = {
    "sft.lora_r": "was renamed to lora.r (PEFT LoraConfig's name; the lora section serves SFT and GRPO)",
    "sft.lora_alpha": "was renamed to lora.lora_alpha (PEFT LoraConfig's name; the lora section serves SFT and GRPO)",
    "sft.lora_dropout": "was renamed to lora.lora_dropout (PEFT LoraConfig's name; the lora section serves SFT "
                        "and GRPO)",
    "sft.target_modules": "was renamed to lora.target_modules (PEFT LoraConfig's name; the lora section serves "
                          "SFT and GRPO)",
    "sft.num_epochs": "was renamed to sft.num_train_epochs (TRL SFTConfig's name)",
    "sft.batch_size": "was renamed to sft.per_device_train_batch_size (TRL SFTConfig's name)",
    "sft.grad_accum": "was renamed to sft.gradient_accumulation_steps (TRL SFTConfig's name)",
    "grpo.num_prompts_per_step": "was replaced by grpo.per_device_train_batch_size (TRL GRPOConfig's name), which "
                                 "counts completions: prompts per step x grpo.num_generations (divided by "
                                 "grpo.gradient_accumulation_steps when a step is split into micro-batches)",
}


# --------------------------------------------------------------------------- allowed values
@dataclass(frozen=True)
class Bound:
    """Allowed values of one numeric field: an interval (either end open, closed or absent), plus
    exact values allowed outside it (`also`, e.g. -1 = "use epochs"), each with what it means."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple[tuple[float, str], ...] = ()

    def ok(self, v: float) -> bool:
        if any(v == a for a, _ in self.also):
            return True
        if v != v:  # NaN
            return False
        if self.lo is not None and not (v > self.lo if self.lo_open else v >= self.lo):
            return False
        if self.hi is not None and not (v < self.hi if self.hi_open else v <= self.hi):
            return False
        return True

    def describe(self, what: str = "a number") -> str:
        """E.g. "a number in [0, 1)", "-1 (train num_train_epochs epochs) or an integer >= 1"."""
        if self.lo is not None and self.hi is not None:
            rng = f" in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            rng = f" {'>' if self.lo_open else '>='} {_num(self.lo)}"
        elif self.hi is not None:
            rng = f" {'<' if self.hi_open else '<='} {_num(self.hi)}"
        else:
            rng = ""
        return "".join(f"{_num(a)} ({why}) or " for a, why in self.also) + what + rng


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


AT_LEAST_1 = Bound(lo=1)
COUNT = Bound(lo=0)  # a number of items where 0 (none) is legal
POSITIVE = Bound(lo=0, lo_open=True)
FRACTION = Bound(lo=0, hi=1)
TEMPERATURE = Bound(lo=0)  # 0 = greedy decoding

# Every int/float field of every section, with its allowed values; the one place ranges live (a test
# checks that each numeric field is here or in NO_RANGE). Cross-field rules are in RULES below.
RANGES: dict[str, Bound] = {
    "run.seed": Bound(lo=0, hi=2**32 - 1),  # numpy's seed range
    "judge.timeout_s": POSITIVE,
    "judge.max_retries": COUNT,
    "judge.concurrency": AT_LEAST_1,
    "judge.batch_size": AT_LEAST_1,
    "teacher.timeout_s": POSITIVE,
    "teacher.max_retries": COUNT,
    "teacher.concurrency": AT_LEAST_1,
    "teacher.max_new_tokens": AT_LEAST_1,
    "teacher.temperature": TEMPERATURE,
    "diagnose.num_harmful": COUNT,
    "diagnose.num_benign": COUNT,
    "diagnose.num_human_pairs": COUNT,
    "diagnose.max_new_tokens": AT_LEAST_1,
    "diagnose.verify_max_new_tokens": AT_LEAST_1,
    "diagnose.batch_size": AT_LEAST_1,
    "diagnose.temperature": TEMPERATURE,
    "build_data.num_samples": AT_LEAST_1,
    "build_data.temperature": TEMPERATURE,
    "build_data.top_p": FRACTION,
    "build_data.max_new_tokens": AT_LEAST_1,
    "build_data.num_harmful_prompts": AT_LEAST_1,
    "build_data.num_benign_prompts": AT_LEAST_1,
    "build_data.batch_size": AT_LEAST_1,
    "build_data.heldout_num_prompts": COUNT,
    "build_data.heldout_num_pairs": COUNT,
    "build_data.refusal_prefill_samples": COUNT,  # and <= num_samples (RULES)
    "run.num_processes": AT_LEAST_1,
    "lora.r": AT_LEAST_1,
    "lora.lora_alpha": POSITIVE,
    "lora.lora_dropout": Bound(lo=0, hi=1, hi_open=True),
    "sft.learning_rate": POSITIVE,
    "sft.num_train_epochs": POSITIVE,
    "sft.max_steps": Bound(lo=1, also=((-1, "train num_train_epochs epochs"),)),  # TRL: -1 = use epochs
    "sft.per_device_train_batch_size": AT_LEAST_1,
    "sft.gradient_accumulation_steps": AT_LEAST_1,
    "sft.max_length": AT_LEAST_1,
    "sft.save_steps": AT_LEAST_1,
    "sft.logging_steps": AT_LEAST_1,
    "sft.chat_mix_fraction": Bound(lo=0, hi=1, hi_open=True),  # sft.mix_chat divides by 1 - fraction
    "sft.eval_num_pairs": COUNT,
    "sft.eval_num_prompts": COUNT,
    "sft.eval_num_human_pairs": COUNT,
    "sft.eval_max_new_tokens": AT_LEAST_1,
    "grpo.num_generations": Bound(lo=2),  # TRL: group advantages need >= 2 rollouts per prompt
    "grpo.per_device_train_batch_size": AT_LEAST_1,  # a multiple of num_generations per step (RULES)
    "grpo.gradient_accumulation_steps": AT_LEAST_1,
    "grpo.steps_per_generation": AT_LEAST_1,
    "grpo.learning_rate": POSITIVE,
    "grpo.beta": Bound(lo=0),
    "grpo.max_steps": AT_LEAST_1,  # grpo.training_configs sets no epochs: steps are the only budget
    "grpo.max_completion_length": AT_LEAST_1,
    "grpo.temperature": POSITIVE,  # rollouts are sampled; 0 is not a sampling temperature
    "grpo.harmful_fraction": FRACTION,  # the three are normalised by their sum (grpo.py mix_counts); RULES
    "grpo.benign_fraction": FRACTION,
    "grpo.math_fraction": FRACTION,
    "grpo.num_train_prompts": AT_LEAST_1,
    "grpo.save_steps": AT_LEAST_1,
    "evaluate.num_per_benchmark": Bound(lo=1, also=((0, "the full set"),)),
    "evaluate.max_new_tokens": AT_LEAST_1,
    "evaluate.batch_size": AT_LEAST_1,
    "self_verification.max_retries": COUNT,  # 0: one draft, refused when the guard calls it unsafe
    "self_verification.best_of_n": AT_LEAST_1,
    "self_verification.temperature": POSITIVE,  # retries and best-of-N must sample: greedy repeats the draft
    "self_verification.top_p": Bound(lo=0, hi=1, lo_open=True),
    "self_verification.unsafe_threshold": Bound(lo=0, hi=1, lo_open=True, hi_open=True),
    "self_verification.num_per_benchmark": Bound(lo=1, also=((0, "the full set"),)),
    "self_verification.max_new_tokens": AT_LEAST_1,
    "self_verification.verify_max_new_tokens": AT_LEAST_1,
    "self_verification.batch_size": AT_LEAST_1,
    "self_verification.spec_num_pairs": COUNT,  # 0 = every held-out pair
    "self_verification.spec_targeted_pairs": COUNT,
    "run.gpu_memory_gib": POSITIVE,
    "model.vllm_memory_fraction": Bound(lo=0, hi=1, lo_open=True),
}
NO_RANGE: frozenset[str] = frozenset()  # numeric fields deliberately left unbounded (none so far)

# Fields that take one of a few values; `auto` resolves by measurement (sinternal_lib/precision.py).
CHOICES: dict[str, tuple[Any, ...]] = {
    "run.launcher": ("single", "ddp", "zero2", "zero3", "fsdp"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.generation_dtype": ("auto", "float32", "bfloat16", "float16"),
    "sft.bf16": (True, False, "auto"),
    "grpo.bf16": (True, False, "auto"),
    "grpo.rollouts": ("kit", "trl"),
    "model.generation_engine": ("hf", "vllm"),
    "self_verification.self_verdict": ("forced_choice", "generate"),
}

_GRPO_MIX = ("grpo.harmful_fraction", "grpo.benign_fraction", "grpo.math_fraction")


def _stage06_checkpoints(names: list[str]) -> bool:
    """Stage 06 depends on stages 02 and 03 only, so it may name the base model and SFT adapters, not GRPO."""
    return all(n == "base" or (n.startswith("sft/") and len(n) > 4) for n in names)


def _edits_match(r: Recipe) -> bool:
    """Every spec variant is an edited spec (an `edit:` block) of the spec the recipe verifies with."""
    try:
        return all(load_edit(r.resolve_path(p)).base == Path(r.spec.path).name
                   for p in r.self_verification.spec_variants)
    except ValueError:
        return False


# Cross-field rules: (fields involved, check, what is allowed).
RULES: list[tuple[tuple[str, ...], Callable[[Recipe], bool], str]] = [
    (("run.launcher", "run.num_processes"), lambda r: r.run.launcher != "single" or r.run.num_processes == 1,
     "run.num_processes > 1 needs a run.launcher that starts them (ddp, zero2, zero3 or fsdp)"),
    (("run.stages",), lambda r: bool(r.run.stages) and set(r.run.stages) <= set(STAGES),
     f"run.stages must be a non-empty list of stage names: {', '.join(STAGES)}"),
    (("build_data.refusal_prefill_samples", "build_data.num_samples"),
     lambda r: r.build_data.refusal_prefill_samples <= r.build_data.num_samples,
     "build_data.refusal_prefill_samples must be <= build_data.num_samples"),
    (_GRPO_MIX,
     lambda r: r.grpo.harmful_fraction + r.grpo.benign_fraction + r.grpo.math_fraction > 0,
     "grpo.harmful_fraction + grpo.benign_fraction + grpo.math_fraction must be > 0 "
     "(the prompt mix is normalised by their sum)"),
    (("grpo.per_device_train_batch_size", "grpo.gradient_accumulation_steps", "grpo.num_generations", "run.num_processes"),
     lambda r: r.grpo.per_device_train_batch_size * r.grpo.gradient_accumulation_steps
     * (r.run.num_processes if r.run.launcher != "single" else 1) % r.grpo.num_generations == 0,
     "grpo.per_device_train_batch_size x grpo.gradient_accumulation_steps x run.num_processes (launched jobs; "
     "completions per step) must be a multiple of grpo.num_generations (whole groups of rollouts per prompt)"),
    (("self_verification.policies",), lambda r: set(r.self_verification.policies) <= set(GUARD_POLICIES),
     f"self_verification.policies must be a list of {', '.join(GUARD_POLICIES)}"),
    (("self_verification.checkpoints", "self_verification.spec_checkpoints"),
     lambda r: _stage06_checkpoints(r.self_verification.checkpoints + r.self_verification.spec_checkpoints),
     "self_verification.checkpoints and spec_checkpoints must name 'base' or 'sft/<variant>' (or 'sft/*'): "
     "stage 06 reads stages 02 and 03 only"),
    (("self_verification.spec_variants", "spec.path"), _edits_match,
     "self_verification.spec_variants must be edited specs (YAML files with an `edit:` block, e.g. "
     "data/spec/*_permit_*.yaml) whose edit.base is the file spec.path names"),
    (("grpo.per_device_train_batch_size", "grpo.steps_per_generation", "grpo.num_generations"),  # None: TRL's default
     lambda r: (r.grpo.per_device_train_batch_size * (r.grpo.steps_per_generation or 0)) % r.grpo.num_generations == 0,
     "grpo.per_device_train_batch_size x grpo.steps_per_generation (one generation call) must be a multiple of "
     "grpo.num_generations"),
]


# --------------------------------------------------------------------------- types
def _field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """{field: (base type, None allowed)}; base type is bool, int, float, str or list (of str)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        optional = type(None) in args
        base = next(a for a in args if a is not type(None))
        out[name] = (typing.get_origin(base) or base, optional)
    return out


_TYPES = {name: _field_types(cls) for name, cls in SECTIONS.items()}
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               list: "a list of strings"}


def allowed(key: str) -> str:
    """What `section.key` accepts, in words: its type, range (RANGES) and whether null is allowed."""
    section, name = key.split(".", 1)
    base, optional = _TYPES[section][name]
    if key in CHOICES:
        return "one of " + ", ".join(_short(c).lower() if isinstance(c, bool) else c for c in CHOICES[key])
    what = _TYPE_WORDS.get(base, base.__name__)
    if key in RANGES:
        what = RANGES[key].describe(what)
    return what + (" or null" if optional else "")


def _check_type(obj: Any, f: dataclasses.Field, where: str, key: str) -> None:
    """Check `section.key`'s value on its section object `obj`; a float field's int or numeric string
    becomes a float in place. Bools are not integers."""
    value = getattr(obj, f.name)
    base, optional = _TYPES[key.split(".", 1)[0]][f.name]
    if key in CHOICES:  # `is` for bools: 1 == True, but 1 is not a boolean choice
        ok = any(value is c if isinstance(c, bool) else value == c for c in CHOICES[key])
    elif value is None:
        ok = optional
    elif base is bool:
        ok = isinstance(value, bool)
    elif base is float:
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            setattr(obj, f.name, float(value))
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is list:
        ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
    else:
        ok = isinstance(value, base)
    if not ok:
        raise RecipeError(f"{where}: {key} must be {allowed(key)}, got {value!r}")


# --------------------------------------------------------------------------- validation
def validate(recipe: Recipe, where: Mapping[str, str] | None = None, default: str | None = None) -> None:
    """Check every field's type and allowed range (RANGES) and the cross-field RULES; raise RecipeError.

    `where` maps "section.key" to where the value came from (a file, or an override on top of one) so
    the message can name it; other fields are reported against `default` (the recipe's source file).
    Float fields are normalised in place (an int or a numeric string becomes a float).
    """
    where = where or {}
    default = default or (show_path(Path(recipe.source)) if recipe.source else "recipe")
    for name, cls in SECTIONS.items():
        obj = getattr(recipe, name)
        if not isinstance(obj, cls):
            raise RecipeError(f"{default}: section '{name}' must be a mapping of {cls.__name__} keys, got {obj!r}")
        for f in dataclasses.fields(cls):
            key = f"{name}.{f.name}"
            w = where.get(key, default)
            _check_type(obj, f, w, key)
            value, bound = getattr(obj, f.name), RANGES.get(key)
            if bound is not None and value is not None and not bound.ok(value):
                raise RecipeError(f"{w}: {key} must be {allowed(key)}, got {value!r}")
    for keys, check, rule in RULES:
        if not check(recipe):
            got = ", ".join(f"{k}={_get(recipe, k)!r}" for k in keys)
            sources = list(dict.fromkeys(where.get(k, default) for k in keys))
            overrides = [s for s in sources if s.startswith("override ")]
            if overrides:  # the override broke the rule: "override a=1, b=2 (on top of file)"
                tail = overrides[0].rsplit(" (on top of ", 1)[-1]
                sources = ["override " + ", ".join(s[len("override "):].rsplit(" (on top of ", 1)[0]
                                                   for s in overrides) + " (on top of " + tail]
            raise RecipeError(f"{'; '.join(sources)}: {rule}, got {got}")
    if recipe.run.gpu_memory_gib is not None:
        _check_fit(recipe, where.get("run.gpu_memory_gib", default))


def _check_fit(recipe: Recipe, where: str) -> None:
    """A stated `run.gpu_memory_gib` must hold every training stage's estimated peak (memory_fit.recipe_fit).
    A model whose shape is unknown here is not checked (the runner and `fit` say so)."""
    gib = recipe.run.gpu_memory_gib
    over = [r for r in recipe_fit(recipe, gib) if r["fits"] is False]
    if over:
        what = "; ".join(f"{r['stage']} ~{r['peak']:.1f} GiB ({r['setting']}; largest part: {r['largest']})"
                         for r in over)
        raise RecipeError(f"{where}: run.gpu_memory_gib={gib:g}, but the estimated peak memory does not fit it: "
                          f"{what}. Lower the micro-batch (per_device_train_batch_size, raising "
                          "gradient_accumulation_steps to keep the step), max_length / max_completion_length or "
                          "steps_per_generation; the estimate is rough (sinternal_lib/memory_fit.py): `python -m "
                          "sinternal_lib fit --recipe <recipe>` shows its parts")


def _get(recipe: Recipe, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(recipe, section), name)


# --------------------------------------------------------------------------- keys and messages
def show_path(path: Path) -> str:
    """A path for messages: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except (ValueError, OSError):
        return str(path)


def unknown_key(name: str, known: list[str], section: str | None = None) -> str:
    """"sft.learning_rat is not a known key (did you mean sft.learning_rate?); keys of sft: ..."."""
    prefix = f"{section}." if section else ""
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    what = f"keys of {section}" if section else "sections"
    return f"{prefix}{name} is not a known {'key' if section else 'section'}{hint}; {what}: {', '.join(known)}"


def build_section(name: str, values: Mapping[str, Any], where: str = "recipe") -> Any:
    """Section `name`'s dataclass from `values`; an unknown key is a RecipeError (naming the new key of a
    renamed one, else the closest known key). Values are checked later, by `validate`."""
    cls = SECTIONS[name]
    known = [f.name for f in dataclasses.fields(cls)]
    for k in values:
        if k not in known:
            raise RecipeError(f"{where}: {renamed_key(f'{name}.{k}') or unknown_key(k, known, name)}")
    return cls(**values)


def renamed_key(key: str) -> str | None:
    """"sft.lora_r was renamed to lora.r (...)" for a key of an older recipe (RENAMED), else None."""
    return f"{key} {RENAMED[key]}" if key in RENAMED else None


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."
