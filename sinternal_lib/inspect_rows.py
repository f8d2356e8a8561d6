"""What the model sees: training rows token by token, the teacher's input and output, one GRPO group.

Read-only views for notebooks 02 and 04, each returning a string or a pandas DataFrame. SFT rows are
tokenized the way TRL's `SFTTrainer` does with the kit's `SFTConfig` (conversational prompt/completion,
`completion_only_loss=True`, `assistant_only_loss=False`): the loss falls on the tokens after the common
prefix of the tokenized prompt (with the generation prompt) and the tokenized prompt + completion.
Advantages follow TRL's GRPO (`scale_rewards` "group" by default). Text the judge did not call safe is
redacted with `report.redact` unless `show_unsafe` (recipe switch `evaluate.show_unsafe`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from . import jsonl
from .recipe_sections import Recipe
from .report import redact
from .spec import SYSTEM_TEMPLATES, Spec, SpecText, load_spec, spec_text
from .teachers import TeacherInput, teacher_messages
from .verification import build_verification_messages, strip_verdict

LOSS_OPEN, LOSS_CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧ around the tokens that carry the loss
_USER_RE = re.compile(r"### Prompt\n(?P<prompt>.*?)\n(?:\n### Reasoning\n(?P<reasoning>.*?)\n)?"
                      r"\n### Candidate answer\n(?P<answer>.*)\Z", re.DOTALL)


# ----------------------------------------------------------------------------- SFT rows, token by token
def loss_mask(row: dict, tokenizer: Any) -> tuple[list[int], list[int]]:
    """(input_ids, mask) of one prompt/completion row as TRL's SFTTrainer tokenizes it with the kit's
    SFTConfig; mask[i] is 1 where token i carries the loss (its label is not -100)."""
    def ids(messages: list[dict], **kw: Any) -> list[int]:
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"])

    prompt = ids(row["prompt"], add_generation_prompt=True)
    full = ids(row["prompt"] + row["completion"])
    n = 0  # TRL: the completion starts where the two tokenizations diverge (common_prefix_length)
    while n < min(len(prompt), len(full)) and prompt[n] == full[n]:
        n += 1
    return full, [0] * n + [1] * (len(full) - n)


def render_marked(tokenizer: Any, ids: Sequence[int], mask: Sequence[int]) -> str:
    """The decoded tokens with every run of loss-carrying tokens wrapped in ⟦ ⟧ (special tokens kept)."""
    out, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            text = tokenizer.decode(list(ids[start:i]), skip_special_tokens=False)
            out.append(f"{LOSS_OPEN}{text}{LOSS_CLOSE}" if mask[start] else text)
            start = i
    return "".join(out)


def split_candidate(user_content: str) -> dict[str, str | None] | None:
    """{"prompt", "reasoning", "answer"} of a verifier user turn (data/templates/verify_user.txt), else None."""
    m = _USER_RE.search(user_content)
    return m.groupdict() if m else None


def _is_unsafe(row: dict) -> bool:
    return row.get("label") == "unsafe"


def _redact_candidate(text: str, row: dict) -> str:
    """`text` (a rendered row) with the candidate answer and reasoning of the row's verifier prompt replaced
    by `report.redact`'s marker, in the part before the loss tokens only; where they cannot be located
    there, that whole part is withheld."""
    cut = text.find(LOSS_OPEN) if LOSS_OPEN in text else len(text)
    prompt_part, rest = text[:cut], text[cut:]
    user = next((m["content"] for m in row["prompt"] if m["role"] == "user"), "")
    parts = split_candidate(user)
    for header, key in (("### Reasoning\n", "reasoning"), ("### Candidate answer\n", "answer")):
        value = (parts or {}).get(key)
        if parts is None or (value and header + value not in prompt_part):
            return ("[redacted: the prompt holds an answer the judge labelled unsafe, which could not be located "
                    "for a finer redaction; pass show_unsafe=True to see it]\n" + rest)
        if value:
            prompt_part = prompt_part.replace(header + value, header + redact(value, "unsafe"), 1)
    return prompt_part + rest


def sft_row_view(row: dict, tokenizer: Any, show_unsafe: bool = False) -> str:
    """One SFT row rendered with the chat template exactly as the trainer sees it, loss tokens in ⟦ ⟧,
    under a header (id, labels, token counts). In a row labelled unsafe the candidate answer (and any
    reasoning) is redacted unless `show_unsafe`; template, request, critique and verdict stay visible.
    Token counts are of the real row."""
    ids, mask = loss_mask(row, tokenizer)
    text = render_marked(tokenizer, ids, mask)
    if _is_unsafe(row) and not show_unsafe:
        text = _redact_candidate(text, row)
    head = (f"--- {row.get('id')}: {row.get('prompt_label')} prompt, target label {row.get('label')}, "
            f"category {row.get('category')}; {len(ids)} tokens, {sum(mask)} carry the loss "
            f"(in {LOSS_OPEN} {LOSS_CLOSE}) ---")
    return f"{head}\n{text}"


def pick_training_rows(rows: Sequence[dict]) -> list[dict]:
    """Up to three verification rows: a harmful prompt's unsafe and safe answers (one contrastive pair,
    the same prompt where one has both) and a benign prompt's answer."""
    def first(pl: str, lab: str, pid: str | None = None) -> dict | None:
        return next((r for r in rows if r.get("prompt_label") == pl and r.get("label") == lab
                     and pid in (None, r.get("prompt_id"))), None)

    both = [r["prompt_id"] for r in rows if r.get("prompt_label") == "harmful" and r.get("label") == "unsafe"
            and first("harmful", "safe", r.get("prompt_id"))]
    pid = both[0] if both else None
    picked = [first("harmful", "unsafe", pid), first("harmful", "safe", pid),
              first("benign", "safe") or first("benign", "unsafe")]
    return [r for r in picked if r is not None]


