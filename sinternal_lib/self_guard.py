"""Guarded generation (stage 06, beyond the paper): answer, check the answer, act on the check.

Every policy has one signature, `policy(model, tok, prompts, *, guard, cfg) -> list[GuardedAnswer]`:
- `plain`: one greedy answer per prompt (what stage 05 scores); the guard is not asked;
- `regenerate`: a greedy draft, then `guard.check`; a draft the guard calls unsafe is replaced by a new
  sample, up to `cfg.max_retries` times, and a prompt whose last draft is still unsafe gets `cfg.refusal`;
- `best_of_n`: `cfg.best_of_n` samples, and the one the guard scores least unsafe is kept (ties: the first).
A guard is `SelfGuard` (the answering model verifies its own answer with the kit's verifier prompt:
forced-choice P(unsafe), or a written critique and verdict) or `JudgeGuard` (the recipe's judge). `POLICIES`
names the five combinations the recipe lists (`recipe_sections.GUARD_POLICIES`). All generation goes through
the kit's batched sampler (`sampling.sample_responses`); retries re-sample only the prompts still flagged.
Cost is counted per prompt: generated answer tokens of every draft plus tokens the guard generated (a
forced-choice check generates none, it costs one forward pass per draft), and wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from .datasets import BENIGN, HARMFUL, Record
from .forced_choice import forced_choice_scores
from .judges import Judge, JudgeInput
from .recipe_sections import GUARD_POLICIES, Recipe
from .sampling import Sample, sample_responses
from .verification import UNSAFE, build_verification_messages, parse_verdict


@dataclass
class GuardedAnswer:
    """What one prompt got from a policy. `text`: the full generation shown to the user (the refusal when
    `refused`); `answer`: its final answer (reasoning split off), what judges and guards read;
    `tokens_generated`: answer tokens of every draft plus tokens the guard generated; `attempts`: drafts
    generated; `refused`: the policy replaced the drafts with its refusal; `wall_s`: the policy's wall time
    over the whole batch divided by the number of prompts (drafts are batched, so a prompt has no time of
    its own); `scores`: the guard's score of each draft checked (higher = more unsafe)."""

    id: str
    text: str
    answer: str
    tokens_generated: int
    attempts: int
    refused: bool
    wall_s: float
    scores: list[float] = field(default_factory=list)


@dataclass
class GuardSettings:
    """The knobs every policy reads (from the recipe's `self_verification` section and model section)."""

    max_new_tokens: int = 96
    batch_size: int = 8
    max_retries: int = 2
    best_of_n: int = 4
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int = 0
    refusal: str = "I can't help with that."
    system_prompt: str | None = None
    reasoning_style: str = "auto"

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "GuardSettings":
        sv = recipe.self_verification
        return cls(max_new_tokens=sv.max_new_tokens, batch_size=sv.batch_size, max_retries=sv.max_retries,
                   best_of_n=sv.best_of_n, temperature=sv.temperature, top_p=sv.top_p, seed=recipe.run.seed,
                   refusal=sv.refusal, system_prompt=recipe.model.system_prompt,
                   reasoning_style=recipe.model.reasoning_style)


# ----------------------------------------------------------------------------- guards
@dataclass
class Check:
    """A guard's verdict on one draft: unsafe or not, a score for ranking (higher = more unsafe) and the
    tokens the guard generated to decide."""

    unsafe: bool
    score: float
    tokens: int = 0


class Guard(Protocol):
    name: str

    def check(self, prompts: Sequence[Record], answers: Sequence[str]) -> list[Check]: ...


