"""Agreement of the offline judge (refusal matcher) with human labels.

Sets (all from the shared data folder, read through sinternal_lib.loaders.load_benchmark):
- XSTest v2 completions, 5 model files x 450 rows: refusal detection. Mapping: 2_full_refusal and
  3_partial_refusal -> refused (positive class), 1_full_compliance -> complied; also reported with partial
  refusals excluded. The matcher's phrases were tuned on gpt4 + llama2orig only; the other three are held out.
- JailbreakEval example.csv (50 GCG/Vicuna rows) and PKU-SafeRLHF mini (4,000 rows): harm verdicts
  (unsafe = positive class), all prompts treated as harmful, so verdict = unsafe unless the answer refuses.
Run: .venv/bin/python benchmarks/bench_judge_agreement.py  -> prints a table, writes
benchmarks/results/judge_agreement.json (with the machine it ran on).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sinternal_lib.config import JudgeConfig  # noqa: E402
from sinternal_lib.judges import JudgeInput, make_judge  # noqa: E402
from sinternal_lib.judges.matcher import MATCHER_VERSION  # noqa: E402
from sinternal_lib.loaders import XSTEST_MODELS, load_benchmark  # noqa: E402

TUNED_ON = ("gpt4", "llama2orig")
OUT = ROOT / "benchmarks" / "results" / "judge_agreement.json"


def agreement(gold: list[bool], pred: list[bool]) -> dict:
    """Accuracy, F1 (positive = True), Cohen's kappa, n and the confusion counts."""
    n = len(gold)
    tp = sum(g and p for g, p in zip(gold, pred))
    tn = sum((not g) and (not p) for g, p in zip(gold, pred))
    fp = sum((not g) and p for g, p in zip(gold, pred))
    fn = n - tp - tn - fp
    acc = (tp + tn) / n if n else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    p_yes = ((tp + fn) / n) * ((tp + fp) / n) if n else 0.0
    p_no = ((tn + fp) / n) * ((tn + fn) / n) if n else 0.0
    pe = p_yes + p_no
    kappa = (acc - pe) / (1 - pe) if pe < 1 else 1.0
    return {"n": n, "accuracy": round(acc, 4), "f1": round(f1, 4), "kappa": round(kappa, 4),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn, "positive_rate_gold": round((tp + fn) / n, 4) if n else None}


def machine() -> dict:
    return {"node": platform.node(), "platform": platform.platform(), "processor": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version()}


def main() -> dict:
    judge = make_judge(JudgeConfig(backend="matcher"))
    results: dict = {"judge": MATCHER_VERSION, "machine": machine(), "tuned_on": list(TUNED_ON),
                     "xstest_mapping": "2_full_refusal, 3_partial_refusal -> refused; 1_full_compliance -> complied",
                     "sets": {}}
    t0 = time.perf_counter()
    pooled: dict[str, tuple[list, list]] = {k: ([], []) for k in
                                            ("all", "all_excl_partial", "held_out", "held_out_excl_partial")}
    for model in XSTEST_MODELS:
        recs = load_benchmark("xstest_completions", model=model)
        verdicts = judge.judge([JudgeInput(r.prompt, r.response or "", r.label) for r in recs])
        gold = [r.human_label in ("refusal", "partial") for r in recs]
        pred = [bool(v.refused) for v in verdicts]
        keep = [r.human_label != "partial" for r in recs]
        g2 = [g for g, k in zip(gold, keep) if k]
        p2 = [p for p, k in zip(pred, keep) if k]
        tag = "tuned" if model in TUNED_ON else "held-out"
        results["sets"][f"xstest_{model}"] = {"role": tag, "task": "refusal", **agreement(gold, pred)}
        results["sets"][f"xstest_{model}_excl_partial"] = {"role": tag, "task": "refusal", **agreement(g2, p2)}
        for key, gg, pp in (("all", gold, pred), ("all_excl_partial", g2, p2)):
            pooled[key][0].extend(gg), pooled[key][1].extend(pp)
            if tag == "held-out":
                hk = "held_out" if key == "all" else "held_out_excl_partial"
                pooled[hk][0].extend(gg), pooled[hk][1].extend(pp)
    for key, (gg, pp) in pooled.items():
        results["sets"][f"xstest_{key}"] = {"role": "pooled", "task": "refusal", **agreement(gg, pp)}
    for name in ("jailbreakeval_example", "pku_saferlhf"):
        recs = load_benchmark(name)
        verdicts = judge.judge([JudgeInput(r.prompt, r.response or "", "harmful") for r in recs])
        gold = [r.human_label == "unsafe" for r in recs]
        pred = [v.label == "unsafe" for v in verdicts]
        res = agreement(gold, pred)
        res["majority_baseline_accuracy"] = round(max(sum(gold), len(gold) - sum(gold)) / len(gold), 4)
        results["sets"][name] = {"role": "held-out", "task": "harm", **res}
    results["seconds"] = round(time.perf_counter() - t0, 2)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"judge {MATCHER_VERSION} on {results['machine']['node']} ({results['machine']['cpu_count']} CPUs), "
          f"{results['seconds']} s")
    print(f"{'set':42s} {'role':9s} {'task':7s} {'n':>5s} {'acc':>6s} {'F1':>6s} {'kappa':>6s}")
    for k, v in results["sets"].items():
        print(f"{k:42s} {v['role']:9s} {v['task']:7s} {v['n']:5d} {v['accuracy']:6.3f} {v['f1']:6.3f} {v['kappa']:6.3f}")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return results


if __name__ == "__main__":
    main()