def sft_rows_view(rows: Sequence[dict], tokenizer: Any, show_unsafe: bool = False) -> str:
    """`sft_row_view` of the rows `pick_training_rows` picks, one after the other."""
    return "\n\n".join(sft_row_view(r, tokenizer, show_unsafe) for r in pick_training_rows(rows))


# ----------------------------------------------------------------------------- teacher and spec
def normalise_critique(text: str, spec: Spec) -> str:
    """A critique with the spec's words for its category replaced by placeholders ({category} for the
    tag, {description}, {must_not}, {may}, {id}, {name}), so critiques from one template compare equal."""
    subs: list[tuple[str, str]] = []
    for c in spec.categories:
        subs += [(c.tag, "{category}"), (c.description.rstrip("."), "{description}")]
        subs += [(r.rstrip("."), "{must_not}") for r in c.must_not] + [(r.rstrip("."), "{may}") for r in c.may]
    for old, new in sorted(subs, key=lambda s: -len(s[0])):
        text = text.replace(old, new)
    words = sorted({(c.id, "{id}") for c in spec.categories} | {(c.name, "{name}") for c in spec.categories},
                   key=lambda s: -len(s[0]))
    for old, new in words:
        text = re.sub(rf"(?<![\w{{]){re.escape(old)}(?![\w}}])", new, text)
    return text


def critique_templates(rows: Sequence[dict], spec: Spec) -> Any:
    """pandas.DataFrame: the distinct critiques of the rows (verdict line stripped, category words
    normalised by `normalise_critique`) per prompt label and verdict, with counts, most frequent first."""
    import pandas as pd  # here, not at the top: pandas takes a second to import

    counts = Counter((r.get("prompt_label"), r.get("label"),
                      normalise_critique(strip_verdict(r["completion"][0]["content"]), spec)) for r in rows)
    out = pd.DataFrame([{"template": t, "prompt_label": pl, "verdict": v, "rows": n}
                        for (pl, v, t), n in counts.items()], columns=["template", "prompt_label", "verdict", "rows"])
    out["share"] = (out["rows"] / max(1, len(rows))).round(3)
    return out.sort_values(["rows", "template"], ascending=[False, True], ignore_index=True)


def teacher_prompt(recipe: Recipe, row: dict, show_unsafe: bool = False) -> str:
    """The exact chat messages an API or local teacher is sent for this row's (prompt, answer): stage 02
    gives the teacher the spec file rendered in full (`teachers.teacher_messages`). The answer of a row
    labelled unsafe is redacted unless `show_unsafe`."""
    user = next(m["content"] for m in row["prompt"] if m["role"] == "user")
    parts = split_candidate(user)
    if parts is None:
        raise ValueError(f"row {row.get('id')}: its user turn is not a verifier prompt "
                         "(### Prompt / ### Candidate answer)")
    answer, reasoning = parts["answer"], parts["reasoning"]
    if _is_unsafe(row) and not show_unsafe:
        answer, reasoning = redact(answer, "unsafe"), reasoning and redact(reasoning, "unsafe")
    item = TeacherInput(parts["prompt"], answer, row.get("prompt_label"), row.get("category"), row.get("label"),
                        None, reasoning)
    msgs = teacher_messages(load_spec(recipe.resolve_path(recipe.spec.path)), item)
    note = ("" if recipe.teacher.backend != "offline" else
            "(this recipe's teacher is offline: it is no model and is sent nothing; it fills a template from the "
            "judge's label. This is what teacher.backend api or local would be sent.)\n")
    return note + "\n".join(f"=== {m['role']} ===\n{m['content']}" for m in msgs)


