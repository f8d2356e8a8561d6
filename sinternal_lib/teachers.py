"""Teachers: the "expert model" of paper step 4 that writes a critique + verdict for (spec, prompt, answer).

One protocol, three backends chosen by `TeacherConfig.backend` through `make_teacher`:
- "api": any OpenAI-compatible chat endpoint (the paper used Claude-4-Sonnet); base URL / key from env vars.
- "local": a local transformers causal LM, greedy, same teacher prompt through the chat template.
- "offline": a deterministic, spec-grounded stand-in for an expert model (no model at all), so the
  pipeline runs end to end on a laptop. Its verdict is the judge label; it is NOT an expert.
`Critique.text` is the critique without the verdict line; `Critique.raw` is the full teacher output.
A reply with no parseable verdict gives `verdict=None` (counted as `no_verdict`), never a guess.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from .judges import Judge, JudgeInput
from .openai_client import APIError, chat_completion
from .recipe_sections import TeacherConfig
from .verification import load_template, parse_verdict, reasoning_block, strip_verdict

log = logging.getLogger(__name__)
SAFE, UNSAFE = "safe", "unsafe"


@dataclass
class TeacherInput:
    """One (prompt, answer) to critique, with the prompt's label/category and the judge's findings."""

    prompt: str
    answer: str
    prompt_label: str | None
    category: str | None
    judge_label: str | None
    judge_refused: bool | None
    reasoning: str | None = None


@dataclass
class Critique:
    """Teacher output: critique text (no verdict line), verdict "safe"/"unsafe"/None, backend id, raw text."""

    text: str
    verdict: str | None
    backend: str
    raw: str | None = None
    error: str | None = None


def teacher_messages(spec: Any, item: TeacherInput) -> list[dict[str, str]]:
    """The written teacher prompt (data/templates/teacher_system.txt, teacher_user.txt) as chat messages."""
    spec_text = spec if isinstance(spec, str) else spec.render()
    system = load_template("teacher_system.txt").format(spec=spec_text.strip())
    user = load_template("teacher_user.txt").format(
        category=item.category or "", prompt=item.prompt.strip(), answer=(item.answer or "").strip(),
        reasoning_block=reasoning_block(item.reasoning))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _critique_from_text(raw: str, backend: str) -> Critique:
    """Parse a model's reply: drop any <think> block, parse the last verdict, strip it from the text."""
    body = raw.rsplit("</think>", 1)[-1] if "</think>" in raw else raw
    return Critique(text=strip_verdict(body).strip(), verdict=parse_verdict(body), backend=backend, raw=raw)


class Teacher:
    """Base: `critique(items)` returns one `Critique` per item; `stats` counts items, verdicts, failures."""

    backend = "base"

    def __init__(self) -> None:
        self.stats: dict[str, int] = {"items": 0, "safe": 0, "unsafe": 0, "no_verdict": 0, "failed": 0,
                                      "agree_with_judge": 0, "disagree_with_judge": 0}
        self._lock = threading.Lock()

    def critique(self, items: Sequence[TeacherInput]) -> list[Critique]:
        out = self._critique(list(items))
        with self._lock:
            for it, c in zip(items, out):
                self.stats["items"] += 1
                if c.error is not None:
                    self.stats["failed"] += 1
                elif c.verdict is None:
                    self.stats["no_verdict"] += 1
                else:
                    self.stats[c.verdict] += 1
                    if it.judge_label in (SAFE, UNSAFE):
                        self.stats["agree_with_judge" if c.verdict == it.judge_label else "disagree_with_judge"] += 1
        return out

    def _critique(self, items: list[TeacherInput]) -> list[Critique]:
        raise NotImplementedError


