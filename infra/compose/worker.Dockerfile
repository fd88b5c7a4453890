# Python environment of a FluxForge process worker (CPU). Built from the repository root by
# infra/compose/docker-compose.yml; the checkout is mounted at /srv/fluxforge at run time.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/fluxforge
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
# CPU torch first (the default wheel pulls CUDA), then the pinned stack; -e so that the mounted
# checkout's src/ is the code that runs.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir -c requirements.lock -e . \
    && git config --system --add safe.directory /srv/fluxforge
