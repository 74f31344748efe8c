# The GPU evaluation worker: `swarmq worker --gpus ...` on the official PyTorch CUDA runtime
# image, whose torch (2.13.0+cu126) is kept: pip is constrained to it, so no dependency can pull
# a second, CPU-only or differently built torch over it.
#
#   docker build -f docker/worker.Dockerfile -t swarmq-worker .
#
# The build context is the repository root; .dockerignore lets only what the install needs in.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

# The image's Python is the system one: pip must be allowed to install beside it (PEP 668).
# No pip cache in the image; logs unbuffered for `docker logs`.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/srv/swarmq/hf-cache

# The same unprivileged user (uid 10001) as the app image: files one service writes to the
# shared artifacts volume are readable by the others.
ARG UID=10001
RUN groupadd --gid "${UID}" swarmq \
    && useradd --uid "${UID}" --gid swarmq --create-home --shell /usr/sbin/nologin swarmq \
    && mkdir -p /srv/swarmq/artifacts /srv/swarmq/hf-cache \
    && chown -R swarmq:swarmq /srv/swarmq

WORKDIR /opt/swarmq

# Dependencies first, from pyproject.toml alone: editing the source does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch.txt \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --constraint /tmp/torch.txt --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY migrations ./migrations
COPY swarmq ./swarmq
RUN pip install --no-deps --constraint /tmp/torch.txt . \
    && rm -rf build ./*.egg-info \
    && python -c "import torch, swarmq.cli; print('swarmq on torch', torch.__version__)"

USER swarmq
WORKDIR /srv/swarmq
# One worker process per listed GPU, each seeing only its own card. The compose file passes
# the GPUs from SWARMQ_GPUS; with `docker run`, append them: `... swarmq-worker --gpus 0,1`.
ENTRYPOINT ["swarmq", "worker"]
CMD ["--gpus", "0"]
