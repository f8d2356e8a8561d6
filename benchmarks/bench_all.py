"""`make bench`: run every benchmark script, then one combined table of every ratio (summary.md/.json).

Full mode runs bench_sft, bench_grpo, bench_memory, bench_e2e, bench_generation (in this process; the
arm-based ones run each arm in a child process), then bench_judge_agreement and bench_vllm (own processes;
bench_vllm measures in `.venv-vllm` where it exists, else records why it did not run). --quick runs
the in-process scripts on the tiny random model (the fast test); --only picks scripts; --summary-only
rebuilds the table from the JSON files of scripts run one by one (with their own --arms).
Run:  .venv/bin/python benchmarks/bench_all.py [--quick] [--only sft grpo] [--summary-only] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import benchlib as bl

IN_PROCESS = ("sft", "grpo", "memory", "e2e", "generation")
OWN_PROCESS = {"judge_agreement": "bench_judge_agreement.py", "vllm": "bench_vllm.py"}
TAKE_OUT_DIR = ("vllm",)  # own-process scripts that take --out-dir


def summary(out_dir: Path, names: list[str]) -> list[dict]:
    """Every ratio of the scripts' JSON files in `out_dir`, with its source file and when it was written."""
    rows = []
    for name in names:
        path = out_dir / f"{name}.json"
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        # the time the script wrote into its result (a clone's files all carry the checkout's mtime)
        when = d.get("written") or time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
        where = bl.machine_label(d.get("machine"))
        for r in d.get("ratios", []):
            met = "not measured" if r.get("goal") and r.get("ratio") is None else \
                {True: "yes", False: "NO", None: "-"}[r.get("met")]
            rows.append({"benchmark": name, "what": r["what"], "ratio": r.get("ratio"), "goal": r.get("goal"),
                         "met": met, "quick": d.get("quick", False), "written": when,
                         "machine": where})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=[*IN_PROCESS, *OWN_PROCESS])
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results (--quick: a temp folder)")
    ap.add_argument("--summary-only", action="store_true",
                    help="run nothing: rebuild summary.md/.json from the scripts' JSON files already there")
    a = ap.parse_args(argv)
    a.out_dir = str(bl.out_dir(a.out_dir, a.quick))
    out = Path(a.out_dir)
    names = [] if a.summary_only else a.only or (list(IN_PROCESS) if a.quick else [*IN_PROCESS, *OWN_PROCESS])
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            if name in IN_PROCESS:
                mod = __import__(f"bench_{name}")
                mod.main(["--out-dir", str(out)] + (["--quick"] if a.quick else []))
            else:
                extra = ["--out-dir", str(out)] if name in TAKE_OUT_DIR else []
                subprocess.run([sys.executable, str(Path(__file__).parent / OWN_PROCESS[name]), *extra], check=True)
        except Exception as e:  # noqa: BLE001 - one failing script must not hide the others' results
            failed.append(name)
            print(f"{name} failed: {type(e).__name__}: {e}", flush=True)
        print(f"=== {name}: {time.perf_counter() - t0:.0f} s ===", flush=True)
    rows = summary(out, [*IN_PROCESS, *OWN_PROCESS])
    print("\n=== summary ===")
    cols = ["benchmark", "what", "ratio", "goal", "met", "quick", "written", "machine"]
    machines = {r["machine"].split(" (")[0] for r in rows}  # by CPU name: older results lack the capability
    # the header's machine is where the figures were measured, not where this table was built
    first = next((json.loads((out / f"{r['benchmark']}.json").read_text()).get("machine") for r in rows), None)
    where = dict(first) if len(machines) == 1 and isinstance(first, dict) else {"cpu": "several (the machine column)"}
    where["built_on"] = bl.machine()
    result = {"benchmark": "summary of every ratio", "machine": where, "rows": rows, "failed": failed}
    bl.write_results("summary", result, rows, cols, out,
                     ["figures come from each script's JSON in this folder; 'written' says when it was measured, "
                      "'machine' where"]
                     + ([f"the rows come from {len(machines)} machines: compare ratios, not figures, across them"]
                        if len(machines) > 1 else []))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
