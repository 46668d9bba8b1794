#!/usr/bin/env bash
# Install Corral and its dependencies into a virtual environment.
#   scripts/install.sh [EXTRAS]        e.g.  scripts/install.sh test
# Environment:
#   CORRAL_VENV   where the virtual environment goes (default .venv; "system" = no venv)
#   CMAKE_ARGS    passed to the llama.cpp build, e.g. "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90"
#   CORRAL_EDITABLE  1 (default): editable install of this checkout; 0: a regular install (the image's)
# Needs a C/C++ toolchain, cmake and `patch` (llama.cpp is compiled from source with Corral's patch).
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
# stand in for each other. Two builds of llama.cpp are installed:
# - the fast one, with llama.cpp's default kernels (llamafile's matrix kernels on), is the package;
# - the exact one, -DGGML_LLAMAFILE=OFF (matrix kernels whose results do not depend on the batch size),
#   only its libraries, in $prefix/lib/corral-llama-exact: CORRAL_DETERMINISTIC=1 loads it instead
#   (server/engine/__init__.py sets LLAMA_CPP_LIB_PATH before llama_cpp is imported).
llama_version=0.3.36
base_args="${CMAKE_ARGS:--DGGML_NATIVE=ON}"
# A native build on a CPU with AMX compiles ggml's AMX kernels, and on the development and CI machines
# (Sapphire Rapids under a VM) their first `tilezero` dies with SIGILL in llama_decode. Keep them out:
# -march=native's AMX flags are overridden by these explicit ones (GGML_AMX_* only act without NATIVE).
no_amx=""
native_flags=$(${CC:-cc} -march=native -Q --help=target 2>/dev/null || true)
if [ "$(uname -m)" = x86_64 ] && [ -z "${CMAKE_ARGS:-}" ] && grep -q -- '-mamx-tile .*\[enabled\]' <<<"$native_flags"; then
  no_amx=" -DCMAKE_C_FLAGS=-mno-amx-tile\ -mno-amx-int8\ -mno-amx-bf16 -DCMAKE_CXX_FLAGS=-mno-amx-tile\ -mno-amx-int8\ -mno-amx-bf16"
fi
# Corral's patch to llama.cpp: LoRA adapters chosen per sequence (llama_set_adapters_lora_seq), so one
# batch serves sequences on different adapters (server/engine/runner.py)
llama_patch=scripts/llama-cpp-seq-lora.patch
patch_sum=$(sha256sum "$llama_patch" | cut -c1-16)
sdist_dir=""
prepare_source() {  # unpack the llama-cpp-python sdist once and apply the patch
  [ -n "$sdist_dir" ] && return
  command -v patch >/dev/null || { echo "install.sh: the 'patch' program is needed (apt-get install patch)" >&2; exit 1; }
  sdist_dir=$(mktemp -d)
  trap 'rm -rf "$sdist_dir"' EXIT
  "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$llama_version" -d "$sdist_dir"
  tar xzf "$sdist_dir"/llama_cpp_python-*.tar.gz -C "$sdist_dir"
  patch -s -p1 -d "$sdist_dir/llama_cpp_python-$llama_version" < "$llama_patch"
}
build_wheel() {  # build_wheel CMAKE_ARGS: sets $wheels to the folder holding the wheel built with them
  local key
  key=$(printf '%s' "$llama_version $patch_sum $1" | sha256sum | cut -c1-16)
  wheels="${CORRAL_WHEEL_CACHE:-$HOME/.cache/corral/wheels}/$key"
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    prepare_source
    echo "building llama-cpp-python $llama_version (patched) with CMAKE_ARGS='$1' (a few minutes)"
    CMAKE_ARGS="$1" "$py" -m pip wheel -q --no-deps --no-cache-dir "$sdist_dir/llama_cpp_python-$llama_version" -w "$wheels"
  fi
}
build_wheel "$base_args$no_amx"; fast=$wheels
build_wheel "$base_args -DGGML_LLAMAFILE=OFF$no_amx"; exact=$wheels
prefix="$("$py" -c 'import sys; print(sys.prefix)')"
stamp="$prefix/.corral-llama-build"
if [ "$(cat "$stamp" 2>/dev/null)" != "$fast $exact" ]; then
  "$py" -m pip install -q --force-reinstall --no-deps "$fast"/llama_cpp_python-*.whl
  "$py" -m pip install -q "$fast"/llama_cpp_python-*.whl  # its own dependencies
  rm -rf "$prefix/lib/corral-llama-exact" && mkdir -p "$prefix/lib/corral-llama-exact"
  "$py" - "$exact" "$prefix/lib/corral-llama-exact" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "llama_cpp_python-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("llama_cpp/lib/") and not name.endswith("/"):
            target = os.path.join(sys.argv[2], os.path.basename(name))
            with z.open(name) as src, open(target, "wb") as dst:
                dst.write(src.read())
PY
  echo "$fast $exact" > "$stamp"
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
