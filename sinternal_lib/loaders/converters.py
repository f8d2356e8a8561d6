"""One small converter per upstream benchmark format: a row dict -> `datasets.Record`.

Signature: `convert(row, index, ctx) -> Record | None`, where `index` is the 0-based data row and
`ctx` carries the load context ("where" for messages, "opts", "split", "params", "method", "model",
"file_stem"). Returning None skips a row on purpose (filtered out, or no prompt upstream).
Converters set the upstream id only; `load_benchmark` prefixes it with the benchmark name.
Label semantics per source: docs/READING_GROUP.md, "The optional benchmark data".
"""

from __future__ import annotations

import re
from typing import Any

from sinternal_lib.datasets import BENIGN, HARMFUL, Record

XSTEST_MODELS = ("gpt4", "llama2new", "llama2orig", "mistralguard", "mistralinstruct")
_XSTEST_FINAL = {"1_full_compliance": "compliance", "2_full_refusal": "refusal", "3_partial_refusal": "partial"}


def text(v: Any) -> str:
    """A field as stripped text; None (JSON null, missing CSV cell) becomes ""."""
    return "" if v is None else str(v).strip()


def _safe_unsafe(v: Any, where: str) -> str:
    s = text(v)
    if s not in ("0", "1"):
        raise ValueError(f"{where}: label must be 0 or 1, got {s!r}")
    return "unsafe" if s == "1" else "safe"


def strongreject(r: dict, i: int, ctx: dict) -> Record:
    return Record(id=str(i), prompt=text(r["forbidden_prompt"]), label=HARMFUL, category=text(r["category"]),
                  meta={"upstream_source": text(r.get("source"))})


def xstest(r: dict, i: int, ctx: dict) -> Record:
    typ = text(r["type"])
    # contrast_* types are XSTest's unsafe contrast prompts: either signal marks the prompt harmful
    harmful = text(r["label"]).lower() == "unsafe" or typ.startswith("contrast_")
    return Record(id=text(r["id"]), prompt=text(r["prompt"]), label=HARMFUL if harmful else BENIGN, category=typ,
                  meta={"focus": text(r.get("focus")), "note": text(r.get("note"))})


def xstest_completion(r: dict, i: int, ctx: dict) -> Record:
    final = text(r["final_label"])
    if final not in _XSTEST_FINAL:
        raise ValueError(f"{ctx['where']}: unknown final_label {final!r}; expected one of {list(_XSTEST_FINAL)}")
    typ = text(r["type"])
    model = ctx["model"]
    return Record(id=f"{model}-{text(r['id'])}", prompt=text(r["prompt"]),
                  label=HARMFUL if typ.startswith("contrast_") else BENIGN, category=typ,
                  response=str(r["completion"] or ""), human_label=_XSTEST_FINAL[final],
                  meta={"label_kind": "refusal", "model": model, "annotation_1": text(r.get("annotation_1")),
                        "annotation_2": text(r.get("annotation_2")), "agreement": text(r.get("agreement"))})


def harmbench(r: dict, i: int, ctx: dict) -> Record | None:
    func = text(r["FunctionalCategory"])
    if ctx["opts"].get("functional", "standard") not in ("all", func):
        return None
    return Record(id=text(r["BehaviorID"]), prompt=text(r["Behavior"]), label=HARMFUL,
                  category=text(r["SemanticCategory"]), split=ctx["split"],
                  meta={"functional": func, "tags": text(r.get("Tags")), "context": text(r.get("ContextString"))})


def advbench(r: dict, i: int, ctx: dict) -> Record:
    return Record(id=str(i), prompt=text(r["goal"]), label=HARMFUL, meta={"target": text(r.get("target"))})


