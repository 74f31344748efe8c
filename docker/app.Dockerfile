# The coordinator, Flower and the command line (`swarmq db upgrade`, `submit`, `watch`, ...):
# no GPU, so a slim Python with the CPU build of torch (swarmq depends on torch; from PyPI it
# would bring the CUDA libraries, gigabytes the coordinator never uses).
#
#   docker build -f docker/app.Dockerfile -t swarmq-app .
#
# The build context is the repository root; .dockerignore lets only what the install needs in.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# The same unprivileged user (uid 10001) as the worker image: files one service writes to the
# shared artifacts volume are readable by the others.
ARG UID=10001
RUN groupadd --gid "${UID}" swarmq \
    && useradd --uid "${UID}" --gid swarmq --create-home --shell /usr/sbin/nologin swarmq \
    && mkdir -p /srv/swarmq/artifacts \
    && chown -R swarmq:swarmq /srv/swarmq

WORKDIR /opt/swarmq

# torch first and pinned, from the CPU index; then the other dependencies from pyproject.toml
# alone (editing the source does not reinstall them), constrained to keep that torch.
ARG TORCH_VERSION=2.13.0
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" \
    && python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch.txt
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
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
ENTRYPOINT ["swarmq"]
CMD ["--help"]
