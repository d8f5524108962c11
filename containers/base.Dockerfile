# cauce-base: kfp + cauce core + scikit-learn + MLflow.
# Steps: extract, validate, train (scikit-learn), register, deploy, monitor, champion, retrain.
# See containers/README.md for the families, their size budgets and local builds.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# LightGBM (the default gradient-boosting engine) links the system's OpenMP runtime, which
# slim images lack; the version is pinned like everything else.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.0-14+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in a layer code changes do not invalidate: exact pins, --no-deps
# (nothing the lock does not name gets in). The pinned file allows wheels only, except for
# the few pure-Python packages PyPI ships only as source (built with the pinned setuptools;
# no compiler is needed).
COPY requirements/build.txt requirements/lock.txt requirements/image-base.txt requirements/
RUN python -m venv /opt/cauce \
    && /opt/cauce/bin/pip install --no-cache-dir --no-deps --only-binary=:all: --requirement requirements/build.txt \
    && /opt/cauce/bin/pip install --no-cache-dir --no-deps --no-build-isolation --requirement requirements/image-base.txt
COPY pyproject.toml README.md ./
COPY src src
COPY components components
COPY pipelines pipelines
# cauce itself; then the smoke check fails the build if a step of this family could not
# import what it runs, or if anything installed is not pinned by the lock.
RUN /opt/cauce/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/cauce/bin/python -m cauce.families smoke base --lock requirements/lock.txt

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cauce-base" \
      org.opencontainers.image.source="https://github.com/cauce-ml/cauce" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cauce
# LightGBM (the default gradient-boosting engine) links the system's OpenMP runtime, which
# slim images lack; the version is pinned like everything else.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.0-14+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/cauce /opt/cauce
# KFP runs `python3 -m kfp.dsl.executor_main`: the venv must come first on PATH.
ENV PATH=/opt/cauce/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CAUCE_HOME=/home/cauce/.cauce
USER 10001
WORKDIR /home/cauce
