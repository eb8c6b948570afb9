# The cloud server, `datamoat serve`, as a small image that runs as a fixed non-root user.
#
#   docker build -t datamoat-serve .
#   docker run --rm -p 8000:8000 -e DATAMOAT_REGISTRY_URL='postgresql+psycopg://…' datamoat-serve
#
# Two stages on one base: the builder makes a venv of the server's dependencies only
# (deploy/serve-requirements.txt, at the versions requirements.lock pins); the runtime copies that
# venv alone, with no pip, no compiler, no package cache and no source tree. The base is pinned by
# tag (the Debian release included); pin its digest too (`--build-arg BASE=python:3.11-slim-trixie@sha256:…`)
# where builds must repeat byte for byte. Behind a registry mirror or with no Docker Hub, name
# another Python 3.11 base with --build-arg BASE=… (deploy/stand-in-base.sh makes one from Debian).

ARG BASE=python:3.11-slim-trixie

FROM ${BASE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY deploy/serve-requirements.txt deploy/serve-requirements.txt
COPY scripts/check_lock.py scripts/check_lock.py
COPY datamoat datamoat

# requirements.lock pins everything `pip install datamoat` brings (torch, scikit-learn, pandas...)
# and the dev tools, none of which the server imports (photo uploads are fitted to a photo model's
# input with numpy and Pillow, datamoat/data/photo_fit.py, the code training evaluates with). So
# datamoat goes in without its dependencies, then the server's set with every version constrained
# to its pin (-c), from wheels only (no compiler); check_lock.py --subset then fails the build if
# anything installed is not pinned in the lock at exactly that version. datamoat is built with the
# lock's setuptools (no isolated build env fetching an unpinned one); pip and setuptools go last.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --only-binary=:all: -c requirements.lock setuptools \
 && /opt/venv/bin/python -m pip install --only-binary=:all: --no-build-isolation --no-deps -c requirements.lock . \
 && /opt/venv/bin/python -m pip install --only-binary=:all: -c requirements.lock -r deploy/serve-requirements.txt \
 && /opt/venv/bin/python -m pip uninstall -y pip setuptools \
 && /opt/venv/bin/python scripts/check_lock.py --subset requirements.lock


FROM ${BASE} AS runtime

# 10001: above any system account, and numeric in USER so Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 datamoat \
 && useradd --system --uid 10001 --gid datamoat --home-dir /home/datamoat --create-home \
        --shell /usr/sbin/nologin datamoat

COPY --from=builder /opt/venv /opt/venv

# HOME and /tmp are the only places the server writes (the multi-worker metrics folder, and
# ONNX Runtime's telemetry files unless ORT_DISABLE_TELEMETRY is set, as here): with a read-only
# root filesystem, mount a writable volume on /tmp and keep HOME there (deploy/kubernetes/).
# The registry comes from DATAMOAT_REGISTRY_URL (no workspace in the image): PostgreSQL for more
# than one replica; a SQLite URL needs a volume user 10001 can write, e.g.
# -v dm:/data -e DATAMOAT_REGISTRY_URL=sqlite:////data/registry.db.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/datamoat \
    ORT_DISABLE_TELEMETRY=1

USER 10001:10001
WORKDIR /home/datamoat
EXPOSE 8000

# /healthz: the process answers (a server without a servable model is alive, not ready: /readyz
# is for the load balancer). Python's urllib, since the slim image has no curl; plain HTTP on the
# port below, so change it with --port or TLS.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["datamoat"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
