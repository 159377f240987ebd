# syntax=docker/dockerfile:1
# corestream images. Two targets, both with the `corestream` entrypoint and a non-root user:
#   docker build --target cpu  -t corestream:cpu  .   (default; CPU build of torch)
#   docker build --target cuda -t corestream:cuda .   (CUDA build of torch; run with --gpus all)
# The CUDA torch wheels bundle the CUDA runtime libraries, so the host only needs the NVIDIA driver and
# the NVIDIA container toolkit.
ARG PYTHON_IMAGE=python:3.11-slim
ARG TORCH_VERSION=2.13.0

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------- build stages: torch, then the project
FROM base AS torch-cpu
ARG TORCH_VERSION
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

FROM base AS torch-cuda
ARG TORCH_VERSION
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN python -m venv /opt/venv && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

FROM base AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config ./config
COPY models ./models
COPY streaming ./streaming
COPY trainer ./trainer

FROM torch-cpu AS build-cpu
COPY --from=source /src /src
RUN pip install /src

FROM torch-cuda AS build-cuda
COPY --from=source /src /src
RUN pip install /src

# ---------------------------------------------------------------- runtime stages
FROM base AS runtime
RUN useradd --create-home --uid 10001 --user-group corestream \
    && mkdir -p /var/cache/corestream /app \
    && chown corestream:corestream /var/cache/corestream /app
ENV CORESTREAM_MODEL__CACHE_DIR=/var/cache/corestream/models \
    HF_HOME=/var/cache/corestream/huggingface
WORKDIR /app
# Downloaded registry models and Hugging Face files survive restarts when this is a named volume.
VOLUME ["/var/cache/corestream"]
# 9108: processor /metrics /healthz /readyz; 8080: HTTP API (corestream serve)
EXPOSE 9108 8080
ENTRYPOINT ["corestream"]
CMD ["run"]

FROM runtime AS cuda
COPY --from=build-cuda /opt/venv /opt/venv
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CORESTREAM_MODEL__DEVICE=cuda
USER corestream

# Last stage, so a plain `docker build .` gives the CPU image.
FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
USER corestream
