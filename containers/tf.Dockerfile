# cauce-tf: kfp + cauce core + TensorFlow + TensorFlow Model Analysis + scikit-learn.
# Steps: evaluate (TFMA), Keras training.
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
        --constraint requirements/lock.txt ".[tf,sklearn]" \
    && /opt/cauce/bin/python -m cauce.families smoke tf

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cauce-tf" \
      org.opencontainers.image.source="https://github.com/cauce-ml/cauce" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cauce
COPY --from=build /opt/cauce /opt/cauce
# KFP runs `python3 -m kfp.dsl.executor_main`: the venv must come first on PATH.
ENV PATH=/opt/cauce/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CAUCE_HOME=/home/cauce/.cauce \
    TF_CPP_MIN_LOG_LEVEL=2
USER 10001
WORKDIR /home/cauce
