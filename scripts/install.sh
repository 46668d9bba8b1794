#!/usr/bin/env bash
# Install Corral and its dependencies into a virtual environment.
#   scripts/install.sh [EXTRAS]        e.g.  scripts/install.sh test
# Environment:
#   CORRAL_VENV   where the virtual environment goes (default .venv; "system" = no venv)
#   CMAKE_ARGS    passed to the llama.cpp build, e.g. "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90"
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
  *,imaging,*|*,adapters,*|*,all,*) "$py" -m pip install -q "torch==2.13.0" ;;
esac
# llama-cpp-python is an sdist: the first install compiles llama.cpp (about 4 minutes on 2 cores);
# pip caches the built wheel, later installs take seconds.
spec="."
[ -n "$extras" ] && spec=".[$extras]"
"$py" -m pip install -q -e "$spec"
echo "installed: $("$py" -c 'import server, llama_cpp; print("corral", server.__version__, "llama-cpp-python", llama_cpp.__version__)')"
