"""Run the reliability suite (tests/reliability) and print what it measured.

    .venv/bin/python benchmarks/reliability_summary.py        (or: make reliability)

pytest runs the suite with $SINTERNAL_RELIABILITY_JSON set; the suite's conftest writes each test's
outcome, duration and tallies (faults injected, hostile inputs tried, files scanned for secrets, leaks)
there. A fault or input counts as survived / handled only when its test passed. Prints one row per
part and writes benchmarks/results/reliability.json. Exit status: pytest's.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "reliability.json"
PARTS = ["interruption", "corruption", "hostile_input", "failing_services", "secrets", "determinism"]


def summarise(tests: dict[str, dict]) -> dict[str, dict]:
    rows: dict[str, dict] = defaultdict(lambda: dict(tests=0, passed=0, faults_injected=0, faults_survived=0,
                                                     bad_inputs=0, inputs_handled=0, files_scanned=0,
                                                     secrets_leaked=0, seconds=0.0))
    for t in tests.values():
        r, ok = rows[t["part"]], t["outcome"] == "passed"
        r["tests"] += 1
        r["passed"] += ok
        r["faults_injected"] += t["faults"]
        r["faults_survived"] += t["faults"] if ok else 0
        r["bad_inputs"] += t["bad_inputs"]
        r["inputs_handled"] += t["bad_inputs"] if ok else 0
        r["files_scanned"] += t["files_scanned"]
        r["secrets_leaked"] += t["leaks"]
        r["seconds"] = round(r["seconds"] + t["duration_s"], 1)
    order = [p for p in PARTS if p in rows] + sorted(set(rows) - set(PARTS))
    total = {k: sum(rows[p][k] for p in order) for k in next(iter(rows.values()))} if rows else {}
    if total:
        total["seconds"] = round(total["seconds"], 1)
    return {**{p: rows[p] for p in order}, "total": total}


def table(rows: dict[str, dict]) -> str:
    head = f"{'part':<17}{'tests':>9}{'faults inj/surv':>17}{'bad inputs tried/handled':>26}{'files scanned':>15}{'secrets leaked':>16}{'time s':>8}"
    lines = [head, "-" * len(head)]
    for part, r in rows.items():
        lines.append(f"{part:<17}{r['passed']:>4}/{r['tests']:<4}{r['faults_injected']:>9}/{r['faults_survived']:<7}"
                     f"{r['bad_inputs']:>15}/{r['inputs_handled']:<10}{r['files_scanned']:>15}{r['secrets_leaked']:>16}"
                     f"{r['seconds']:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        env = {**os.environ, "SINTERNAL_RELIABILITY_JSON": str(report), "HF_HUB_OFFLINE": "1"}
        t0 = time.time()
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/reliability", *argv], cwd=ROOT, env=env)
        wall = time.time() - t0
        if not report.is_file():
            print("the suite wrote no report (collection error?)", file=sys.stderr)
            return rc or 1
        tests = json.loads(report.read_text())["tests"]
    rows = summarise(tests)
    print("\nReliability suite (tests/reliability)")
    print(table(rows))
    for name, t in tests.items():
        if t["outcome"] in ("xfailed", "xpassed", "failed"):
            print(f"{t['outcome']}: {name}")
        for k, v in (t.get("notes") or {}).items():
            print(f"note: {k} = {v:.3g}" if isinstance(v, float) else f"note: {k} = {v}")
    print(f"wall time {wall:.0f}s; pytest exit status {rc}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.platform(),
                               "cpus": os.cpu_count(), "wall_s": round(wall, 1), "pytest_exit": rc, "parts": rows,
                               "tests": tests}, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
