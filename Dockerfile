# digitserve: the FastAPI server with the shipped baseline models, CPU-only by default.
#
#   docker build -t digitserve .
#   docker run --rm -p 8000:8000 digitserve                # serves /app/registry
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 -t digitserve:cuda .
#     (any CUDA index that lists TORCH_VERSION; the GPU then needs the NVIDIA container runtime)
#
# Configuration is only through environment variables (DIGITSERVE_*, AWS_*): see docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with CPU torch and the project -------------------------------
FROM ${PYTHON_IMAGE} AS build

# The torch wheel index decides the variant: /whl/cpu keeps the image ~1 GB instead of ~6 GB.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.15.0
ARG TORCHVISION_VERSION=0.29.2

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv
RUN python -m venv "$VIRTUAL_ENV"
ENV PATH="/opt/venv/bin:$PATH"

# torch first, from its own index, in its own layer: it is most of the image and changes least.
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# The project itself; torch>=... in its dependencies is already met, so PyPI's CUDA build is not pulled.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ ./src/
RUN pip install --no-cache-dir . \
    && python -c "import digitserve, torch, torchvision, timm; print('torch', torch.__version__)"

# ---- runtime: the venv, the shipped registry, a non-root user -----------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="digitserve" \
      org.opencontainers.image.description="Handwritten-digit recognition service (CNN/ViT on MNIST)" \
      org.opencontainers.image.licenses="MIT"

# A fixed numeric uid so orchestrators can verify runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 digitserve \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /app \
        --shell /usr/sbin/nologin digitserve \
    && mkdir -p /var/cache/digitserve \
    && chown 10001:10001 /var/cache/digitserve \
    && chmod 0700 /var/cache/digitserve

COPY --from=build /opt/venv /opt/venv
# The embedded default registry: the image serves the shipped baselines without S3.
COPY registry/ /app/registry/

ENV VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    DIGITSERVE_REGISTRY=/app/registry \
    DIGITSERVE_CACHE_DIR=/var/cache/digitserve \
    DIGITSERVE_MODELS=cnn,vit \
    DIGITSERVE_ALIAS=production

# The only writable places when the root filesystem is read-only (ECS readonlyRootFilesystem,
# compose read_only): ECS and Docker copy these folders, with their owner, into fresh volumes.
VOLUME ["/tmp", "/var/cache/digitserve"]

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# Liveness only (/readyz is the load balancer's question); the image has no curl, python suffices.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["digitserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
