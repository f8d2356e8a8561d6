"""Recipes: one YAML file per run configuration, loaded into typed dataclasses.

A recipe has top-level sections `run`, `model`, `spec`, `data`, `judge`, `teacher` and one per stage
(`diagnose`, `build_data`, `sft`, `grpo`, `evaluate`); each maps to one dataclass below. A recipe may
name one `base:` recipe (one level only) and override some keys. Unknown keys are errors, so a typo
never silently falls back to a default. Overrides (`{"sft.learning_rate": 1e-3}` from a notebook, or
`--set sft.learning_rate=1e-3` on the CLI) go through `apply_overrides`, the one place that does it.
The resolved recipe is written to `runs/<run>/recipe.yaml`; that file is the truth for the run.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

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
class SftConfig:
    variants: list[str] = field(
        default_factory=lambda: ["sinternal", "verdict_only", "critique_only", "answer_centric"]
    )
    lora_r: int = 16  # paper
    lora_alpha: int = 32  # paper
    lora_dropout: float = 0.05  # not in paper
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float = 2e-4  # paper
    lr_scheduler_type: str = "constant"
    num_epochs: float = 2.0  # paper
    max_steps: int = -1  # > 0 overrides num_epochs
    batch_size: int = 4
    grad_accum: int = 1
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
    inits: list[str] = field(default_factory=lambda: ["base", "answer_centric", "sinternal"])
    num_prompts_per_step: int = 64  # paper: 64 prompts x 8 rollouts per step
    num_generations: int = 8  # paper
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
    """A recipe file or override that cannot be applied."""


def _build_section(name: str, values: Mapping[str, Any], where: str) -> Any:
    cls = SECTIONS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown} in section '{name}'; known: {sorted(known)}")
    obj = cls(**values)
    for f in dataclasses.fields(cls):
        _check_type(obj, f, f"{where}: {name}.{f.name}")
    return obj


def _check_type(obj: Any, f: dataclasses.Field, where: str) -> None:
    value = getattr(obj, f.name)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if value is None or default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            setattr(obj, f.name, float(value))
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise RecipeError(f"{where} should be {type(default).__name__}, got {value!r}")


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections")
    return data


def find_recipe(name_or_path: str | Path) -> Path:
    """Accept a path, or a bare name such as `cpu-smollm2` looked up under configs/."""
    p = Path(name_or_path)
    for cand in (p, REPO_ROOT / p, CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand.resolve()
    raise RecipeError(f"recipe {name_or_path!r} not found (looked in {CONFIG_DIR})")


def load_recipe(name_or_path: str | Path, overrides: Mapping[str, Any] | list[str] | None = None) -> Recipe:
    """Load a recipe (with one level of `base:`), apply overrides, validate, return typed config."""
    path = find_recipe(name_or_path)
    raw = _read_yaml(path)
    base_ref = raw.pop("base", None)
    if base_ref is not None:
        base_path = (path.parent / base_ref) if not Path(base_ref).is_absolute() else Path(base_ref)
        if not base_path.is_file():
            base_path = find_recipe(base_ref)
        base_raw = _read_yaml(base_path)
        if "base" in base_raw:
            raise RecipeError(f"{path}: its base {base_path} has a base too; one level only")
        raw = _merge(base_raw, raw)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise RecipeError(f"{path}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    for name, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise RecipeError(f"{path}: section '{name}' must be a mapping")
    recipe = Recipe(**{n: _build_section(n, raw.get(n) or {}, str(path)) for n in SECTIONS}, source=str(path))
    return apply_overrides(recipe, overrides)


def parse_override_strings(items: list[str]) -> dict[str, Any]:
    """`["sft.learning_rate=1e-3", "model.others=[a, b]"]` -> dict; values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise RecipeError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any] | list[str] | None) -> Recipe:
    """Return a copy of `recipe` with `section.key` overrides applied and validated."""
    if not overrides:
        return recipe
    if isinstance(overrides, list):
        overrides = parse_override_strings(overrides)
    data = recipe.to_dict()
    for key, value in overrides.items():
        if "." not in key:
            raise RecipeError(f"override {key!r} must name a section and a key, e.g. 'sft.learning_rate'")
        section, name = key.split(".", 1)
        if section not in data:
            raise RecipeError(f"override {key!r}: unknown section {section!r}; known: {list(SECTIONS)}")
        if name not in data[section]:
            raise RecipeError(f"override {key!r}: unknown key {name!r}; known: {sorted(data[section])}")
        data[section][name] = value
    return Recipe(**{n: _build_section(n, data[n], "override") for n in SECTIONS}, source=recipe.source)


def dump_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write the resolved recipe as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    header = f"# resolved recipe (from {Path(recipe.source).name or 'defaults'}; base and overrides applied)\n"
    tmp.write_text(header + yaml.safe_dump(recipe.to_dict(), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path
