#!/usr/bin/env bash
# The GPU figures issue 2 asks for, in as few device calls as fit a lease (no network there).
#
#   bash bench/gpu.sh prepare     here, in the repo root (needs PyPI and ../shared/gpu): fills .gpu/
#                                 (git-ignored) with the anchor kit of ../shared/gpu (slim llama.cpp
#                                 source, vocab, gguf wheel) and wheels of Corral's dependencies that
#                                 the GPU image lacks (Python 3.12, manylinux x86_64)
#   bash bench/gpu.sh build       there (carry .gpu): CUDA build of llama.cpp (libllama, llama-server,
#                                 llama-bench, llama-quantize; about 4.5 min on 16 cores), the wheels
#                                 installed into /tmp/site, the random-weight 8B-shape Q4_K_M model
#   bash bench/gpu.sh bench       there, right after (state lives in /root/anchor while the machine is
#                                 warm): llama-bench tg128 (the N=1 anchor), then bench.throughput at
#                                 --concurrency ${LEVELS:-1,16,64} against the raw loop and llama-server
#
# Figures go to stdout and $OUT/gpu.txt. Environment: SHAPE (8b; 1b or tiny for a quicker run), LEVELS,
# REPEAT (1); PY (python3) and PYVER (3.12), the interpreter there and the version the wheels are for.
# bench.throughput's own docstring says what each figure is.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHAPE=${SHAPE:-8b}
PY=${PY:-python3}
W=/root/anchor
OUT=${OUT:-/tmp/out}
# Corral's runtime dependencies that the GPU image does not have (its KINDS.md package list)
WHEELS="litestar==2.25.0 litestar-htmx==0.5.0 msgspec==0.23.0 multipart==2.0.1 polyfactory==3.5.0 faker==40.63.0
rich-click==1.9.9 uvicorn==0.55.0 httptools==0.9.0 sniffio==1.3.1"

prepare() {
  [ -f .gpu/.carry/llama-slim.tar.gz ] || bash ../shared/gpu/prepare.sh
  mkdir -p .gpu/.carry/wheels
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/.carry/wheels $WHEELS
  du -sh .gpu
}

site() {  # the carried wheels and the CUDA build, for python3 there
  SRC=$(ls -d $W/llama_cpp_python-* | head -1)
  BIN=$SRC/vendor/llama.cpp/build/bin
  export LLAMA_CPP_LIB_PATH=$BIN PYTHONPATH=$ROOT:$SRC:/tmp/site
}

build() {
  bash .gpu/anchor.sh build
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
    .gpu/.carry/wheels/*.whl .gpu/.carry/gguf-*.whl .gpu/.carry/diskcache-*.whl
  site
  if [ ! -f $W/$SHAPE-q4km.gguf ]; then
    $PY .gpu/make_random_llama.py .gpu/.carry/ggml-vocab-llama-bpe.gguf $W/$SHAPE-f16.gguf $SHAPE
    "$BIN"/llama-quantize $W/$SHAPE-f16.gguf $W/$SHAPE-q4km.gguf Q4_K_M > $W/quant.log 2>&1 || { tail $W/quant.log; exit 1; }
    rm -f $W/$SHAPE-f16.gguf
  fi
  # the model in a store of its own, as a pull or create would leave it
  $PY -c "import sys; from server.store.register import register_gguf; from server.store.store import Store; \
register_gguf(Store(sys.argv[1]), 'anchor-$SHAPE', sys.argv[2])" $W/models $W/$SHAPE-q4km.gguf
  $PY -c "import llama_cpp.llama_cpp as C; print('llama.cpp GPU offload:', bool(C.llama_supports_gpu_offload()))"
}

bench() {
  site
  mkdir -p "$OUT"
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    echo "== llama-bench $SHAPE (tg128: the N=1 anchor)"
    "$BIN"/llama-bench -m $W/$SHAPE-q4km.gguf -ngl 99 -fa 1 -p 512 -n 128 -r 3 -o md 2>&1 | grep -E "^\|"
    echo "== bench.throughput"
    OLLAMA_MODELS=$W/models $PY -m bench.throughput --model anchor-$SHAPE --concurrency "${LEVELS:-1,16,64}" \
      --repeat "${REPEAT:-1}" --llama-server "$BIN"/llama-server
  } 2>&1 | tee "$OUT/gpu.txt"
}

case ${1:-} in
  prepare) prepare ;;
  build) build ;;
  bench) bench ;;
  *) echo "usage: bash bench/gpu.sh prepare|build|bench" >&2; exit 2 ;;
esac
