# syntax=docker/dockerfile:1
# One image for the Durable operator and workers (the Helm chart sets the command):
#   durable-operator --all-namespaces ...      durable worker --app MODULE --queue default=10 ...
# It also carries the README examples under /app/examples, so a trial cluster runs them as is.
# Your workflows: build FROM this image and COPY your modules into /app (see docs/kubernetes.md).
#
#   docker build -t durable:0.1.0 .
#
# Runs as uid/gid 10001 with a read-only root filesystem: only /tmp and $HOME need to be
# writable, and the chart mounts emptyDirs there.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the project and its operator extra into a self-contained venv -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/durable
WORKDIR /src
# Dependencies first, so editing the code does not re-download them.
COPY pyproject.toml README.md ./
RUN mkdir -p runtime/durable operator/durable_operator \
 && touch runtime/durable/__init__.py operator/durable_operator/__init__.py \
 && /opt/durable/bin/pip install ".[operator]" \
 && /opt/durable/bin/pip uninstall --yes durable
COPY runtime/ runtime/
COPY operator/ operator/
RUN /opt/durable/bin/pip install --no-deps . \
 && /opt/durable/bin/durable --help >/dev/null \
 && /opt/durable/bin/durable-operator --help >/dev/null

# ---- runtime: the venv, the examples, a non-root user; no compilers, no pip cache -------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/durable/bin:$PATH \
    HOME=/home/durable \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app
RUN groupadd --system --gid 10001 durable \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/durable --create-home \
        --shell /usr/sbin/nologin durable
COPY --from=build /opt/durable /opt/durable
WORKDIR /app
COPY examples/ /app/examples/
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080 9090
CMD ["durable", "--help"]
