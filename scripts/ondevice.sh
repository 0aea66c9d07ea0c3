#!/usr/bin/env bash
# On-device export (GGUF for llama.cpp, Ollama, LM Studio): a setup step of its own, so CI
# and users who never export to a device do not pay for it.
#
#   bash scripts/ondevice.sh --converters   llama.cpp's GGUF converters only (a download of
#                                           the llama-cpp-python source; seconds)
#   bash scripts/ondevice.sh                also build and install llama-cpp-python, the
#                                           runtime that checks an export by running it (a
#                                           C++ build: long the first time, then a cached wheel)
#
# Both are cached under $WHETSTONE_CACHE (default ~/.cache/whetstone): the source in
# ondevice/, the converters in llama.cpp/<version>/, the built wheel in wheels/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate

VERSION=0.3.36 # keep in step with LLAMA_CPP_PYTHON in src/whetstone/models/gguf.py
CACHE=${WHETSTONE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/whetstone}
SDIST="$CACHE/ondevice/llama_cpp_python-$VERSION.tar.gz"
CONVERTERS="$CACHE/llama.cpp/$VERSION"
WHEELS="$CACHE/wheels"

if [ ! -f "$SDIST" ]; then
  echo "downloading the llama-cpp-python $VERSION source"
  python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE/ondevice"
fi
if [ ! -f "$CONVERTERS/convert_hf_to_gguf.py" ]; then
  echo "unpacking llama.cpp's GGUF converters into $CONVERTERS"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  inner="llama_cpp_python-$VERSION/vendor/llama.cpp"
  tar -xzf "$SDIST" -C "$tmp" "$inner/convert_hf_to_gguf.py" "$inner/convert_lora_to_gguf.py" \
    "$inner/conversion" "$inner/gguf-py"
  mkdir -p "$(dirname "$CONVERTERS")"
  rm -rf "$CONVERTERS.new" && mv "$tmp/$inner" "$CONVERTERS.new" && mv "$CONVERTERS.new" "$CONVERTERS"
fi
[ "${1:-}" = "--converters" ] && exit 0

if python -c "import llama_cpp" 2>/dev/null; then
  echo "llama-cpp-python is installed"
  exit 0
fi
if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $VERSION (C++; cmake and g++ from Debian: apt-get install cmake g++)"
  # CPU only, without the multimodal library, tests, examples and the server: the library
  # and its Python bindings are all Whetstone uses. Low priority, two jobs: a shared machine
  # stays usable while it builds.
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF}" \
    nice -n 19 python -m pip wheel -q --no-deps "$SDIST" -w "$WHEELS"
fi
# The wheel from the cache; its few pure-Python dependencies (diskcache...) from the index.
python -m pip install -q --find-links "$WHEELS" "llama-cpp-python==$VERSION"
python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
