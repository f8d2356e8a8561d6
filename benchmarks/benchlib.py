"""Shared helpers of the benchmark scripts: per-arm child processes with their own peak memory, the
matrix-multiply peak, machine facts, and result files (JSON + markdown table) under benchmarks/results/.

Arms run in forked children (CPU) or spawned ones (CUDA), so each arm's peak memory is its own: on CPU
the child resets the kernel's peak-RSS counter first (/proc/self/clear_refs, Linux >= 4.0) and reports
VmHWM; on CUDA it reports torch.cuda.max_memory_allocated. The parent never runs torch kernels itself,
so forking after `import torch` is safe (no OpenMP pool exists yet).
"""

from __future__ import annotations

import argparse

import json
import multiprocessing as mp
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ----------------------------------------------------------------------------- memory
def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where the kernel cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb() -> float | None:
    return _status_mb("VmRSS")


def peak_mb(device: str = "cpu") -> float | None:
    """Peak memory of this process: CUDA max allocated, else VmHWM (ru_maxrss where /proc is missing)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    hwm = _status_mb("VmHWM")
    if hwm is None:
        import resource

        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return hwm


def _child(fn: Callable[..., dict], args: tuple, device: str, conn: Any) -> None:
    try:
        if device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
        reset = reset_peak_rss()
        out = {"rss_start_mb": _round(rss_mb()), **fn(*args)}
        out.update(peak_mem_mb=_round(peak_mb(device)), peak_mem_kind="cuda max allocated" if device.startswith(
            "cuda") else ("peak RSS (VmHWM, reset at arm start)" if reset else "peak RSS (ru_maxrss, not reset)"))
        conn.send(out)
    except BaseException as e:  # noqa: BLE001 - report any failure of an arm as data, keep the others
        conn.send({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]})
    finally:
        conn.close()


def run_in_child(fn: Callable[..., dict], *args: Any, device: str = "cpu", timeout: float = 3600,
                 spawn: bool = False) -> dict:
    """Run fn(*args) -> dict in a child process; adds peak memory, or {"error": ...} when it failed. `spawn`
    (always on CUDA): a fresh interpreter, for a parent whose OpenMP threads have run (a forked child can hang)."""
    ctx = mp.get_context("spawn" if spawn or device.startswith("cuda") else "fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, device, child))
    t0 = time.perf_counter()
    proc.start()
    child.close()
    out: dict[str, Any] = {"error": "child process died without a result"}
    if parent.poll(timeout):
        try:
            out = parent.recv()
        except EOFError:
            pass
    else:
        out = {"error": f"timed out after {timeout:.0f} s"}
    proc.join(10)
    if proc.is_alive():
        proc.kill()
    if "error" in out and proc.exitcode not in (0, None):
        out["error"] += f" (exit code {proc.exitcode})"
    out["child_wall_s"] = round(time.perf_counter() - t0, 1)
    return out


# ----------------------------------------------------------------------------- compute peak
def _matmul_peak(n: int, repeats: int, dtypes: Sequence[str], device: str) -> dict:
    import torch

    out = {}
    for name in dtypes:
        dt = getattr(torch, name)
        a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
        torch.matmul(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            torch.matmul(a, b)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        out[name] = round(2 * n**3 / best / 1e9, 1)
    return {"matmul_n": n, "best_of": repeats, "gflops": out, "threads": torch.get_num_threads()}


def matmul_peak(n: int = 2048, repeats: int = 5, dtypes: Sequence[str] = ("float32", "bfloat16"),
                device: str = "cpu") -> dict:
    """Best-of-`repeats` GFLOP/s of an n x n torch.matmul per dtype, measured in a child process."""
    return run_in_child(_matmul_peak, n, repeats, tuple(dtypes), device, device=device)


def model_flops_params(config: Any) -> int:
    """Weights a token passes through (all linear layers + LM head, embedding lookup excluded), from the
    model config: the N of the usual 6*N*T training FLOP estimate."""
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    h, layers, inter = c.hidden_size, c.num_hidden_layers, c.intermediate_size
    head_dim = getattr(c, "head_dim", None) or h // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, (c.num_key_value_heads or c.num_attention_heads) * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter
    return layers * per_layer + c.vocab_size * h


# ----------------------------------------------------------------------------- reporting
def machine() -> dict[str, Any]:
    """Facts about where a benchmark ran (cpu model, cores, load, library versions)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "load_avg_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(),
                            "torch": torch.__version__}
    for mod in ("transformers", "trl", "peft", "bitsandbytes"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - missing or broken package: just not listed
            info[mod] = None
    return info


def _round(x: Any, nd: int = 1) -> Any:
    return round(x, nd) if isinstance(x, float) else x


def ratio(a: float | None, b: float | None, nd: int = 2) -> float | None:
    return round(a / b, nd) if a is not None and b else None


def met(value: float | None, goal: float) -> bool | None:
    """Whether a measured value reaches an "at least" goal; None (not measured) where its arm did not run:
    a skipped arm is not a goal missed."""
    return None if value is None else value >= goal


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def table(rows: Sequence[dict], columns: Sequence[str]) -> tuple[str, str]:
    """(aligned text table for the console, markdown table) of `columns` of `rows`."""
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(columns)]
    text = "\n".join("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(line, widths)))
                     for line in [list(columns)] + cells)
    md = "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                   + ["| " + " | ".join(line) + " |" for line in cells])
    return text, md


