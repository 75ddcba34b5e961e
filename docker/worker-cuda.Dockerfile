# syntax=docker/dockerfile:1
# CUDA worker image: `gif-service worker` on the `gpu.<pool>` queue, one container (one worker
# process, concurrency 1) per GPU, pinned with CUDA_VISIBLE_DEVICES.
#
# Base: python:3.11-slim plus PyTorch's CUDA wheel, not an nvidia/cuda image. The cu128 wheel
# brings its own CUDA runtime, cuBLAS, cuDNN and NCCL (the nvidia-* pip packages); the host only
# needs the NVIDIA driver (R570 or newer for CUDA 12.8) and the NVIDIA Container Toolkit, which
# mounts the driver libraries into the container. An nvidia/cuda base would ship a second copy of
# the CUDA libraries that torch does not use.
#
# Build from the repository root:  docker build -f docker/worker-cuda.Dockerfile -t gif-service/worker-cuda .
# Another CUDA line:  --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment under /opt/venv -----------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
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
# No GPU at build time: check the import and that this torch was built with CUDA.
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
 && python -I -c "import torch, gif, workers.celery_app; assert torch.version.cuda, 'not a CUDA build of torch'"

# -- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS worker
LABEL org.opencontainers.image.title="gif-service CUDA worker" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 gif \
 && useradd --system --uid 10001 --gid gif --home-dir /home/gif --create-home --shell /usr/sbin/nologin gif \
 && mkdir -p /data \
 && chown gif:gif /data
COPY --from=build /opt/venv /opt/venv
COPY docker/worker-healthcheck.py /usr/local/lib/gif/worker-healthcheck.py
# NVIDIA_DRIVER_CAPABILITIES: what the container toolkit mounts (compute = libcuda, utility =
# nvidia-smi). Which GPUs the container sees comes from the run (compose `deploy.resources`);
# which one the worker uses from CUDA_VISIBLE_DEVICES (one worker per GPU).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GIF_HOME=/data \
    GIF_GPU_POOL=default \
    GIF_TORCH_THREADS=1 \
    CUDA_VISIBLE_DEVICES=0 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    REMAP_SIGTERM=SIGQUIT
USER 10001:10001
WORKDIR /home/gif
VOLUME ["/data"]
HEALTHCHECK --interval=60s --timeout=30s --start-period=180s --retries=3 \
  CMD ["python", "/usr/local/lib/gif/worker-healthcheck.py"]
# The GPU queue only (validation runs on CPU workers). `exec`: the worker replaces the shell and
# receives docker stop's SIGTERM itself.
CMD ["sh", "-c", "exec gif-service worker --queues \"gpu.${GIF_GPU_POOL}\" --concurrency 1"]
