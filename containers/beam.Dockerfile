# cauce-beam: kfp + cauce core + Apache Beam[gcp] + scikit-learn (batch prediction loads model bundles).
# Steps: transform. Also the Dataflow worker image: pass it as the transform's
# pipeline_options {"sdk_container_image": <this image>, "sdk_location": "container"},
# so workers run the same cauce and Beam as the step that launched them.
# See containers/README.md for the families and their size budgets.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
# Must equal apache-beam's version in requirements/lock.txt (a test checks it).
ARG BEAM_VERSION=2.77.0

# Beam's worker boot program (Dataflow starts it as the container's entrypoint).
FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam-sdk

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
        --constraint requirements/lock.txt ".[beam,sklearn]" \
    && /opt/cauce/bin/python -m cauce.families smoke beam

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cauce-beam" \
      org.opencontainers.image.source="https://github.com/cauce-ml/cauce" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cauce
COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam
COPY --from=build /opt/cauce /opt/cauce
# KFP runs `python3 -m kfp.dsl.executor_main` and Beam's boot runs `python`: the venv
# must come first on PATH. KFP steps set their own command, so the entrypoint only
# applies on Dataflow workers.
ENV PATH=/opt/cauce/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CAUCE_HOME=/home/cauce/.cauce
USER 10001
WORKDIR /home/cauce
ENTRYPOINT ["/opt/apache/beam/boot"]
