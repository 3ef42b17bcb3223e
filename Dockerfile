# syntax=docker/dockerfile:1
# segpipe training image for GPU servers.
#   Build: docker build -t segpipe .
#   Run:   docker run --rm --gpus all --shm-size 16g \
#            -v "$PWD/data:/work/data" -v "$PWD/outputs:/work/outputs" -v "$PWD/mlflow:/work/mlflow" \
#            segpipe fit --config /app/configs/demo.yaml
# README.md, section "GPU servers", has the rest (MLflow UI, several GPUs, docker compose).
#
# CUDA: the locked torch (2.15.0, see uv.lock) is the PyPI build for CUDA 13.2 (torch.version.cuda
# "13.2"); it pins cuda-toolkit 13.2.2 and brings the CUDA user-space libraries itself as wheels
# (nvidia-cuda-runtime, nvidia-cublas, nvidia-cudnn-cu13 9.26, nvidia-nccl-cu13, ...). The image
# therefore needs no CUDA or cuDNN from the base, only the driver, which the NVIDIA Container Toolkit
# mounts at run time: the small "base" flavour of nvidia/cuda gives that setup (NVIDIA_VISIBLE_DEVICES,
# NVIDIA_DRIVER_CAPABILITIES=compute,utility, and NVIDIA_REQUIRE_CUDA=cuda>=13.2, so that an older
# driver is refused at start instead of failing inside torch). "cudnn-runtime" would add a second,
# unused cuDNN of ~1 GB. Any 13.2.x base fits (13.2.0 is the first 13.2 tag); keep CUDA_VERSION's
# major.minor equal to the torch build's when uv.lock changes (tests/test_docker.py checks it).
ARG CUDA_VERSION=13.2.0
ARG UV_VERSION=0.13.9
ARG PYTHON_VERSION=3.11

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---- build: Python 3.11 and the locked environment ---------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu24.04 AS build
ARG PYTHON_VERSION
COPY --from=uv /uv /usr/local/bin/uv
# Ubuntu 24.04 has no Python 3.11: uv installs its managed CPython 3.11 (python-build-standalone; the
# patch release and its checksum are fixed by the pinned uv version) under /opt/python; the environment
# goes to /opt/venv. Both are copied to the runtime stage at the same paths.
ENV UV_PYTHON=${PYTHON_VERSION} \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
RUN uv python install "${PYTHON_VERSION}"
WORKDIR /src
# Dependencies first (a layer that survives code changes), exactly as locked: --locked fails if uv.lock
# is out of date with pyproject.toml, so nothing is resolved here. The "postgres" extra is the MLflow
# server's database driver (docker-compose.yml runs the server from this image).
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --extra postgres --no-install-project
# Then segpipe itself, built into a wheel and installed as a package (not editable, no source tree);
# the build backend (hatchling, pyproject's build-system) is the only thing fetched unlocked.
COPY segpipe ./segpipe
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --extra postgres --no-editable

# ---- runtime ----------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu24.04 AS runtime
ARG UID=1000
ARG GID=1000
LABEL org.opencontainers.image.title="segpipe" \
      org.opencontainers.image.description="Semantic segmentation of medical images on PyTorch Lightning (CUDA 13.2)" \
      org.opencontainers.image.licenses="Apache-2.0"
# A non-root user. Ubuntu 24.04 images ship a user "ubuntu" with UID 1000; it makes way for segpipe,
# so that files written to bind mounts belong to the usual first user of the host.
RUN if id ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --gid "${GID}" segpipe \
    && useradd --create-home --uid "${UID}" --gid "${GID}" --shell /usr/sbin/nologin segpipe \
    && mkdir -p /work/data /work/outputs /work/mlflow /work/mlruns \
    && chown -R segpipe:segpipe /work
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
COPY configs /app/configs
# /work is the working directory, so the relative paths of the configs land in the volumes:
#   /work/data     datasets (read; the demo writes data/demo here on first use)
#   /work/outputs  checkpoints (outputs/<experiment>/<run>/checkpoints)
#   /work/mlflow   the local MLflow store (mlflow.db) when no tracking server is given
#   /work/mlruns   artifacts of that local store (MLflow puts them in ./mlruns)
# MLFLOW_TRACKING_URI wins over the configs' tracking_uri; docker-compose.yml sets it to the server.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLFLOW_TRACKING_URI=sqlite:////work/mlflow/mlflow.db
USER ${UID}:${GID}
WORKDIR /work
VOLUME ["/work/data", "/work/outputs", "/work/mlflow", "/work/mlruns"]
ENTRYPOINT ["segpipe"]
CMD ["--help"]
