# cauce-serving: the prediction server only, for Vertex AI endpoints (and KServe V1).
# Honours the Vertex custom-container contract: AIP_HTTP_PORT, AIP_HEALTH_ROUTE,
# AIP_PREDICT_ROUTE, AIP_STORAGE_URI (the gs:// model folder).
# See containers/README.md for the families, their size budgets and local builds.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# Only what the server imports (containers/serving.requirements.txt, closed over and
# pinned in requirements/image-serving.txt): no kfp, BigQuery or Vertex SDK, half a GB
# the server never imports. One runtime for every framework: each bundle's model.onnx
# (scikit-learn, LightGBM, Keras, PyTorch) runs in ONNX Runtime, so no training framework
# (PyTorch, Keras, scikit-learn with SciPy, LightGBM with OpenMP) is installed here.
# Exact pins, --no-deps, wheels only.
COPY requirements/build.txt requirements/lock.txt requirements/image-serving.txt requirements/
RUN python -m venv /opt/cauce \
    && /opt/cauce/bin/pip install --no-cache-dir --no-deps --only-binary=:all: --requirement requirements/build.txt \
    && /opt/cauce/bin/pip install --no-cache-dir --no-deps --no-build-isolation --requirement requirements/image-serving.txt
COPY pyproject.toml README.md ./
COPY src src
COPY components components
COPY pipelines pipelines
# cauce without its pipeline dependencies; the smoke check fails the build if the server
# could not import what it runs, or if anything installed is not pinned by the lock. Then
# the installer goes: a server installs nothing (pip, setuptools, wheel: 18 MiB).
RUN /opt/cauce/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/cauce/bin/python -m cauce.families smoke serving --lock requirements/lock.txt \
    && /opt/cauce/bin/python -m pip uninstall --yes pip setuptools wheel

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cauce-serving" \
      org.opencontainers.image.source="https://github.com/cauce-ml/cauce" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cauce
COPY --from=build /opt/cauce /opt/cauce
# Inside a container the server listens on all interfaces (the platform routes to it);
# outside one, cauce serves on loopback only.
ENV PATH=/opt/cauce/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CAUCE_SERVE_HOST=0.0.0.0 \
    AIP_HTTP_PORT=8080 \
    AIP_HEALTH_ROUTE=/health \
    AIP_PREDICT_ROUTE=/predict
USER 10001
WORKDIR /home/cauce
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s%s' % (os.environ['AIP_HTTP_PORT'], os.environ['AIP_HEALTH_ROUTE']), timeout=2)"]
ENTRYPOINT ["python", "-m", "cauce.serving"]