class SelfGuard:
    """The answering model as its own verifier, asked with the kit's verifier prompt under `spec`.

    mode "forced_choice": P(unsafe) of the verdict word right after `Verdict:` (`forced_choice`), unsafe when
    above `threshold`; no tokens generated, defined even for a model that never writes a verdict line.
    mode "generate": the model writes its critique and verdict (greedy, `max_new_tokens`); unsafe when the
    verdict line says so, score 1 / 0, and 0.5 with no verdict (then the draft passes: no verdict is no veto).
    """

    def __init__(self, model: Any, tok: Any, spec: Any, *, mode: str = "forced_choice", threshold: float = 0.5,
                 batch_size: int = 8, max_new_tokens: int = 96) -> None:
        if mode not in ("forced_choice", "generate"):
            raise ValueError(f"unknown self-verdict mode {mode!r}; use forced_choice or generate")
        self.model, self.tok, self.spec, self.mode = model, tok, spec, mode
        self.threshold, self.batch_size, self.max_new_tokens = threshold, batch_size, max_new_tokens
        self.name = f"self ({mode})"

    def check(self, prompts: Sequence[Record], answers: Sequence[str]) -> list[Check]:
        msgs = [build_verification_messages(self.spec, r.prompt, a) for r, a in zip(prompts, answers)]
        if not msgs:
            return []
        if self.mode == "forced_choice":
            p = forced_choice_scores(self.model, self.tok, msgs, batch_size=self.batch_size)
            return [Check(x > self.threshold, float(x)) for x in p]
        outs = sample_responses(self.model, self.tok, [(str(i), m) for i, m in enumerate(msgs)], temperature=0.0,
                                max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, progress=False)
        checks = []
        for s in outs:
            v = parse_verdict(s.text)
            checks.append(Check(v == UNSAFE, {None: 0.5, UNSAFE: 1.0}.get(v, 0.0), s.num_tokens))
        return checks


class JudgeGuard:
    """The recipe's judge as an external guard: unsafe when it labels the draft unsafe (score 1; safe 0; no
    verdict 0.5, which passes). With `use_prompt_label` it is told whether the prompt is harmful or benign,
    as in evaluation; the offline matcher needs that label, and then knows which prompts are harmful."""

    def __init__(self, judge: Judge, use_prompt_label: bool = True) -> None:
        self.judge, self.use_prompt_label = judge, use_prompt_label
        self.name = f"judge ({judge.backend})"

    def check(self, prompts: Sequence[Record], answers: Sequence[str]) -> list[Check]:
        items = [JudgeInput(r.prompt, a, r.label if self.use_prompt_label and r.label in (HARMFUL, BENIGN) else None,
                            r.category) for r, a in zip(prompts, answers)]
        out = self.judge.judge(items) if items else []
        return [Check(j.label == UNSAFE, {None: 0.5, UNSAFE: 1.0}.get(j.label, 0.0)) for j in out]


# ----------------------------------------------------------------------------- policies
def _sample(model: Any, tok: Any, prompts: Sequence[Record], cfg: GuardSettings, *, n: int = 1,
            greedy: bool = False, seed: int | None = None) -> dict[str, list[Sample]]:
    """{prompt id: its n samples in order}: greedy, or sampled at the settings' temperature / top-p."""
    out = sample_responses(model, tok, list(prompts), num_samples=n, max_new_tokens=cfg.max_new_tokens,
                           temperature=0.0 if greedy else cfg.temperature, top_p=1.0 if greedy else cfg.top_p,
                           batch_size=cfg.batch_size, seed=cfg.seed if seed is None else seed,
                           system_prompt=cfg.system_prompt, reasoning_style=cfg.reasoning_style, progress=False)
    by_id: dict[str, list[Sample]] = {}
    for s in out:
        by_id.setdefault(s.prompt_id, []).append(s)
    return by_id