def spec_renderings(recipe: Recipe, tokenizer: Any) -> str:
    """The verifier's system turn with the spec rendered as this recipe says (`spec.render`) and, below it,
    rendered in full; each under a header with its token counts (spec text alone, whole system turn)."""
    full = SpecText(load_spec(recipe.resolve_path(recipe.spec.path)).render(style="full"), SYSTEM_TEMPLATES["full"])
    blocks = []
    for name, spec in ((f"spec.render: {recipe.spec.render} (this recipe)", spec_text(recipe)), ("full", full)):
        system = build_verification_messages(spec, "", "")[0]
        n_spec = len(tokenizer(str(spec), add_special_tokens=False)["input_ids"])
        n_sys = len(tokenizer.apply_chat_template([system], tokenize=True, return_dict=True)["input_ids"])
        blocks.append(f"=== {name}, {recipe.spec.path}, template {spec.system_template}: spec {n_spec} tokens, "
                      f"system turn {n_sys} tokens ===\n{system['content']}")
    return "\n\n".join(blocks)


# ----------------------------------------------------------------------------- GRPO: one rollout group
def advantages(rewards: Sequence[float], num_generations: int, scale_rewards: str = "group") -> list[float]:
    """TRL's GRPO advantages for one generation batch (consecutive groups of `num_generations`):
    r - group mean, divided by (std + 1e-4) where std is the group's ("group") or the batch's ("batch")
    sample standard deviation (n - 1); "none" leaves it undivided."""
    if len(rewards) % num_generations:
        raise ValueError(f"{len(rewards)} rewards do not form whole groups of {num_generations}")
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards={scale_rewards!r}; TRL accepts group, batch or none")

    def std(xs: Sequence[float]) -> float:
        m = sum(xs) / len(xs)
        return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0

    out = []
    for g in range(0, len(rewards), num_generations):
        group = list(rewards[g:g + num_generations])
        mean = sum(group) / len(group)
        s = std(group) if scale_rewards == "group" else std(list(rewards))
        out += [(r - mean) / (s + 1e-4) if scale_rewards != "none" else r - mean for r in group]
    return out


def rollout_group(path: str | os.PathLike, num_generations: int, *, step: int | None = None,
                  prompt_id: str | None = None, scale_rewards: str = "group", show_unsafe: bool = False,
                  width: int = 100) -> Any:
    """pandas.DataFrame: one group of `num_generations` rollouts from a rollout_rewards.jsonl, with each
    rollout's reward parts and TRL's advantage (`advantages`, computed over the whole step as TRL does).
    Without `step` / `prompt_id` the first group whose rewards differ is shown (else the first group).
    Completions (None in logs written before they were logged) are cut to `width` characters and redacted where
    the judge did not call them safe, unless `show_unsafe`."""
    import pandas as pd  # here, not at the top: pandas takes a second to import

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no rollout log (an init trained before rollouts were logged)")
    by_step: dict[int, list[dict]] = {}
    for r in jsonl.read_resumable(path):
        by_step.setdefault(int(r["step"]), []).append(r)
    groups = []
    for s, rows in sorted(by_step.items()):
        adv = advantages([float(r["reward"]) for r in rows], num_generations, scale_rewards)
        for g in range(0, len(rows), num_generations):
            chunk = slice(g, g + num_generations)
            groups.append([{**r, "advantage": a} for r, a in zip(rows[chunk], adv[chunk])])
    chosen = [g for g in groups if (step is None or g[0]["step"] == step) and prompt_id in (None, g[0]["prompt_id"])]
    if not chosen:
        raise ValueError(f"{path}: no group with step={step} prompt_id={prompt_id}")
    group = next((g for g in chosen if len({r["reward"] for r in g}) > 1), chosen[0])
    rewards = [float(r["reward"]) for r in group]
    mean = sum(rewards) / len(rewards)

    def shown(r: dict) -> str | None:
        text = r.get("completion")
        if text is None:
            return None
        unsafe = r.get("kind") != "math" and r.get("v_safe") is not None and float(r["v_safe"]) < 1
        text = redact(text, "unsafe" if unsafe else None, show_unsafe).replace("\n", " ")
        return text if len(text) <= width else text[:width] + "..."

    return pd.DataFrame([{"step": r["step"], "prompt_id": r["prompt_id"], "kind": r["kind"],
                          "generation": r["generation"], "completion": shown(r), "v_safe": r.get("v_safe"),
                          "v_refuse": r.get("v_refuse"), "correct": r.get("correct"), "reward": r["reward"],
                          "group_mean": round(mean, 4), "advantage": round(r["advantage"], 4)} for r in group])
