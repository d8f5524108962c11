# cauce-base: kfp + cauce core + scikit-learn + MLflow.
# Steps: extract, train (scikit-learn), register, deploy, monitor, champion.
# See containers/README.md for the families and their size budgets.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/lock.txt requirements/lock.txt
COPY src src
COPY components components
COPY pipelines pipelines
# Versions pinned by the lock file; wheels only, so no compiler is needed (or left behind).
# The smoke check fails the build if a step of this family could not import what it runs.
RUN python -m venv /opt/cauce \
    && /opt/cauce/bin/pip install --no-cache-dir --only-binary=:all: \
        --constraint requirements/lock.txt ".[sklearn,mlflow]" \
    && /opt/cauce/bin/python -m cauce.families smoke base

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cauce-base" \
      org.opencontainers.image.source="https://github.com/cauce-ml/cauce" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cauce
COPY --from=build /opt/cauce /opt/cauce
# KFP runs `python3 -m kfp.dsl.executor_main`: the venv must come first on PATH.
ENV PATH=/opt/cauce/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CAUCE_HOME=/home/cauce/.cauce
USER 10001
WORKDIR /home/cauce
