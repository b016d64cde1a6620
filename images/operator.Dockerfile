# The kubetune operator: slim Python with the `operator` extra only (kopf, prometheus-client, pyyaml, plus the
# torch-free kubetune.api it validates specs with), at exactly the versions uv.lock pins (hashes checked). Build from
# the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/kubetune/kubetune-operator:0.1.0 .
# tests/test_images.py keeps the extra honest (everything the operator imports is in it, nothing runtime-only is) and
# checks that both images install from the lock.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
# The uv that .ci/uv pins (a test checks they agree).
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8
# pyproject.toml's version (a test checks they agree).
ARG KUBETUNE_VERSION=0.1.0

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
# UV_COMPILE_BYTECODE: pods run with a read-only root filesystem and PYTHONDONTWRITEBYTECODE, so the bytecode
# compiled here is the only bytecode they get; without it every start compiled every module again (~3 s).
ENV UV_PROJECT_ENVIRONMENT=/opt/kubetune \
    UV_PYTHON=/usr/local/bin/python3.12 \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
# --locked: refuse a lock that no longer matches pyproject.toml; --no-editable: the venv stands without /src.
RUN --mount=type=bind,from=uv,source=/uv,target=/usr/local/bin/uv \
    uv sync --locked --no-editable --extra operator

FROM ${PYTHON_IMAGE}
ARG KUBETUNE_VERSION
LABEL org.opencontainers.image.version="${KUBETUNE_VERSION}"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/kubetune/bin:$PATH
COPY --from=build /opt/kubetune /opt/kubetune
RUN useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin kubetune
USER 65532:65532
# Metrics and the liveness endpoint (the chart's probes and ServiceMonitor use them).
EXPOSE 8080 8081
ENTRYPOINT ["kubetune-operator"]