def jbb(r: dict, i: int, ctx: dict) -> Record:
    # the upstream CSV's index column has an empty header; the HF copy names it "Index"
    idx = text(r.get("") or r.get("Index")) or str(i)
    label = BENIGN if ctx["opts"].get("behaviors") == "benign" else HARMFUL
    return Record(id=f"{ctx['opts'].get('behaviors', 'harmful')}-{idx}", prompt=text(r["Goal"]), label=label,
                  category=text(r["Category"]),
                  meta={"behavior": text(r.get("Behavior")), "target": text(r.get("Target")),
                        "upstream_source": text(r.get("Source"))})


def jbb_artifact(r: dict, i: int, ctx: dict) -> Record | None:
    if r.get("prompt") is None:  # PAIR: no jailbreak found for this behavior
        return None
    p = ctx["params"]
    jb = r.get("jailbroken")
    return Record(id=f"{ctx['method']}-{p.get('attack_type', '')}-{p.get('model', '')}-{r.get('index', i)}",
                  prompt=text(r["prompt"]), label=HARMFUL, category=text(r.get("category")),
                  response=None if r.get("response") is None else str(r["response"]),
                  human_label=None if jb is None else ("unsafe" if jb else "safe"),
                  meta={"label_kind": "harm", "label_source": "JBB Llama-3-70B judge (jailbroken), not human",
                        "method": ctx["method"], "method_name": p.get("method"), "attack_type": p.get("attack_type"),
                        "target_model": p.get("model"), "goal": text(r.get("goal")),
                        "behavior": text(r.get("behavior")),
                        "jailbroken_llama_guard1": r.get("jailbroken_llama_guard1")})


def star1(r: dict, i: int, ctx: dict) -> Record:
    cats = r.get("category") or []
    if isinstance(cats, str):
        cats = [cats]
    resp = str(r.get("response") or "")
    return Record(id=text(r.get("id")) or str(i), prompt=text(r["question"]), label=HARMFUL,
                  category=cats[0] if cats else None, reference=resp,
                  meta={"categories": list(cats), "upstream_source": text(r.get("source")),
                        "final_answer": resp.split("</think>", 1)[-1].strip()})


def pku(r: dict, i: int, ctx: dict) -> Record:
    return Record(id=str(i), prompt=text(r["question"]), label=HARMFUL, response=str(r["answer"] or ""),
                  human_label=_safe_unsafe(r["label"], ctx["where"]),
                  meta={"label_kind": "harm", "prompt_label": "assumed harmful (red-team prompts, not labelled)"})


def jbeval(r: dict, i: int, ctx: dict) -> Record:
    prompt = text(r.get("prompt")) or text(r["question"])
    return Record(id=f"{ctx['file_stem']}-{i}", prompt=prompt, label=HARMFUL, category=text(r.get("category")) or None,
                  response=str(r["answer"] or ""), human_label=_safe_unsafe(r["label"], ctx["where"]),
                  meta={"label_kind": "harm", "goal": text(r["question"])})


def gsm8k(r: dict, i: int, ctx: dict) -> Record:
    ans = str(r["answer"])
    if "####" not in ans:
        raise ValueError(f"{ctx['where']}: GSM8K answer has no '#### N' final line")
    raw = ans.rsplit("####", 1)[1].strip()
    return Record(id=str(i), prompt=text(r["question"]), label=BENIGN, category="math", split="test",
                  reference=raw.replace(",", ""), meta={"solution": ans, "answer_raw": raw})


def math500(r: dict, i: int, ctx: dict) -> Record:
    uid = text(r.get("unique_id"))
    rid = re.sub(r"^test/|\.json$", "", uid).replace("/", "-") if uid else str(i)
    return Record(id=rid, prompt=text(r["problem"]), label=BENIGN, category="math", split="test",
                  reference=text(r["answer"]),
                  meta={"subject": r.get("subject"), "level": r.get("level"), "unique_id": uid,
                        "solution": r.get("solution")})


def aime(r: dict, i: int, ctx: dict) -> Record:
    return Record(id=text(r.get("id")) or str(i), prompt=text(r["problem"]), label=BENIGN, category="math",
                  split="test", reference=text(r["answer"]), meta={"url": r.get("url"), "solution": r.get("solution")})
