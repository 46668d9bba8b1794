# Corral in a container: two variants, both built by scripts/install.sh (the script CI runs).
#
#   docker build -t corral:cuda .                 NVIDIA GPUs (CUDA 12.8; the default target)
#   docker build --target cpu -t corral:cpu .     CPU only: any x86-64 CPU with AVX2
#   docker run -d --gpus all -p 11434:11434 -v corral-models:/models --name corral corral:cuda
#
# Build arguments:
#   CUDA_ARCHITECTURES  GPU compute capabilities to compile for (default 80;86;89;90: A100/A30,
#                       RTX 30xx/A10/A40, L4/L40/RTX 40xx, H100/H200); one of them builds faster
#   EXTRAS              pyproject extras to install too, e.g. "retrieval,agents"
#   CUDA_VERSION, UBUNTU_VERSION, PYTHON_IMAGE   the base images

# Lint: tests/test_dockerfile.py runs hadolint. Its one ignored rule, DL3008 (pin apt package
# versions), is off on purpose: the base images are pinned, and Debian/Ubuntu drop superseded
# package versions from their archives, so pinned apt versions would break the build on their own.

ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- CPU ---------------------------------------------------------------------------------------

FROM ${PYTHON_IMAGE} AS cpu-builder
# apt versions come with the pinned base image (see DL3008 above)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake ninja-build patch \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG EXTRAS=""
# GGML_NATIVE=OFF: portable x86-64 code (AVX2, FMA, F16C), not the build machine's -march=native
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF" CORRAL_VENV=/opt/corral CORRAL_EDITABLE=0 \
    bash scripts/install.sh "${EXTRAS}"

FROM ${PYTHON_IMAGE} AS cpu
# apt versions come with the pinned base image (see DL3008 above)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 corral \
    && useradd --system --uid 10001 --gid corral --create-home --home-dir /home/corral corral \
    && mkdir /models && chown 10001:10001 /models
COPY --from=cpu-builder /opt/corral /opt/corral
ENV PATH=/opt/corral/bin:$PATH PYTHONUNBUFFERED=1 \
    OLLAMA_HOST=0.0.0.0:11434 OLLAMA_MODELS=/models
USER 10001:10001
WORKDIR /home/corral
VOLUME /models
EXPOSE 11434
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; from server.config import parse_host; _, port = parse_host(os.environ.get('OLLAMA_HOST')); urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=4)"]
CMD ["corral", "serve"]

# ---- CUDA (last stage: the default target) -----------------------------------------------------

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS cuda-builder
ARG DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04's python3 is 3.12; the runtime stage installs the same one (the venv links to it);
# apt versions come with the pinned base image (see DL3008 above)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev python3-venv build-essential cmake ninja-build patch \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG EXTRAS=""
ARG CUDA_ARCHITECTURES="80;86;89;90"
# no GPU (nor driver) is needed to build: libcuda comes from the toolkit's stubs and, at run time,
# from the NVIDIA Container Toolkit; GGML_NATIVE=OFF keeps the CPU code portable
RUN CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES} -DGGML_NATIVE=OFF" \
    CORRAL_VENV=/opt/corral CORRAL_EDITABLE=0 bash scripts/install.sh "${EXTRAS}"

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS cuda
ARG DEBIAN_FRONTEND=noninteractive
# apt versions come with the pinned base image (see DL3008 above)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 corral \
    && useradd --system --uid 10001 --gid corral --create-home --home-dir /home/corral corral \
    && mkdir /models && chown 10001:10001 /models
COPY --from=cuda-builder /opt/corral /opt/corral
ENV PATH=/opt/corral/bin:$PATH PYTHONUNBUFFERED=1 \
    OLLAMA_HOST=0.0.0.0:11434 OLLAMA_MODELS=/models
USER 10001:10001
WORKDIR /home/corral
VOLUME /models
EXPOSE 11434
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; from server.config import parse_host; _, port = parse_host(os.environ.get('OLLAMA_HOST')); urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=4)"]
CMD ["corral", "serve"]
