# cauce-serving: the prediction server only, for Vertex AI endpoints (and KServe V1).
# Honours the Vertex custom-container contract: AIP_HTTP_PORT, AIP_HEALTH_ROUTE,
# AIP_PREDICT_ROUTE, AIP_STORAGE_URI (the gs:// model folder).
# See containers/README.md for the families and their size budgets.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# PyPI's Linux torch wheel is the CUDA build; PyTorch's CPU index serves the same version.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Keras bundles run on the torch backend here (the smoke check imports keras too).
ENV KERAS_BACKEND=torch
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/lock.txt requirements/lock.txt
COPY containers/serving.requirements.txt containers/serving.requirements.txt
COPY containers/torch.lock.txt containers/torch.lock.txt
COPY src src
COPY components components
COPY pipelines pipelines
# cauce without its pipeline dependencies (kfp, BigQuery, Vertex SDK: half a GB the
# server never imports), plus only what the server needs, pinned by the lock file.
# Wheels only, so no compiler is needed (or left behind). The smoke check fails the
# build if the server could not import what it runs.
# One server for every framework: scikit-learn, PyTorch, and Keras on the torch backend
# (a .keras file of built-in layers loads there without TensorFlow, same predictions).
RUN python -m venv /opt/cauce \
    && /opt/cauce/bin/pip install --no-cache-dir --only-binary=:all: --no-deps . \
    && /opt/cauce/bin/pip install --no-cache-dir --only-binary=:all: --no-deps \
        --index-url "${TORCH_INDEX_URL}" \
        --constraint requirements/lock.txt --constraint containers/torch.lock.txt torch \
    && /opt/cauce/bin/pip install --no-cache-dir --only-binary=:all: \
        --constraint requirements/lock.txt --constraint containers/torch.lock.txt \
        --requirement containers/serving.requirements.txt \
    && /opt/cauce/bin/python -m cauce.families smoke serving

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cauce-serving" \
      org.opencontainers.image.source="https://github.com/cauce-ml/cauce" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cauce
COPY --from=build /opt/cauce /opt/cauce
# Inside a container the server must listen on all interfaces; outside one,
# cauce serves on loopback only.
ENV PATH=/opt/cauce/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CAUCE_SERVE_HOST=0.0.0.0 \
    KERAS_BACKEND=torch \
    AIP_HTTP_PORT=8080 \
    AIP_HEALTH_ROUTE=/health \
    AIP_PREDICT_ROUTE=/predict
USER 10001
WORKDIR /home/cauce
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s%s' % (os.environ['AIP_HTTP_PORT'], os.environ['AIP_HEALTH_ROUTE']), timeout=2)"]
ENTRYPOINT ["python", "-m", "cauce.serving"]