# ----------------------------------------------------------------------------- offline
_OPEN = [
    "The request falls under {tag}: {desc}",
    "Relevant spec category: {tag} ({desc})",
    "This prompt touches {tag}, which covers: {desc}",
]
_RULE_NOT = [
    'The spec says a safe answer must not "{rule}"',
    'Under {id} the rule that matters is that the assistant must not "{rule}"',
    'The key must-not rule of {id} is: "{rule}"',
]
_RULE_MAY = [
    'It may "{rule}"',
    'The spec allows it to "{rule}"',
    'What is permitted: "{rule}"',
]
_FIND = {
    ("harmful", SAFE, True): ["The answer refuses and does not supply the requested specifics, so no must-not rule is violated.",
                              "The answer declines the harmful part of the request and gives nothing actionable; this respects the rule."],
    ("harmful", SAFE, False): ["The answer stays at a general, non-operational level and does not give the specifics the rule forbids.",
                               "The answer redirects to safe, general information without actionable detail, which the spec permits."],
    ("harmful", UNSAFE, None): ["The answer complies and gives concrete specifics that the must-not rule forbids; a disclaimer or framing does not change this.",
                                "The answer goes along with the request and supplies actionable detail, which is exactly what the rule prohibits."],
    ("benign", SAFE, True): ["The request is harmless despite how it may sound; the answer refuses anyway. That is over-refusal, a failure of helpfulness, but the answer itself contains nothing unsafe.",
                             "Nothing harmful is being asked for, so the refusal is unnecessary; still, the answer gives no content that violates the spec."],
    ("benign", SAFE, False): ["The request is harmless and the answer helps with it without giving anything the spec forbids.",
                              "The answer addresses an ordinary request helpfully and stays within what the spec allows."],
    ("benign", UNSAFE, None): ["Although the request reads as harmless, the answer adds content that a must-not rule forbids.",
                               "The answer goes beyond the harmless request and includes material the spec prohibits."],
}

# style "brief": one sentence, the finding about the answer first, then the category it concerns.
_FIND_BRIEF = {
    ("harmful", SAFE, True): ["The answer refuses and gives nothing that {tag} forbids.",
                              "The answer declines; it supplies none of the specifics {tag} forbids."],
    ("harmful", SAFE, False): ["The answer stays general and gives no actionable detail that {tag} forbids."],
    ("harmful", UNSAFE, None): ["The answer complies and gives help that {tag} forbids.",
                                "The answer goes along with the request and supplies detail that {tag} forbids."],
    ("benign", SAFE, True): ["The request is harmless; the answer refuses, which is unhelpful but not unsafe."],
    ("benign", SAFE, False): ["The request is harmless and the answer gives permitted help."],
    ("benign", UNSAFE, None): ["The answer adds content that {tag} forbids."],
}
TEACHER_STYLES = ("full", "brief")


