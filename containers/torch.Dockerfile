# cauce-torch: kfp + cauce core + PyTorch (CPU build) + scikit-learn.
# Steps: PyTorch training.
# See containers/README.md for the families and their size budgets.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# PyPI's Linux torch wheel is the CUDA build (several GB of nvidia-* wheels); PyTorch's
# own CPU index serves the same version without them. torch comes from there alone
# (--no-deps); everything else, torch's dependencies included, from PyPI.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/lock.txt requirements/lock.txt
COPY containers/torch.lock.txt containers/torch.lock.txt
COPY src src
COPY components components
COPY pipelines pipelines
# Versions pinned by the lock files; wheels only, so no compiler is needed (or left behind).
# The smoke check fails the build if a step of this family could not import what it runs.
RUN python -m venv /opt/cauce \
    && /opt/cauce/bin/pip install --no-cache-dir --only-binary=:all: --no-deps \
        --index-url "${TORCH_INDEX_URL}" \
        --constraint requirements/lock.txt --constraint containers/torch.lock.txt torch \
    && /opt/cauce/bin/pip install --no-cache-dir --only-binary=:all: \
        --constraint requirements/lock.txt --constraint containers/torch.lock.txt ".[torch,sklearn]" \
    && /opt/cauce/bin/python -m cauce.families smoke torch

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cauce-torch" \
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
