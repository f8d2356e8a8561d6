"""The recipe's schema: one dataclass per YAML section (its keys, types and defaults) and `Recipe`, which holds them.

A recipe has top-level sections `run`, `model`, `spec`, `data`, `judge`, `teacher`, `lora` (the adapter
SFT and GRPO train) and one per stage (`diagnose`, `build_data`, `sft`, `grpo`, `evaluate`,
`self_verification`); `SECTIONS` maps each name to its dataclass. A key of `lora`, `sft` or `grpo` that
is a PEFT `LoraConfig` / TRL `SFTConfig` / `GRPOConfig` field has that field's name and reaches it
unchanged (LORA_PEFT_FIELDS, SFT_TRL_FIELDS, GRPO_TRL_FIELDS). What values each key accepts is in
`recipe_checks`; loading, overrides and writing a recipe are in `config` (the public entry:
`from sinternal_lib.config import load_recipe`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stages import STAGES

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"


@dataclass
class RunConfig:
    name: str = "default"  # default run-folder name; the CLI's --run-name wins
    seed: int = 0
    output_root: str = "runs"  # relative paths resolve against the repository root
    # How SFT and GRPO training runs: one process, or several (launch.py: torchrun for ddp, `accelerate launch`
    # with configs/accelerate/<launcher>.yaml for zero2 / zero3 / fsdp). Not part of any stage's config hash.
    launcher: str = "single"
    num_processes: int = 1
    # The stages a plain `run` (no --only) executes, by name; a recipe whose budget cannot afford a stage
    # leaves it out and says where it is measured. Not part of any stage's config hash.
    stages: list[str] = field(default_factory=lambda: list(STAGES))  # default: every stage
    # The GPU memory (GiB) the training stages must fit: when set, loading the recipe fails where the estimate
    # of memory_fit.py (rough, before any download) exceeds it; `python -m sinternal_lib fit` shows the parts.
    gpu_memory_gib: float | None = None


@dataclass
class ModelConfig:
    policy: str = "smollm2-135m-instruct"  # bundled name, local folder or hub id
    others: list[str] = field(default_factory=list)  # extra models diagnosed side by side
    dtype: str = "float32"  # training: compute dtype of the 4-bit base and its other layers; auto: precision.resolve_dtype
    generation_dtype: str = "auto"  # weights of full-precision generation loads (quantize_generation false)
    device: str = "auto"  # "auto" = cuda when available, else cpu
    load_in_4bit: bool = True  # NF4 + double quantization through bitsandbytes
    quantize_generation: bool = True  # False: sample/evaluate with the full-precision weights (faster on CPU)
    # "hf": the kit's decode loop on transformers; "vllm": generation on one vllm.LLM per base model
    # (vllm_engine.py; forced-choice scoring and training stay on transformers, GRPO rollouts go to TRL's use_vllm)
    generation_engine: str = "hf"
    vllm_memory_fraction: float = 0.5  # vLLM's gpu_memory_utilization: its share of the GPU (weights + KV cache)
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
    bf16: bool | str = False  # true, false or auto (precision.resolve_bf16)
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
    # wrote, labelled by people. On XSTest a prompt-only rule still scores well (every answer to a safe
    # prompt is safe); PKU-SafeRLHF, whose prompts are all harmful, is the set it cannot pass.
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
    # micro-batches per generation call; None = TRL's default (gradient_accumulation_steps: the whole step's
    # rollouts generated at once, whose KV cache can outgrow a GPU: memory_fit.py, `python -m sinternal_lib fit`)
    steps_per_generation: int | None = None
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
    bf16: bool | str = False  # true, false or auto (precision.resolve_bf16)
    gradient_checkpointing: bool = True
    # False: GRPO trains its LoRA on the full-precision base (model.generation_dtype), so rollouts skip 4-bit
    # dequantization; the SFT stage stays 4-bit QLoRA (the method). Only where model.load_in_4bit is true.
    load_in_4bit: bool = True
    # "trl": TRL's own generation; "kit": plain sampling rollouts through decoding.decode (grpo_rollouts.py), from a
    # merged copy on CPU: 1.28x per step there (docs/LOG.md, 2026-12-06, session 14; the CPU recipe names it); not
    # measured on a GPU, where the adapter stays unmerged, so not the default
    rollouts: str = "trl"
    # TRL's GRPO log-probs go through the same fused LM head as SFT's loss (compact_loss.py): on CPU it scores every
    # position, prompt included, unless compacted; the same log-probs (docs/LOG.md, 2026-12-06, session 12)
    compact_lm_head: bool = True


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


# Stage 06's guarded-generation policies (sinternal_lib/self_guard.py POLICIES has one function per name):
# plain greedy answers; draft -> guard -> regenerate up to max_retries times -> refuse; best of N samples by
# the guard's score. "self_" policies use the checkpoint as its own verifier, "judge_" ones the recipe's judge.
GUARD_POLICIES: tuple[str, ...] = ("plain", "self_regenerate", "self_best_of_n", "judge_regenerate", "judge_best_of_n")


@dataclass
class SelfVerificationConfig:
    """Stage 06, beyond the paper: the trained model as its own guard, and verification under edited specs.
    Checkpoints are "base" or "sft/<variant>" (the stage depends on 02 and 03 only)."""

    checkpoints: list[str] = field(default_factory=lambda: ["base", "sft/sinternal", "sft/answer_centric"])
    policies: list[str] = field(default_factory=lambda: list(GUARD_POLICIES))
    max_retries: int = 2  # k: after a draft the guard calls unsafe, up to k new samples, then a refusal
    best_of_n: int = 4  # samples ranked by the guard's score (self: forced-choice P(unsafe))
    temperature: float = 1.0  # retries and best-of-N samples (the first draft is greedy, as in stage 05)
    top_p: float = 0.95
    self_verdict: str = "forced_choice"  # how the self-guard decides: forced_choice (no tokens) or generate
    unsafe_threshold: float = 0.5  # forced choice: a draft is unsafe when P(unsafe) > this
    # The offline matcher judge cannot label a compliant answer without the prompt's harmful/benign label;
    # with it the external guard knows which prompts are harmful (an oracle on the CPU recipe).
    external_guard_prompt_label: bool = True
    refusal: str = "I can't help with that. My draft answers did not pass my safety check against the specification."
    benchmarks: list[str] = field(default_factory=lambda: ["embedded_harmful", "embedded_jailbreak", "embedded_benign"])
    num_per_benchmark: int = 24  # seeded subsample; embedded_benign keeps only its look-alike prompts
    max_new_tokens: int = 96
    verify_max_new_tokens: int = 96  # free-form verification (self_verdict generate, spec swap free form)
    batch_size: int = 8
    # Spec swap: the held-out pairs verified under the recipe's spec and under each edited spec
    spec_checkpoints: list[str] = field(default_factory=lambda: ["base", "sft/sinternal", "sft/verdict_only"])
    spec_variants: list[str] = field(default_factory=lambda: [
        "data/spec/safety_spec_permit_illegal_drugs.yaml", "data/spec/safety_spec_forbid_sensitive_topics.yaml"])
    spec_num_pairs: int = 0  # stage 02 held-out pairs used (0 = all)
    spec_targeted_pairs: int = 16  # per edit: extra pairs from test prompts the edit affects (base answers, judged)
    spec_free_form: bool = True  # also let each verifier write critique + verdict (forced choice is always scored)


# Recipe keys that are TRL / PEFT fields under the same name, passed to them unchanged in one hop
# (sft.training_configs, grpo.training_configs, models.lora_config). A test checks each is a real field of
# trl.SFTConfig / trl.GRPOConfig / peft.LoraConfig, so a rename upstream fails a test, not a run.
SFT_TRL_FIELDS: tuple[str, ...] = (
    "learning_rate", "lr_scheduler_type", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "save_steps", "logging_steps", "bf16", "gradient_checkpointing", "padding_free",
)
GRPO_TRL_FIELDS: tuple[str, ...] = (
    "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
    "learning_rate", "beta", "max_steps", "max_completion_length", "temperature", "save_steps", "bf16",
    "gradient_checkpointing",
)
LORA_PEFT_FIELDS: tuple[str, ...] = ("r", "lora_alpha", "lora_dropout", "target_modules")

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
    "self_verification": SelfVerificationConfig,
}


@dataclass
class Recipe:
    """A whole recipe: one attribute per section (SECTIONS), plus the file it came from."""

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
    self_verification: SelfVerificationConfig = field(default_factory=SelfVerificationConfig)
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
