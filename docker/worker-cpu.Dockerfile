# syntax=docker/dockerfile:1
# CPU worker image: `gif-service worker` (a Celery prefork worker). A CPU-only host can serve both
# queues: `cpu` (validation) and `gpu.<pool>` (the compute, run on CPU). Also builds Flower
# (`--target flower`), which needs the same Celery app (workers.celery_app:app).
#
# Build from the repository root:  docker build -f docker/worker-cpu.Dockerfile -t gif-service/worker-cpu .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment under /opt/venv -----------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
# Its dependency ranges are in pyproject.toml (no lock file yet): build all the images of a release
# from one commit at one time, so that they agree.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[distributed]"
COPY gif ./gif
COPY gif_client ./gif_client
COPY jobs ./jobs
COPY service ./service
COPY workers ./workers
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
 && python -I -c "import gif, workers.celery_app"

# -- common runtime layout ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 gif \
 && useradd --system --uid 10001 --gid gif --home-dir /home/gif --create-home --shell /usr/sbin/nologin gif \
 && mkdir -p /data \
 && chown gif:gif /data
COPY --from=build /opt/venv /opt/venv
COPY docker/worker-healthcheck.py /usr/local/lib/gif/worker-healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GIF_HOME=/data \
    GIF_TORCH_THREADS=1
WORKDIR /home/gif
VOLUME ["/data"]

# -- flower (compose profile `monitoring`): the same app plus Flower -----------------------------
FROM runtime AS flower
ARG FLOWER_VERSION=2.2.0
RUN pip install --no-cache-dir "flower==${FLOWER_VERSION}"
USER 10001:10001
EXPOSE 5555
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5555/healthcheck', timeout=4)"]
# Refuses to start without FLOWER_BASIC_AUTH ("user:password"): Flower has no auth of its own.
CMD ["sh", "-c", "test -n \"$FLOWER_BASIC_AUTH\" || { echo 'FLOWER_BASIC_AUTH is not set' >&2; exit 2; }; exec celery -A workers.celery_app:app flower --port=5555"]

# -- worker (the default target) ------------------------------------------------------------------
FROM runtime AS worker
LABEL org.opencontainers.image.title="gif-service CPU worker" \
      org.opencontainers.image.licenses="Apache-2.0"
# SIGTERM (docker stop) starts Celery's soft shutdown (worker_soft_shutdown_timeout), then a cold
# shutdown that puts unacked late-ack messages back on the queue. Give it a stop grace > 90 s.
ENV REMAP_SIGTERM=SIGQUIT
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=30s --start-period=120s --retries=3 \
  CMD ["python", "/usr/local/lib/gif/worker-healthcheck.py"]
CMD ["gif-service", "worker", "--concurrency", "1"]