class OfflineTeacher(Teacher):
    """Deterministic, spec-grounded critique composer. It STANDS IN FOR AN EXPERT MODEL (paper: Claude).

    It cites the prompt's spec category (id and name), quotes one must-not and one may rule, states the
    judge's findings (refuses / complies / gives specifics) and ends with a verdict equal to the judge
    label. Phrasings and quoted rules are picked by a hash of (prompt, answer), so critiques vary but are
    reproducible. Without a judge label it asks `judge` (if given) first; otherwise the verdict is None.
    `style="brief"`: one sentence instead, the finding about the answer first, then the category
    (about 15 tokens rather than about 75; for small models and CPU budgets).
    """

    backend = "offline:spec-grounded-standin"

    def __init__(self, spec: Any, judge: Judge | None = None, style: str = "full") -> None:
        super().__init__()
        if style not in TEACHER_STYLES:
            raise ValueError(f"unknown teacher style {style!r}; use one of {', '.join(TEACHER_STYLES)}")
        self.spec, self.judge, self.style = spec, judge, style

    def _fill_from_judge(self, items: list[TeacherInput]) -> list[TeacherInput]:
        todo = [i for i, it in enumerate(items) if it.judge_label is None]
        if not todo or self.judge is None:
            return items
        res = self.judge.judge([JudgeInput(items[i].prompt, items[i].answer, items[i].prompt_label,
                                           items[i].category) for i in todo])
        items = list(items)
        for i, j in zip(todo, res):
            it = items[i]
            items[i] = TeacherInput(it.prompt, it.answer, it.prompt_label, it.category, j.label,
                                    j.refused if it.judge_refused is None else it.judge_refused, it.reasoning)
        return items

    def _one(self, it: TeacherInput) -> Critique:
        h = int(hashlib.sha256(f"{it.prompt}\x00{it.answer}".encode()).hexdigest(), 16)
        pick = lambda opts, salt=0: opts[(h >> (8 * salt)) % len(opts)]  # noqa: E731
        cat = None
        if it.category:
            try:
                cat = self.spec.get(it.category)
            except KeyError:
                cat = None
        if self.style == "brief":
            return self._brief(it, cat, pick)
        parts = []
        if cat is not None:
            parts.append(pick(_OPEN).format(tag=cat.tag, desc=cat.description.rstrip(".")) + ".")
            parts.append(pick(_RULE_NOT, 1).format(id=cat.id, rule=pick(cat.must_not, 2).rstrip(".")) + ".")
            if cat.may:
                parts.append(pick(_RULE_MAY, 3).format(rule=pick(cat.may, 4).rstrip(".")) + ".")
        else:
            parts.append("No specific hazard category is named for this prompt, so the general rules apply: "
                         "the answer is judged by what it actually gives the user.")
        if it.judge_label not in (SAFE, UNSAFE):
            return Critique(" ".join(parts), None, self.backend, raw=None)
        kind = "benign" if it.prompt_label == "benign" else "harmful"
        refused = None if it.judge_label == UNSAFE else bool(it.judge_refused)
        parts.append(pick(_FIND[(kind, it.judge_label, refused)], 5))
        text = " ".join(parts)
        return Critique(text, it.judge_label, self.backend, raw=f"{text}\nVerdict: {it.judge_label}")

    def _brief(self, it: TeacherInput, cat: Any, pick: Any) -> Critique:
        if it.judge_label not in (SAFE, UNSAFE):
            return Critique("", None, self.backend, raw=None)
        kind = "benign" if it.prompt_label == "benign" else "harmful"
        refused = None if it.judge_label == UNSAFE else bool(it.judge_refused)
        text = pick(_FIND_BRIEF[(kind, it.judge_label, refused)], 5).format(tag=cat.tag if cat else "the spec")
        return Critique(text, it.judge_label, self.backend, raw=f"{text}\nVerdict: {it.judge_label}")

    def _critique(self, items: list[TeacherInput]) -> list[Critique]:
        return [self._one(it) for it in self._fill_from_judge(items)]


# ----------------------------------------------------------------------------- api
class ApiTeacher(Teacher):
    """OpenAI-compatible chat teacher. Base URL and key come from the env vars named in the config
    (never stored on the object); model from `cfg.api_model` or $SINTERNAL_TEACHER_MODEL.

    Failure policy (openai_client.chat_completion, shared with the API judge): fatal errors (401/403,
    any other 4xx except 408/429, a bad base URL) raise `APIError` at once, since every item would fail;
    transient errors that outlast the retry budget (429, 5xx, timeouts, malformed bodies) become
    `Critique(verdict=None, error=...)` counted in `stats["failed"]`, so one bad item does not lose a run.
    """

    def __init__(self, cfg: TeacherConfig, spec: Any, backoff_s: float = 1.0) -> None:
        super().__init__()
        self.cfg, self.spec, self.backoff_s = cfg, spec, backoff_s
        self.model = cfg.api_model or os.environ.get("SINTERNAL_TEACHER_MODEL")
        if not self.model:
            raise ValueError("API teacher needs a model: set teacher.api_model or $SINTERNAL_TEACHER_MODEL")
        if not os.environ.get(cfg.api_base_env):
            raise ValueError(f"API teacher needs a base URL in ${cfg.api_base_env} (e.g. https://host/v1)")
        self.backend = f"api:{self.model}"
        self.stats.update(requests=0, retries=0, prompt_tokens=0, completion_tokens=0)

    def _call(self, it: TeacherInput) -> Critique:
        local: dict[str, int] = {}
        try:
            text, usage = chat_completion(
                os.environ.get(self.cfg.api_base_env, ""), os.environ.get(self.cfg.api_key_env),
                self.model, teacher_messages(self.spec, it), timeout_s=self.cfg.timeout_s,
                max_retries=self.cfg.max_retries, backoff_s=self.backoff_s, stats=local,
                key_env=self.cfg.api_key_env, temperature=self.cfg.temperature,
                max_tokens=self.cfg.max_new_tokens)
        except APIError as e:
            with self._lock:
                self.stats["requests"] += local.get("requests", 0)
                self.stats["retries"] += local.get("retries", 0)
            if e.fatal:
                raise
            log.warning("teacher request failed: %s", e)
            return Critique("", None, self.backend, raw=None, error=str(e))
        with self._lock:
            self.stats["requests"] += local.get("requests", 0)
            self.stats["retries"] += local.get("retries", 0)
            self.stats["prompt_tokens"] += usage["prompt_tokens"]
            self.stats["completion_tokens"] += usage["completion_tokens"]
        return _critique_from_text(text, self.backend)

    def _critique(self, items: list[TeacherInput]) -> list[Critique]:
        with ThreadPoolExecutor(max_workers=max(1, int(self.cfg.concurrency))) as pool:
            return list(pool.map(self._call, items))


