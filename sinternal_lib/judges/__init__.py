"""Safety judges: (prompt, response, optional prompt label) -> Judgement, batched and cached.

Backends: "matcher" (offline refusal phrases, the default), "guard" (Qwen3Guard-Gen / Llama-Guard-3 via
transformers), "api" (rubric judge over an OpenAI-compatible chat API). Build one with
`make_judge(JudgeConfig(...), cache_dir=...)` and call `judge.judge([JudgeInput(...), ...])`.
Labels: "safe"/"unsafe" (unsafe = positive class) or None when there is no verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..recipe_sections import JudgeConfig
from .api import api_judge_from_config
from .base import Judge, JudgeCache, JudgeInput, Judgement, cache_key, combine_label, final_answer
from .guard import GuardJudge
from .matcher import MatcherJudge, is_refusal, refusal_cue

BACKENDS = ("matcher", "guard", "api")


def make_judge(cfg: JudgeConfig | None = None, cache_dir: str | Path | None = None, **kwargs: Any) -> Judge:
    """Build the judge named by `cfg.backend` (a `JudgeConfig`; None = matcher defaults).

    `kwargs` go to the backend: guard takes `model=`, `tokenizer=` (preloaded), `guard_format=`,
    `controversial_as=`; api takes `threshold=`, `backoff_s=`. Caching needs `cache_dir` and `cfg.cache`.
    """
    if cfg is None:
        cfg = JudgeConfig()
    use_cache = bool(getattr(cfg, "cache", True))
    if cfg.backend == "matcher":
        return MatcherJudge(cache_dir=cache_dir, use_cache=use_cache, **kwargs)
    if cfg.backend == "guard":
        return GuardJudge(model_ref=cfg.model, batch_size=cfg.batch_size, cache_dir=cache_dir,
                          use_cache=use_cache, **kwargs)
    if cfg.backend == "api":
        return api_judge_from_config(cfg, cache_dir=cache_dir, **kwargs)
    raise ValueError(f"unknown judge backend {cfg.backend!r}; choose one of {BACKENDS}")


__all__ = ["BACKENDS", "Judge", "JudgeCache", "JudgeInput", "Judgement", "MatcherJudge", "cache_key",
           "combine_label", "final_answer", "is_refusal", "make_judge", "refusal_cue"]
