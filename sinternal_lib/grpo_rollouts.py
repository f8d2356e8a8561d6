"""GRPO rollouts through the kit's decode loop (`decoding.decode`) instead of TRL's `model.generate`.

Recipe `grpo.rollouts: kit` (default `trl`; the CPU recipe names `kit`). Why it exists: a GRPO step on CPU
spends about half its time in TRL's rollouts, `model.generate` keeps decoding finished rows to the batch's
longest one, and an unmerged LoRA doubles the decode time of a plain model. Measured on the CPU recipe (16
rollouts of <= 32 tokens): 1.28x per GRPO step over TRL's generate (docs/LOG.md, 2026-12-06, session 14; until
then the merged copy had run the policy itself, see `_merged_policy`). Not measured on a GPU, where the
adapter stays unmerged, so it is not the default there.

`KitRolloutTrainer` is TRL's `GRPOTrainer` with one method overridden: `_generate_single_turn`, TRL's plain
sampling path (left-padded prompts -> completion ids that end with the stop token, or run to
`max_completion_length`). The override samples with the same temperature and top-p, from the same policy
(unwrapped, gradient checkpointing off, as TRL does), and returns what TRL returns. Everything the loop does
not do goes to TRL's own path unchanged: vLLM, continuous batching, images or other multimodal inputs, tool
images, top-k, min-p, a repetition penalty, a cache implementation or extra `generation_kwargs`.

Merged weights (CPU only): where the policy is a LoRA on a full-precision base (GRPO's `grpo.load_in_4bit:
false`), the rollouts run on a plain copy of the model whose weights are `W + scale * B @ A`, rounded once to
the base dtype and refreshed from the adapter before every rollout call (TRL's vLLM path syncs merged
weights the same way). An unmerged LoRA adds a cast and two small matmuls to every projection of every
decode step: about twice the decode time of the plain model on a 2-core CPU (docs/LOG.md, same entry).
The copy costs one more set of base weights, so it is made only on CPU; a 4-bit base, a sharded model or
LoRA dropout > 0 (TRL rolls out in train mode, dropout on) rolls out through the adapter unmerged.

Seeds: each call draws from a generator seeded by (run seed, global step, process, call of the step), so a
run resumed from a checkpoint rolls out what the uninterrupted run rolled out (TRL restores its RNG state
for the same end). `rollouts_by` says which path the last call took (it goes into the init's summary).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation

from .decoding import decode

__all__ = ["KitRolloutTrainer", "rollout_seed"]


def rollout_seed(seed: int, step: int, process: int, call: int) -> int:
    """The sampling seed of one rollout call: distinct per step, process and call, the same on a rerun."""
    return (seed * 1_000_003 + step * 10_007 + process * 101 + call) % (2**63 - 1)


class KitRolloutTrainer(GRPOTrainer):
    """`GRPOTrainer` whose plain sampling rollouts run through `decoding.decode` (module docstring)."""

    rollouts_by: str = "none yet"
    _calls: tuple[int, int] = (-1, 0)  # (global step, calls made at that step)
    _merged: Any = None  # the plain rollout copy (merged weights), built at the first rollout call
    _pairs: list[tuple[Any, Any]] | None = None  # (LoRA layer of the policy, its plain Linear in the copy)

    def _merged_policy(self, policy: Any) -> Any | None:
        """The plain copy of `policy` with the adapter merged into its weights, refreshed now; None where
        merging does not apply (module docstring)."""
        from peft import PeftModel
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer

        if self._merged is None:
            if (self.accelerator.device.type != "cpu" or self._dist.is_zero3 or self.is_fsdp_enabled
                    or not isinstance(policy, PeftModel)):
                return None
            loras = [(n, m) for n, m in policy.get_base_model().named_modules() if isinstance(m, LoraLayer)]
            if not loras or any(type(m) is not LoraLinear or type(m.base_layer) is not torch.nn.Linear
                                or len(m.active_adapters) != 1 or m.merged
                                or not isinstance(m.lora_dropout[m.active_adapters[0]], torch.nn.Identity)
                                for _, m in loras):
                return None
            # A deep copy of the wrapped model, each LoRA wrapper replaced by its base Linear.
            plain = copy.deepcopy(policy.get_base_model()).eval()
            # TRL replaces the policy's forward with its fused LM head, a closure over the *original* model's
            # bound forward; a deep copy keeps the closure, so the copy ran the policy itself, LoRA unmerged
            # (docs/LOG.md, 2026-12-06, session 14). The copy only decodes: the class forwards serve it.
            for mod in plain.modules():
                mod.__dict__.pop("forward", None)
            for name, _ in loras:
                parent_name, _, child = name.rpartition(".")
                parent = plain.get_submodule(parent_name) if parent_name else plain
                setattr(parent, child, getattr(parent, child).base_layer)
            plain.requires_grad_(False)
            self._merged = plain
            self._pairs = [(m, plain.get_submodule(n)) for n, m in loras]
        with torch.no_grad():
            for lora, linear in self._pairs:
                a = lora.active_adapters[0]
                w = lora.base_layer.weight
                linear.weight.copy_((w.float() + lora.get_delta_weight(a).float()).to(w.dtype))
        return self._merged

    def kit_rollouts_unsupported(self, images: Any, multimodal_fields: Any, has_tool_images: bool) -> str | None:
        """Why this call must go to TRL's generation, or None when the kit's loop does the same sampling."""
        a = self.args
        reasons = {
            "vLLM": self.use_vllm, "continuous batching": self.use_transformers_continuous_batching,
            "images": bool(images) or has_tool_images, "multimodal inputs": bool(multimodal_fields),
            "top_k": self.top_k not in (None, 0), "min_p": self.min_p is not None,
            "repetition_penalty": self.repetition_penalty != 1.0,
            "cache_implementation": a.cache_implementation is not None, "generation_kwargs": bool(a.generation_kwargs),
        }
        why = [k for k, v in reasons.items() if v]
        return ", ".join(why) or None

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations,
                              has_tool_images=False):  # noqa: ANN001 (TRL's signature)
        why = self.kit_rollouts_unsupported(images, multimodal_fields, has_tool_images)
        if why:
            self.rollouts_by = f"trl ({why})"
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        step = self.state.global_step
        call = self._calls[1] + 1 if self._calls[0] == step else 0
        self._calls = (step, call)
        seed = rollout_seed(self.args.seed, step, self.accelerator.process_index, call)
        with (
            unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                        gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                        generation_kwargs=self.generation_kwargs,
                                        gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs)
            as policy,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
        ):
            merged = self._merged_policy(policy)
            out = decode(merged if merged is not None else policy, prompt_ids, max_new_tokens=self.max_completion_length,
                         stop_ids=set(self.eos_token_ids), pad_id=self._tokenizer.pad_token_id, do_sample=True,
                         temperature=self.temperature, top_p=self.top_p, seed=seed, keep_stop=True)
        self.rollouts_by = "kit, merged weights" if merged is not None else "kit"
        return [ids for ids, _ in out], None  # None: no sampling logprobs, as TRL's generate path
