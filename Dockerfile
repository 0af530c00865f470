# digitserve: the FastAPI server with the shipped baseline models: ONNX Runtime, no torch.
#
#   docker build -t digitserve .
#   docker run --rm -p 8000:8000 digitserve                # serves the shipped baselines
#   GPU: see docs/deploy.md (onnxruntime-gpu in place of onnxruntime, DIGITSERVE_ONNX_PROVIDERS).
#
# Configuration is only through environment variables (DIGITSERVE_*, AWS_*): see docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with the serving install (no torch) ---------------------------
FROM ${PYTHON_IMAGE} AS build

# The server runs each version's ONNX artifact with ONNX Runtime: torch is not installed at all.

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv
RUN python -m venv "$VIRTUAL_ENV"
ENV PATH="/opt/venv/bin:$PATH"

# The project: src/ and the shipped registry/ (installed as the package digitserve.baselines).
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src/ ./src/
COPY registry/ ./registry/
RUN pip install --no-cache-dir . \
    && python -c "import digitserve.serving.app, onnxruntime; from digitserve.config import shipped_registry; print(shipped_registry())" \
    && ! python -c "import torch" 2>/dev/null

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

# The venv holds the shipped baselines (digitserve.baselines): the image serves them without S3.
COPY --from=build /opt/venv /opt/venv

ENV VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    DIGITSERVE_CACHE_DIR=/var/cache/digitserve \
    DIGITSERVE_FEEDBACK_SPOOL_DIR=/var/cache/digitserve/feedback-spool \
    DIGITSERVE_STATE_DIR=/var/cache/digitserve/state \
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