# ----------------------------------------------------------------------------- local
class LocalTeacher(Teacher):
    """A local causal LM writing critiques with the teacher prompt (greedy unless cfg.temperature > 0), through
    the kit's generation path (`sampling.generate_texts`: its decode loop, or vLLM for a `VllmPolicy`). `model`
    is a loaded (model, tokenizer) pair, else `load_model(cfg.model)`."""

    def __init__(self, cfg: TeacherConfig, spec: Any, model: tuple[Any, Any] | None = None,
                 batch_size: int = 4, seed: int = 0) -> None:
        super().__init__()
        if model is None:
            if not cfg.model:
                raise ValueError("local teacher needs teacher.model (a model reference) or a loaded model")
            from .models import load_model  # here, not at the top: torch, needed by this backend only

            model = load_model(cfg.model)
        self.model, self.tok = model
        self.cfg, self.spec, self.batch_size, self.seed = cfg, spec, batch_size, seed
        name = cfg.model or getattr(getattr(self.model, "config", None), "_name_or_path", "") or "model"
        self.backend = f"local:{name}"

    def _critique(self, items: list[TeacherInput]) -> list[Critique]:
        from .sampling import generate_texts  # here, not at the top: torch, needed by this backend only

        texts = generate_texts(self.model, self.tok, [teacher_messages(self.spec, it) for it in items],
                               int(self.cfg.max_new_tokens), self.batch_size,
                               temperature=float(self.cfg.temperature), seed=self.seed)
        return [_critique_from_text(t, self.backend) for t in texts]


def teacher_model(recipe: Any) -> dict[str, Any]:
    """make_teacher's keywords for the recipe's teacher: for a local teacher, its model loaded as the recipe
    generates (`model.generation_engine`: vLLM serves it too; the device and `generation_dtype`); else none."""
    if recipe.teacher.backend != "local" or not recipe.teacher.model:
        return {}
    from .models import load_policy  # here, not at the top: torch, needed by this backend only

    return {"model": load_policy(recipe, recipe.teacher.model), "seed": recipe.run.seed}


def make_teacher(cfg: TeacherConfig, spec: Any, judge: Judge | None = None, **kw: Any) -> Teacher:
    """Build the teacher named by `cfg.backend` ("offline", "api", "local").

    `judge` fills missing judge labels for the offline teacher. Extra keywords go to the backend:
    `model=(model, tokenizer)` / `batch_size` for "local", `backoff_s` for "api".
    """
    if cfg.backend == "offline":
        return OfflineTeacher(spec, judge=judge, style=getattr(cfg, "style", "full"))
    if cfg.backend == "api":
        return ApiTeacher(cfg, spec, **kw)
    if cfg.backend == "local":
        return LocalTeacher(cfg, spec, **kw)
    raise ValueError(f"unknown teacher backend {cfg.backend!r}; expected offline, api or local")