def _check_ids(prompts: Sequence[Record]) -> None:
    ids = [r.id for r in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("prompt ids must be unique within one policy call (prefix them with the benchmark)")


def plain(model: Any, tok: Any, prompts: Sequence[Record], *, guard: Guard | None = None,
          cfg: GuardSettings) -> list[GuardedAnswer]:
    """One greedy answer per prompt, unchecked (the guard, if given, is not asked)."""
    _check_ids(prompts)
    t0 = time.perf_counter()
    drafts = _sample(model, tok, prompts, cfg, greedy=True)
    wall = (time.perf_counter() - t0) / max(1, len(prompts))
    return [GuardedAnswer(r.id, s.text, s.answer, s.num_tokens, 1, False, wall)
            for r in prompts for s in drafts[r.id][:1]]


def regenerate(model: Any, tok: Any, prompts: Sequence[Record], *, guard: Guard,
               cfg: GuardSettings) -> list[GuardedAnswer]:
    """Greedy draft -> guard; each draft called unsafe is re-sampled, up to `cfg.max_retries` times, and a
    prompt still unsafe after the last check gets `cfg.refusal` (so at most max_retries + 1 drafts)."""
    _check_ids(prompts)
    t0 = time.perf_counter()
    first = _sample(model, tok, prompts, cfg, greedy=True)
    cur = {r.id: first[r.id][0] for r in prompts}
    tokens = {r.id: cur[r.id].num_tokens for r in prompts}
    attempts = {r.id: 1 for r in prompts}
    scores: dict[str, list[float]] = {r.id: [] for r in prompts}
    refused: set[str] = set()
    pending = list(prompts)
    for retry in range(cfg.max_retries + 1):
        checks = guard.check(pending, [cur[r.id].answer for r in pending])
        for r, c in zip(pending, checks):
            tokens[r.id] += c.tokens
            scores[r.id].append(c.score)
        pending = [r for r, c in zip(pending, checks) if c.unsafe]
        if not pending:
            break
        if retry == cfg.max_retries:  # the last draft failed too: refuse with a short reason
            refused.update(r.id for r in pending)
            break
        # a fresh seed per round, so a retry is a new sample, not the same draw again
        again = _sample(model, tok, pending, cfg, seed=cfg.seed + 1000 * (retry + 1))
        for r in pending:
            cur[r.id] = again[r.id][0]
            tokens[r.id] += cur[r.id].num_tokens
            attempts[r.id] += 1
    wall = (time.perf_counter() - t0) / max(1, len(prompts))
    out = []
    for r in prompts:
        s, no = cur[r.id], r.id in refused
        out.append(GuardedAnswer(r.id, cfg.refusal if no else s.text, cfg.refusal if no else s.answer,
                                 tokens[r.id], attempts[r.id], no, wall, scores[r.id]))
    return out


def best_of_n(model: Any, tok: Any, prompts: Sequence[Record], *, guard: Guard,
              cfg: GuardSettings) -> list[GuardedAnswer]:
    """`cfg.best_of_n` samples per prompt, each scored by the guard; the lowest score wins (ties: the first).
    Never refuses: when every sample looks unsafe the least unsafe one is still returned."""
    _check_ids(prompts)
    t0 = time.perf_counter()
    samples = _sample(model, tok, prompts, cfg, n=cfg.best_of_n)
    flat = [(r, s) for r in prompts for s in samples[r.id]]
    checks = guard.check([r for r, _ in flat], [s.answer for _, s in flat])
    by_id: dict[str, list[tuple[Sample, Check]]] = {}
    for (r, s), c in zip(flat, checks):
        by_id.setdefault(r.id, []).append((s, c))
    wall = (time.perf_counter() - t0) / max(1, len(prompts))
    out = []
    for r in prompts:
        cand = by_id[r.id]
        s, _ = min(cand, key=lambda sc: sc[1].score)  # min keeps the first of equal scores
        out.append(GuardedAnswer(r.id, s.text, s.answer, sum(x.num_tokens + c.tokens for x, c in cand),
                                 len(cand), False, wall, [c.score for _, c in cand]))
    return out


Policy = Callable[..., list[GuardedAnswer]]
# name -> (policy function, which guard: None, "self" or "judge"); the names are the recipe's
POLICIES: dict[str, tuple[Policy, str | None]] = {
    "plain": (plain, None),
    "self_regenerate": (regenerate, "self"),
    "self_best_of_n": (best_of_n, "self"),
    "judge_regenerate": (regenerate, "judge"),
    "judge_best_of_n": (best_of_n, "judge"),
}
assert tuple(POLICIES) == GUARD_POLICIES, "POLICIES must match recipe_sections.GUARD_POLICIES"


def run_policy(name: str, model: Any, tok: Any, prompts: Sequence[Record], *, guards: dict[str, Guard],
               cfg: GuardSettings) -> list[GuardedAnswer]:
    """Run the policy the recipe calls `name` with its guard from `guards` ({"self": ..., "judge": ...})."""
    fn, kind = POLICIES[name]
    return fn(model, tok, prompts, guard=guards.get(kind) if kind else None, cfg=cfg)
