# The kubetune operator: slim Python with the `operator` extra only (kopf, prometheus-client, pyyaml, plus the
# torch-free kubetune.api it validates specs with). Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/kubetune/kubetune-operator:0.1.0 .
# tests/test_images.py keeps the extra honest: everything the operator imports is in it, nothing runtime-only is.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
# pyproject.toml's version (a test checks they agree).
ARG KUBETUNE_VERSION=0.1.0

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[operator]"

FROM ${PYTHON_IMAGE}
ARG KUBETUNE_VERSION
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "kubetune[operator]==${KUBETUNE_VERSION}" \
    && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin kubetune
USER 65532:65532
# Metrics and the liveness endpoint (the chart's probes and ServiceMonitor use them).
EXPOSE 8080 8081
ENTRYPOINT ["kubetune-operator"]
