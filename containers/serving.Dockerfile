# The serving image: honours the Vertex AI custom-container contract
# (AIP_HTTP_PORT, AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE, AIP_STORAGE_URI) and KServe V1.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/lock.txt requirements/lock.txt
COPY src src
COPY components components
COPY pipelines pipelines
RUN python -m venv /opt/cauce \
    && /opt/cauce/bin/pip install --no-cache-dir --constraint requirements/lock.txt ".[serving]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.source="https://github.com/cauce-ml/cauce" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cauce
COPY --from=build /opt/cauce /opt/cauce
# Inside a container the server must listen on all interfaces; outside one,
# cauce serves on loopback only.
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
