# The kubetune runtime that training, convert and chat pods run: CUDA, PyTorch, and the train/serve/s3 extras;
# flash-attn optional. Build from the repository root:
#   docker build -f images/runtime.Dockerfile -t ghcr.io/kubetune/kubetune-runtime:0.1.0 .
#   docker build -f images/runtime.Dockerfile --build-arg FLASH_ATTN=1 -t ghcr.io/kubetune/kubetune-runtime:0.1.0-fa .
# The operator runs these pods as uid 1000 with a read-only root filesystem; /work, /tmp and /dev/shm are emptyDirs.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04

FROM ${CUDA_IMAGE}
ARG FLASH_ATTN=0
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/kubetune \
    PATH=/opt/kubetune/bin:$PATH \
    HOME=/work \
    HF_HOME=/work/.cache/huggingface
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu's archive replaces patch versions, so exact apt pins would break rebuilds; the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv "$VIRTUAL_ENV"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
# This checkout, not a PyPI package: its dependency ranges are pyproject.toml's.
# hadolint ignore=DL3013
RUN pip install ".[train,serve,s3]" \
    && if [ "$FLASH_ATTN" = "1" ]; then pip install --no-build-isolation "flash-attn>=2.7"; fi \
    && rm -rf /src \
    && groupadd --gid 1000 kubetune \
    && useradd --uid 1000 --gid 1000 --home-dir /work --no-create-home --shell /usr/sbin/nologin kubetune \
    && mkdir -p /work && chown 1000:1000 /work
WORKDIR /work
USER 1000:1000
# Rendezvous (torchrun), training metrics (rank 0), chat server.
EXPOSE 29500 9100 8000
ENTRYPOINT ["kubetune"]
