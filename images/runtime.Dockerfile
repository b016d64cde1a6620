# The kubetune runtime that training, convert and chat pods run: CUDA, PyTorch, and the train/serve/s3 extras at
# exactly the versions uv.lock pins (hashes checked); flash-attn optional. Build from the repository root:
#   docker build -f images/runtime.Dockerfile -t ghcr.io/kubetune/kubetune-runtime:0.1.0 .
#   docker build -f images/runtime.Dockerfile --build-arg FLASH_ATTN=1 -t ghcr.io/kubetune/kubetune-runtime:0.1.0-fa .
# The operator runs these pods as uid 1000 with a read-only root filesystem; /work, /tmp and /dev/shm are emptyDirs.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
# The uv that .ci/uv pins (a test checks they agree).
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE}
ARG FLASH_ATTN=0
# UV_COMPILE_BYTECODE: pods run with a read-only root filesystem and PYTHONDONTWRITEBYTECODE, so the bytecode
# compiled here is the only bytecode they get; without it every start compiled every module again (~3 s).
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_COMPILE_BYTECODE=1 \
    VIRTUAL_ENV=/opt/kubetune \
    UV_PROJECT_ENVIRONMENT=/opt/kubetune \
    UV_PYTHON=/usr/bin/python3.12 \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy \
    PATH=/opt/kubetune/bin:$PATH \
    HOME=/work \
    HF_HOME=/work/.cache/huggingface
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu's archive replaces patch versions, so exact apt pins would break rebuilds; the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The locked dependencies first, in their own layer: a source change rebuilds only the last one.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=bind,from=uv,source=/uv,target=/usr/local/bin/uv \
    uv sync --locked --no-install-project --no-editable --extra train --extra serve --extra s3
COPY runtime/ runtime/
COPY operator/ operator/
# flash-attn compiles against the locked torch, so it stays out of the lock (which must resolve on machines without
# CUDA); it is pinned here instead.
RUN --mount=type=bind,from=uv,source=/uv,target=/usr/local/bin/uv \
    uv sync --locked --no-editable --extra train --extra serve --extra s3 \
    && if [ "$FLASH_ATTN" = "1" ]; then uv pip install --no-build-isolation "flash-attn==2.8.3.post2"; fi \
    && rm -rf /src \
    && groupadd --gid 1000 kubetune \
    && useradd --uid 1000 --gid 1000 --home-dir /work --no-create-home --shell /usr/sbin/nologin kubetune \
    && mkdir -p /work && chown 1000:1000 /work
WORKDIR /work
USER 1000:1000
# Rendezvous (torchrun), training metrics (rank 0), chat server.
EXPOSE 29500 9100 8000
ENTRYPOINT ["kubetune"]