def out_dir(arg: str | None, quick: bool) -> Path:
    """--out-dir if given; else benchmarks/results, or a temp folder for --quick runs (tiny-model figures
    must never replace measured ones)."""
    if arg:
        return Path(arg)
    import tempfile

    return Path(tempfile.gettempdir()) / "sinternal-bench-quick" if quick else RESULTS


def machine_label(m: dict[str, Any] | str | None) -> str:
    """A short name for the machine of a result: 'cpu (capability, N cores)' (records come from machines of
    several CPU classes, docs/LOG.md, 2026-12-06, session 13)."""
    if not isinstance(m, dict):
        return str(m or "?")
    extra = ", ".join(str(x) for x in (m.get("cpu_capability"), m.get("cpu_count") and f"{m['cpu_count']} cores") if x)
    return f"{m.get('cpu') or m.get('processor') or '?'}" + (f" ({extra})" if extra else "")


def write_results(name: str, result: dict, rows: Sequence[dict], columns: Sequence[str],
                  out_dir: str | Path = RESULTS, notes: Sequence[str] = ()) -> Path:
    """Print the table; write <out_dir>/<name>.json (the whole `result`) and <name>.md (table + notes)."""
    text, md = table(rows, columns)
    print(text)
    for n in notes:
        print(f"- {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.setdefault("written", time.strftime("%Y-%m-%d %H:%M"))
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    m = result.get("machine", {})
    facts = [f"{m.get('cpu')}" + (f" ({m['cpu_count']} cores)" if m.get("cpu_count") else "")]
    facts += [f"torch {m['torch']}"] if m.get("torch") else []
    facts += [f"load average {m['load_avg_1m']} at the start"] if m.get("load_avg_1m") is not None else []
    head = f"# {result.get('benchmark', name)}\n\nMachine: {', '.join(facts)}.\n\n"
    (out / f"{name}.md").write_text(head + md + "\n" + "".join(f"\n- {n}" for n in notes) + "\n", encoding="utf-8")
    print(f"wrote {out / (name + '.json')} and {name}.md")
    return out / f"{name}.json"


def arm_parser(doc: str, arms: Sequence[str], steps: int, quick_help: str) -> argparse.ArgumentParser:
    """The options every arm-based benchmark takes: --recipe, --steps, --arms, --device, --quick, --out-dir."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--recipe", default="cpu-smollm2")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--arms", nargs="+", default=None, choices=list(arms))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results (--quick: a temp folder)")
    return ap


def bench_recipe(a: argparse.Namespace, section: str) -> Any:
    """The recipe an arm-based benchmark runs: --recipe, or the tiny test recipe with --quick (no
    checkpoint writes within its 2 steps); resolves a.out_dir as a side effect."""
    from sinternal_lib.config import load_recipe

    a.out_dir = str(out_dir(a.out_dir, a.quick))
    quick = {f"{section}.save_steps": 100} if a.quick else {}
    return load_recipe("configs/tests/tiny.yaml" if a.quick else a.recipe, {"model.device": a.device, **quick})

