"""Recipes: one YAML file per run configuration, loaded into typed dataclasses.

A recipe has top-level sections `run`, `model`, `spec`, `data`, `judge`, `teacher`, `lora` (the adapter
SFT and GRPO train) and one per stage (`diagnose`, `build_data`, `sft`, `grpo`, `evaluate`); each maps to
one dataclass below. A key of `lora`, `sft` or `grpo` that is a PEFT `LoraConfig` / TRL `SFTConfig` /
`GRPOConfig` field has that field's name and reaches it unchanged (LORA_PEFT_FIELDS, SFT_TRL_FIELDS,
GRPO_TRL_FIELDS); keys of older recipes fail with their new name (RENAMED). A recipe may
name one `base:` recipe (one level only) and override some keys. Unknown keys are errors, so a typo
never silently falls back to a default. Overrides (`{"sft.learning_rate": 1e-3}` from a notebook, or
`--set sft.learning_rate=1e-3` on the CLI) go through `apply_overrides`, the one place that does it.
`validate` checks every value's type and allowed range (the `RANGES` table, plus the cross-field `RULES`)
after loading and after overrides; every bad recipe is a one-line `RecipeError` naming the file (or the
override), the field and what is allowed.
The resolved recipe is written to `runs/<run>/recipe.yaml`; that file is the truth for the run.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"


@dataclass
class RunConfig:
    name: str = "default"  # default run-folder name; the CLI's --run-name wins
    seed: int = 0
    output_root: str = "runs"  # relative paths resolve against the repository root


@dataclass
class ModelConfig:
    policy: str = "smollm2-135m-instruct"  # bundled name, local folder or hub id
    others: list[str] = field(default_factory=list)  # extra models diagnosed side by side
    dtype: str = "float32"  # compute dtype for non-quantized layers
    device: str = "auto"  # "auto" = cuda when available, else cpu
    load_in_4bit: bool = True  # NF4 + double quantization through bitsandbytes
    quantize_generation: bool = True  # False: sample/evaluate with the full-precision weights (faster on CPU)
    reasoning_style: str = "auto"  # "r1" = <think>...</think> traces; "none"; "auto" detects
    system_prompt: str | None = None  # None = the chat template's own default


@dataclass
class SpecConfig:
    path: str = "data/spec/safety_spec.yaml"  # the paper's spec is unpublished: this is ours
    render: str = "full"  # "full", "compact" (one line per category) or "brief" (category names only; CPU recipes)


@dataclass
class DataConfig:
    harmful: list[str] = field(default_factory=lambda: ["embedded"])  # embedded or loader names
    benign: list[str] = field(default_factory=lambda: ["embedded"])
    math: list[str] = field(default_factory=lambda: ["embedded"])
    shared_data_dir: str | None = None  # None = $SINTERNAL_SHARED_DATA or ../shared/data


@dataclass
class JudgeConfig:
    backend: str = "matcher"  # matcher | guard | api
    model: str | None = None  # guard model reference (backend "guard")
    api_base_env: str = "SINTERNAL_JUDGE_BASE_URL"  # names of env vars, never the values
    api_key_env: str = "SINTERNAL_JUDGE_API_KEY"
    api_model: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 4
    concurrency: int = 4
    batch_size: int = 8
    cache: bool = True


@dataclass
class TeacherConfig:
    backend: str = "offline"  # offline | api | local
    style: str = "full"  # offline teacher: "full" (category, rules, finding; ~75 tokens) or "brief" (one sentence)
    model: str | None = None  # local teacher model reference (backend "local")
    api_base_env: str = "SINTERNAL_TEACHER_BASE_URL"
    api_key_env: str = "SINTERNAL_TEACHER_API_KEY"
    api_model: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 4
    concurrency: int = 4
    max_new_tokens: int = 384
    temperature: float = 0.0


@dataclass
class DiagnoseConfig:
    num_harmful: int = 24  # policy-sampled pairs: harmful prompts from the train split
    num_benign: int = 24
    human_sets: list[str] = field(default_factory=lambda: ["xstest_completions", "pku_saferlhf"])
    num_human_pairs: int = 40  # per human-labelled set; seeded subsample
    max_new_tokens: int = 96  # answer length when the policy answers
    verify_max_new_tokens: int = 96  # verifier output length
    batch_size: int = 8
    include_reasoning: bool = False  # show the verifier the answer's reasoning trace too
    temperature: float = 1.0  # policy answers are sampled so both safe and unsafe ones appear


@dataclass
class BuildDataConfig:
    num_samples: int = 8  # paper: N = 8 samples per prompt
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 96
    num_harmful_prompts: int = 48
    num_benign_prompts: int = 32
    batch_size: int = 16
    require_teacher_agreement: bool = True  # keep examples whose teacher verdict == judge label
    other_model: str | None = None  # Other-Exp: verify another model's samples
    include_reasoning: bool = False
    heldout_num_prompts: int = 24  # test-split harmful prompts sampled for held-out pairs (+ half as many benign)
    heldout_num_pairs: int = 40  # balanced held-out verification pairs (half unsafe)
    # Not in paper: for a policy that (almost) never refuses, force a refusal opener at the start of the
    # last k of the N samples of each harmful prompt; the model writes the rest and the judge labels it.
    refusal_prefill_samples: int = 0
    refusal_prefills: list[str] = field(default_factory=lambda: [
        "I'm sorry, but I can't help with that.", "I can't help with this request.",
        "I won't help with that, because", "Sorry, I cannot assist with that.",
        "I must decline this request.", "No. I will not provide that,",
    ])


@dataclass
class LoraSection:
    """The recipe's `lora:` section: the fresh LoRA adapter of SFT and of GRPO's "base" init. Every key is a
    field of PEFT's `LoraConfig` under its own name (`models.lora_config` builds the LoraConfig from it)."""

    r: int = 16  # paper
    lora_alpha: int = 32  # paper
    lora_dropout: float = 0.05  # not in paper
    target_modules: list[str] = field(  # the one default list: every attention and MLP projection
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class SftConfig:
    """Keys named as TRL `SFTConfig` fields (SFT_TRL_FIELDS) go to it unchanged; the rest are the kit's."""

    variants: list[str] = field(
        default_factory=lambda: ["sinternal", "verdict_only", "critique_only", "answer_centric"]
    )
    learning_rate: float = 2e-4  # paper
    lr_scheduler_type: str = "constant"
    num_train_epochs: float = 2.0  # paper
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    # The kit's own limit (not passed to TRL): rows longer than this are dropped before training, never
    # truncated (TRL would keep the start and cut the target off); SFTConfig gets max_length=None.
    max_length: int = 1024
    save_steps: int = 50
    logging_steps: int = 5
    chat_mix_fraction: float = 0.0  # share of judged-safe own chat answers mixed in (takeover guard)
    bf16: bool = False
    gradient_checkpointing: bool = True
    # TRL padding-free batches: rows concatenated with position_ids, no padding computed (same loss;
    # bench_sft measured 30% of the positions of padded batches to be padding).
    padding_free: bool = False
    # Score only completion positions through the LM head (TRL does so on CUDA already; same loss; 1.36-1.53x
    # tokens/s on the 2-core CPU, bench_sft arm kit-full-lm-head is the before). See sinternal_lib/compact_loss.py.
    compact_lm_head: bool = True
    eval_num_pairs: int = 40  # held-out verification pairs (test split)
    eval_num_prompts: int = 24  # held-out chat prompts for ASR / compliance / takeover
    # Human-labelled held-out pairs (shared data folder; skipped when absent): answers the policy never
    # wrote, labelled by people, so a verifier cannot pass by reading only the prompt.
    eval_human_sets: list[str] = field(default_factory=lambda: ["xstest_completions"])
    eval_num_human_pairs: int = 40
    eval_max_new_tokens: int = 96


@dataclass
class GrpoConfig:
    """Keys named as TRL `GRPOConfig` fields (GRPO_TRL_FIELDS) go to it unchanged; the rest are the kit's.

    TRL's batch: one optimizer step trains on per_device_train_batch_size x gradient_accumulation_steps
    completions (one generation batch; single process), i.e. that / num_generations prompts.
    """

    inits: list[str] = field(default_factory=lambda: ["base", "answer_centric", "sinternal"])
    num_generations: int = 8  # paper: 8 rollouts per prompt
    per_device_train_batch_size: int = 512  # paper: 64 prompts x 8 rollouts = 512 completions per step
    gradient_accumulation_steps: int = 1  # > 1 splits the step's completions into micro-batches
    learning_rate: float = 1e-6  # paper
    beta: float = 0.0  # paper: no KL penalty
    max_steps: int = 100  # not in paper
    max_completion_length: int = 1024  # not in paper
    temperature: float = 1.0
    harmful_fraction: float = 0.4  # not in paper: prompt mix
    benign_fraction: float = 0.2
    math_fraction: float = 0.4
    num_train_prompts: int = 512
    save_steps: int = 25
    bf16: bool = False
    gradient_checkpointing: bool = True


# Recipe keys that are TRL / PEFT fields under the same name, passed to them unchanged in one hop
# (sft.training_configs, grpo.training_configs, models.lora_config). A test checks each is a real field of
# trl.SFTConfig / trl.GRPOConfig / peft.LoraConfig, so a rename upstream fails a test, not a run.
SFT_TRL_FIELDS: tuple[str, ...] = (
    "learning_rate", "lr_scheduler_type", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "save_steps", "logging_steps", "bf16", "gradient_checkpointing", "padding_free",
)
GRPO_TRL_FIELDS: tuple[str, ...] = (
    "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "beta",
    "max_steps", "max_completion_length", "temperature", "save_steps", "bf16", "gradient_checkpointing",
)
LORA_PEFT_FIELDS: tuple[str, ...] = ("r", "lora_alpha", "lora_dropout", "target_modules")

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


@dataclass
class EvaluateConfig:
    benchmarks: list[str] = field(
        default_factory=lambda: [
            "embedded_harmful", "embedded_jailbreak", "embedded_benign", "strongreject", "harmbench",
            "jbb", "advbench", "jbb_artifacts", "xstest", "gsm8k", "math500", "aime2024",
        ]
    )
    num_per_benchmark: int = 0  # 0 = the full set; > 0 = seeded subsample
    max_new_tokens: int = 256
    batch_size: int = 8
    checkpoints: list[str] = field(default_factory=lambda: ["base", "sft/*", "grpo/*"])
    show_unsafe: bool = False  # report shows unsafe completions only when True


SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "model": ModelConfig,
    "spec": SpecConfig,
    "data": DataConfig,
    "judge": JudgeConfig,
    "teacher": TeacherConfig,
    "diagnose": DiagnoseConfig,
    "build_data": BuildDataConfig,
    "lora": LoraSection,
    "sft": SftConfig,
    "grpo": GrpoConfig,
    "evaluate": EvaluateConfig,
}


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    spec: SpecConfig = field(default_factory=SpecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)
    build_data: BuildDataConfig = field(default_factory=BuildDataConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    sft: SftConfig = field(default_factory=SftConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    source: str = ""  # path of the recipe file it came from

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of all sections (no `source`)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def section_hash(self, *names: str) -> str:
        """Hash of the named sections, used by stages to know whether their config changed."""
        payload = json.dumps({n: self.to_dict()[n] for n in names}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def resolve_path(self, p: str) -> Path:
        """A recipe path: absolute stays, relative resolves against the repository root."""
        path = Path(p)
        return path if path.is_absolute() else REPO_ROOT / path


class RecipeError(ValueError):
    """A recipe file or override that cannot be applied. The message is one line: the CLI prints it as
    `recipe error: <message>` and exits 2, without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))


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
}
NO_RANGE: frozenset[str] = frozenset()  # numeric fields deliberately left unbounded (none so far)

_GRPO_MIX = ("grpo.harmful_fraction", "grpo.benign_fraction", "grpo.math_fraction")
# Cross-field rules: (fields involved, check, what is allowed).
RULES: list[tuple[tuple[str, ...], Callable[["Recipe"], bool], str]] = [
    (("build_data.refusal_prefill_samples", "build_data.num_samples"),
     lambda r: r.build_data.refusal_prefill_samples <= r.build_data.num_samples,
     "build_data.refusal_prefill_samples must be <= build_data.num_samples"),
    (_GRPO_MIX,
     lambda r: r.grpo.harmful_fraction + r.grpo.benign_fraction + r.grpo.math_fraction > 0,
     "grpo.harmful_fraction + grpo.benign_fraction + grpo.math_fraction must be > 0 "
     "(the prompt mix is normalised by their sum)"),
    (("grpo.per_device_train_batch_size", "grpo.gradient_accumulation_steps", "grpo.num_generations"),
     lambda r: r.grpo.per_device_train_batch_size * r.grpo.gradient_accumulation_steps % r.grpo.num_generations == 0,
     "grpo.per_device_train_batch_size x grpo.gradient_accumulation_steps (completions per step) must be a "
     "multiple of grpo.num_generations (whole groups of rollouts per prompt)"),
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
    what = _TYPE_WORDS.get(base, base.__name__)
    if key in RANGES:
        what = RANGES[key].describe(what)
    return what + (" or null" if optional else "")


def _check_type(obj: Any, f: dataclasses.Field, where: str, key: str) -> None:
    """Check `section.key`'s value on its section object `obj`; a float field's int or numeric string
    becomes a float in place. Bools are not integers."""
    value = getattr(obj, f.name)
    base, optional = _TYPES[key.split(".", 1)[0]][f.name]
    if value is None:
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
    default = default or (_show(Path(recipe.source)) if recipe.source else "recipe")
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


def _get(recipe: Recipe, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(recipe, section), name)


def _show(path: Path) -> str:
    """A path for messages: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except (ValueError, OSError):
        return str(path)


def _unknown(name: str, known: list[str], section: str | None = None) -> str:
    """"sft.learning_rat is not a known key (did you mean sft.learning_rate?); keys of sft: ..."."""
    prefix = f"{section}." if section else ""
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    what = f"keys of {section}" if section else "sections"
    return f"{prefix}{name} is not a known {'key' if section else 'section'}{hint}; {what}: {', '.join(known)}"


def _build_section(name: str, values: Mapping[str, Any], where: str = "recipe") -> Any:
    cls = SECTIONS[name]
    known = [f.name for f in dataclasses.fields(cls)]
    for k in values:
        if k not in known:
            raise RecipeError(f"{where}: {_renamed(f'{name}.{k}') or _unknown(k, known, name)}")
    return cls(**values)


def _renamed(key: str) -> str | None:
    """"sft.lora_r was renamed to lora.r (...)" for a key of an older recipe (RENAMED), else None."""
    return f"{key} {RENAMED[key]}" if key in RENAMED else None


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        elif v is None and isinstance(out.get(k), dict):  # an empty section keeps the base's values
            continue
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- reading files
class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (the second would silently win)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if dup:
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    f"found duplicate key {key!r}", key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(e: yaml.YAMLError) -> str:
    """One line: what is wrong and where (1-based line and column)."""
    def at(mark: Any) -> str:
        return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

    mark, cmark = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None)
    context = getattr(e, "context", None)
    if problem is None:
        return " ".join(f"invalid YAML: {e}".split())
    if context:
        same = cmark is not None and mark is not None and (cmark.line, cmark.column) == (mark.line, mark.column)
        context = f" ({context}{'' if same else at(cmark).replace(' at', ' started at', 1)})"
    return " ".join(f"invalid YAML{at(mark or cmark)}: {problem}{context or ''}".split())


def _read_yaml(path: Path) -> dict:
    """A recipe file as {section: {key: value}}, with its structure checked (values are not yet)."""
    shown = _show(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {shown}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader)  # noqa: S506 (safe loader)
    except yaml.YAMLError as e:
        raise RecipeError(f"{shown}: {_yaml_error(e)}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{shown}: not UTF-8 text ({e.reason} at byte {e.start}); a recipe is a YAML file") from None
    except OSError as e:
        raise RecipeError(f"{shown}: cannot read ({e.strerror or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{shown}: the top level must be a mapping of sections ({', '.join(SECTIONS)}"
                          f" and an optional base:), got {type(data).__name__} {_short(data)}")
    for name, values in data.items():
        if name == "base":
            if not isinstance(values, str) or not values.strip():
                raise RecipeError(f"{shown}: base must be a recipe name or path (a string), got {values!r}")
            continue
        if name not in SECTIONS:
            raise RecipeError(f"{shown}: {_unknown(name, [*SECTIONS, 'base'])}")
        if values is not None and not isinstance(values, dict):
            raise RecipeError(f"{shown}: section {name!r} must be a mapping of keys (key: value), "
                              f"got {type(values).__name__} {_short(values)}")
        _build_section(name, values or {}, shown)  # unknown keys
    return data


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


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
    shown = _show(path)
    raw = _read_yaml(path)
    base_ref = raw.pop("base", None)
    where: dict[str, str] = {}
    if base_ref is not None:
        base_path = (path.parent / base_ref) if not Path(base_ref).is_absolute() else Path(base_ref)
        if not base_path.is_file():
            try:
                base_path = find_recipe(base_ref)
            except RecipeError:
                raise RecipeError(f"{shown}: base {base_ref!r} not found (looked next to the file and in "
                                  f"{_show(CONFIG_DIR)})") from None
        base_raw = _read_yaml(base_path)
        if "base" in base_raw:
            raise RecipeError(f"{shown}: its base {_show(base_path)} has a base too; one level only")
        base_shown = f"{_show(base_path)} (base of {shown})"
        where.update({f"{s}.{k}": base_shown for s, vals in base_raw.items() for k in (vals or {})})
    where.update({f"{s}.{k}": shown for s, vals in raw.items() for k in (vals or {})})
    if base_ref is not None:
        raw = _merge(base_raw, raw)
    data = {n: dict(raw.get(n) or {}) for n in SECTIONS}
    if overrides:
        where.update(_apply(data, overrides, shown))
    recipe = Recipe(**{n: _build_section(n, data[n], shown) for n in SECTIONS}, source=str(path))
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
            raise RecipeError(f"override {item!r}: the value is not valid YAML: {_yaml_error(e)}") from None
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
            raise RecipeError(f"{text}: {_unknown(section, list(SECTIONS))}")
        known = [f.name for f in dataclasses.fields(SECTIONS[section])]
        if name not in known:
            raise RecipeError(f"{text}: {_renamed(key) or _unknown(name, known, section)}")
        data[section][name] = value
        where[key] = text
    return where


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any] | list[str] | None) -> Recipe:
    """Return a copy of `recipe` with `section.key` overrides applied and validated."""
    source = _show(Path(recipe.source)) if recipe.source else "recipe"
    if not overrides:
        validate(recipe, None, source)
        return recipe
    data = recipe.to_dict()
    where = _apply(data, overrides, source)
    out = Recipe(**{n: _build_section(n, data[n], source) for n in SECTIONS}, source=recipe.source)
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
