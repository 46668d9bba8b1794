#!/usr/bin/env bash
# Install Corral and its dependencies into a virtual environment.
#   scripts/install.sh [EXTRAS]        e.g.  scripts/install.sh test
# Environment:
#   CORRAL_VENV   where the virtual environment goes (default .venv; "system" = no venv)
#   CMAKE_ARGS    passed to the llama.cpp build, e.g. "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90"
#   CORRAL_EDITABLE  1 (default): editable install of this checkout; 0: a regular install (the image's)
# The same script builds the container image (Dockerfile) and the CI environment (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
venv=${CORRAL_VENV:-.venv}
if [ "$venv" = system ]; then
  py=python3
else
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  py="$venv/bin/python"
fi
"$py" -m pip install -q --upgrade pip
# PyTorch is pinned and installed first where an extra needs it: an open range would pull CUDA wheels.
case ",$extras," in
  *,imaging,*|*,adapters,*|*,retrieval,*|*,all,*|*,test,*) "$py" -m pip install -q "torch==2.13.0" ;;
esac
# llama-cpp-python is an sdist: installing it compiles llama.cpp (about 4 minutes on 2 cores, CPU).
# Built wheels are kept per llama-cpp-python version and build flags, so a CPU and a CUDA build never
# stand in for each other. -DGGML_LLAMAFILE=OFF: matrix kernels whose results do not depend on the
# batch size, so a seeded request gives the same text alone and under load.
llama_version=0.3.36
cmake_args="${CMAKE_ARGS:--DGGML_NATIVE=ON} -DGGML_LLAMAFILE=OFF"
# A native build on a CPU with AMX compiles ggml's AMX kernels, and on the development and CI machines
# (Sapphire Rapids under a VM) their first `tilezero` dies with SIGILL in llama_decode. Keep them out:
# -march=native's AMX flags are overridden by these explicit ones (GGML_AMX_* only act without NATIVE).
native_flags=$(${CC:-cc} -march=native -Q --help=target 2>/dev/null || true)
if [ "$(uname -m)" = x86_64 ] && [ -z "${CMAKE_ARGS:-}" ] && grep -q -- '-mamx-tile .*\[enabled\]' <<<"$native_flags"; then
  cmake_args="$cmake_args -DCMAKE_C_FLAGS=-mno-amx-tile\ -mno-amx-int8\ -mno-amx-bf16 -DCMAKE_CXX_FLAGS=-mno-amx-tile\ -mno-amx-int8\ -mno-amx-bf16"
fi
key=$(printf '%s' "$llama_version $cmake_args" | sha256sum | cut -c1-16)
wheels="${CORRAL_WHEEL_CACHE:-$HOME/.cache/corral/wheels}/$key"
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $llama_version with CMAKE_ARGS='$cmake_args' (a few minutes)"
  CMAKE_ARGS="$cmake_args" "$py" -m pip wheel -q --no-deps --no-cache-dir "llama-cpp-python==$llama_version" -w "$wheels"
fi
stamp="$("$py" -c 'import sys; print(sys.prefix)')/.corral-llama-build"
if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  "$py" -m pip install -q --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
  "$py" -m pip install -q "$wheels"/llama_cpp_python-*.whl  # its own dependencies
  echo "$key" > "$stamp"
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
if [ "${CORRAL_EDITABLE:-1}" = 0 ]; then
  "$py" -m pip install -q "$spec"
else
  "$py" -m pip install -q -e "$spec"
fi
# -P: import what was installed, not ./server from the checkout
echo "installed: $("$py" -P -c 'import server, llama_cpp; print("corral", server.__version__, "llama-cpp-python", llama_cpp.__version__)')"
