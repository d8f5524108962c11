# One image per dependency family; EXTRAS picks the family (see containers/README.md):
#   base  "[sklearn,mlflow,serving]"   extract, train (sklearn), register, deploy, monitor
#   beam  "[beam]"                     transform
#   tf    "[tf,sklearn]"               evaluate (TFMA)
# Versions come from requirements/lock.txt (used as constraints), so every image
# pins exactly what the tests ran with.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/lock.txt requirements/lock.txt
COPY src src
COPY components components
COPY pipelines pipelines
RUN python -m venv /opt/cauce \
    && /opt/cauce/bin/pip install --no-cache-dir --constraint requirements/lock.txt ".${EXTRAS}"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.source="https://github.com/cauce-ml/cauce" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cauce
COPY --from=build /opt/cauce /opt/cauce
# KFP runs `python3 -m kfp.dsl.executor_main`: the venv must come first on PATH.
ENV PATH=/opt/cauce/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CAUCE_HOME=/home/cauce/.cauce
USER 10001
WORKDIR /home/cauce
