# syntax=docker/dockerfile:1
# The API image: `gif-service serve` (FastAPI + uvicorn). With GIF_BROKER_URL set it runs in
# distributed mode: it enqueues jobs to Celery and runs the lease sweeper; it computes nothing.
# It still needs a CPU torch: uploads are inspected in a sandboxed subprocess (workers.inspect_artifact)
# that loads checkpoints and datasets with torch / safetensors.
#
# Build from the repository root:  docker build -f docker/api.Dockerfile -t gif-service/api .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment under /opt/venv, copied whole into the runtime stage ------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
# CPU-only wheels: the default PyPI torch wheel for Linux pulls the CUDA libraries (several GB).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
# Dependencies first, from the metadata alone (a layer that survives code edits).
COPY pyproject.toml README.md ./
# Its dependency ranges are in pyproject.toml (no lock file yet): build all the images of a release
# from one commit at one time, so that they agree.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[distributed]"
# Then the code, without touching the dependencies again.
COPY gif ./gif
COPY gif_client ./gif_client
COPY jobs ./jobs
COPY service ./service
COPY workers ./workers
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
 && python -I -c "import service.cli, jobs.config, workers.inspect_artifact"

# -- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS api
LABEL org.opencontainers.image.title="gif-service API" \
      org.opencontainers.image.licenses="Apache-2.0"
# One uid/gid for every image (api, workers): blobs written by one are readable by the others.
RUN groupadd --system --gid 10001 gif \
 && useradd --system --uid 10001 --gid gif --home-dir /home/gif --create-home --shell /usr/sbin/nologin gif \
 && mkdir -p /data \
 && chown gif:gif /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GIF_HOME=/data
USER 10001:10001
WORKDIR /home/gif
VOLUME ["/data"]
EXPOSE 8000
# Liveness only (/livez checks no dependency): a database blip must not mark the API unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"]
CMD ["gif-service", "serve", "--host", "0.0.0.0", "--port", "8000"]
