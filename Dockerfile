# syntax=docker/dockerfile:1.7
#
# Images of dspark-k8s, one target each (build from the repository root):
#
#   docker build --target operator -t ghcr.io/dspark-k8s/dspark-operator:0.1.0 .
#   docker build --target trainer  -t ghcr.io/dspark-k8s/dspark-trainer:0.1.0 .
#   docker build --target serving  -t ghcr.io/dspark-k8s/dspark-serving:0.1.0 .
#
# operator: the Kopf operator only (python slim, no torch): `pip install .[operator]`.
# trainer:  torch 2.11.0 (CUDA 12.8), the trainer, the reference capture server (Hugging Face
#           transformers, for small targets) and the CUDA build of Mooncake, whose wheel also
#           provides `mooncake_master` (the operator runs the Mooncake master from this image).
# serving:  SGLang (the version pinned in the `serving` extra) with this package's capture plugin
#           and the CUDA build of Mooncake: the inference pods of a job (they run
#           `dspark capture-server --config /etc/dspark/job.yaml`, which starts SGLang with the
#           capture flags and the plugin allowed), and the image to serve the trained draft with.
# Trainer and SGLang cannot share one image: the pinned SGLang requires a different torch (and
# transformers) than the trainer's pins, so each gets the torch base image its pins need.
#
# Versions below must agree with pyproject.toml (tests/deploy/test_deploy_dockerfile.py checks it).
# Every Python package an image installs is pinned exactly by its lock, locks/<image>.txt (generated
# by scripts/lock_images.py from pip's resolution; passed to pip as --constraint; checked against
# pyproject.toml and the ARGs below by the same test).
# Base images are pinned by tag and digest (multi-arch index digests).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
ARG TRAINER_BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime@sha256:eee11b3b3872a8c838e35ef48f08b2d5def2080902c7f666831310ca1a0ef2be
ARG SERVING_BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.2-cudnn9-runtime@sha256:c4ab67f95221a342dff0e8ca4543a7b8885f79f7a0029c0e2e39685d5eaf1722

# ------------------------------------------------------------------------------------------------
# The project wheel, built once without dependencies (each image installs it with its extras).
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer ./trainer
RUN pip wheel --no-deps --wheel-dir /wheels .

# ------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator
ARG DSPARK_VERSION=0.1.0
LABEL org.opencontainers.image.title="dspark-operator" \
      org.opencontainers.image.description="Kopf operator reconciling DSparkTrainingJobs" \
      org.opencontainers.image.source="https://github.com/dspark-k8s/dspark-k8s" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${DSPARK_VERSION}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=bind,source=locks,target=/locks \
    pip install --find-links /wheels --constraint /locks/operator.txt "dspark-k8s[operator]==${DSPARK_VERSION}" \
    && dspark-operator --version
# The chart runs it with a read-only root filesystem (a writable /tmp is mounted).
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["dspark-operator"]

# ------------------------------------------------------------------------------------------------
# Mooncake's runtime libraries (RDMA verbs and providers, NUMA) on an Ubuntu-based CUDA image.
FROM ${TRAINER_BASE_IMAGE} AS trainer
ARG DSPARK_VERSION=0.1.0
ARG TORCH_VERSION=2.11.0
ARG MOONCAKE_VERSION=0.3.13.post1
LABEL org.opencontainers.image.title="dspark-trainer" \
      org.opencontainers.image.description="DSpark draft trainer (torchrun FSDP2), reference capture server, Mooncake master" \
      org.opencontainers.image.source="https://github.com/dspark-k8s/dspark-k8s" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${DSPARK_VERSION}"
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       libibverbs1 librdmacm1 libnuma1 ibverbs-providers \
    && rm -rf /var/lib/apt/lists/*
# torch==${TORCH_VERSION} is satisfied by the base image's build (2.11.0+cu128), so pip keeps it.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=bind,source=locks,target=/locks \
    pip install --find-links /wheels --constraint /locks/trainer.txt \
       "dspark-k8s[trainer,mooncake-cuda]==${DSPARK_VERSION}" \
       "torch==${TORCH_VERSION}" \
       "mooncake-transfer-engine==${MOONCAKE_VERSION}" \
    && python -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(v != '${TORCH_VERSION}' and f'torch {v}')" \
    && command -v mooncake_master && dspark --help >/dev/null
# Non-root. Mooncake over RDMA registers (locks) memory: the node's container runtime must allow
# unlimited RLIMIT_MEMLOCK (usual on RDMA nodes); IPC_LOCK alone does not apply to non-root users.
RUN useradd --uid 1000 --user-group --create-home --shell /bin/bash dspark
USER 1000:1000
WORKDIR /home/dspark
ENV HOME=/home/dspark \
    HF_HOME=/home/dspark/.cache/huggingface
CMD ["dspark", "--help"]

# ------------------------------------------------------------------------------------------------
FROM ${SERVING_BASE_IMAGE} AS serving
ARG DSPARK_VERSION=0.1.0
ARG SGLANG_VERSION=0.5.23
ARG SGLANG_TORCH_VERSION=2.14.1
ARG MOONCAKE_VERSION=0.3.13.post1
LABEL org.opencontainers.image.title="dspark-serving" \
      org.opencontainers.image.description="SGLang with the dspark hidden-state capture plugin and Mooncake" \
      org.opencontainers.image.source="https://github.com/dspark-k8s/dspark-k8s" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${DSPARK_VERSION}"
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       libibverbs1 librdmacm1 libnuma1 ibverbs-providers \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=bind,source=locks,target=/locks \
    pip install --find-links /wheels --constraint /locks/serving.txt \
       "dspark-k8s[serving,mooncake-cuda]==${DSPARK_VERSION}" \
       "sglang==${SGLANG_VERSION}" \
       "torch==${SGLANG_TORCH_VERSION}" \
       "mooncake-transfer-engine==${MOONCAKE_VERSION}" \
    && python -c "import importlib.metadata as m; assert m.version('sglang') == '${SGLANG_VERSION}'" \
    && python -c "import importlib.metadata as m; eps = m.entry_points(group='sglang.srt.plugins'); assert 'dspark_capture' in eps.names, eps"
RUN useradd --uid 1000 --user-group --create-home --shell /bin/bash dspark
USER 1000:1000
WORKDIR /home/dspark
ENV HOME=/home/dspark \
    HF_HOME=/home/dspark/.cache/huggingface
CMD ["python3", "-m", "sglang.launch_server", "--help"]
