# edgefit: the serving image for ARM64/AMD64 edge gateways. Runtime dependencies only (no torch,
# no compilers); the model store is mounted at /models at run time, or baked in with STORE_SRC.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t edgefit:0.1.0 .
#   docker run --read-only -p 8000:8000 -v "$PWD/model_store/artifacts:/models:ro" edgefit:0.1.0
#
# BASE_IMAGE is any Debian bookworm image with Python 3.11 and its venv module: the official
# python image by default, a debootstrap-made one in CI (no registry there). Everything below
# uses `python3 -m venv`, which works on both layouts (/usr/local vs /usr).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# binutils (strip, readelf) for slim-venv.sh. Unpinned on purpose: this stage is thrown away,
# and the base's own bookworm point release decides which binutils is there.
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils >/dev/null
RUN python3 -m venv /opt/venv
WORKDIR /src
# Only what the wheel needs: the serving code and model_store's schema/runtime (its build/
# subpackage is shipped but never imported at serve time; torch is not installed).
COPY pyproject.toml constraints.txt ./
COPY service ./service
COPY model_store ./model_store
COPY deploy/container/slim-venv.sh ./
# `.` with no extras: the serving dependencies only; constraints pin them as CI tested them.
# Then out with everything serving never loads (installers, tools, stubs, debug symbols: see
# slim-venv.sh), which takes the image from 359 MB to under 250 MB.
RUN /opt/venv/bin/pip install --no-cache-dir -c constraints.txt . \
    && sh slim-venv.sh /opt/venv

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
# A store (ONNX files + manifest.json) to bake into the image, as a directory of the build
# context: `cp -r model_store/artifacts deploy/container/store` and
# `--build-arg STORE_SRC=deploy/container/store` (.dockerignore lets only that path in). The
# default is an empty placeholder: the store is then expected as a volume at /models.
ARG STORE_SRC=deploy/container/empty-store
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="edgefit" \
      org.opencontainers.image.description="Budget-aware ImageNet classification service for edge gateways" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it and hostPath stores can be
# chowned to it. No home directory: nothing is written outside the cache volume.
RUN groupadd --gid 10001 edgefit \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin edgefit \
    && mkdir -p /models /var/cache/edgefit \
    && chown 10001:10001 /var/cache/edgefit

COPY --from=build /opt/venv /opt/venv
COPY --chown=10001:10001 ${STORE_SRC}/ /models/

# Read-only root: the only write is the on-device latency table, kept in a volume so a restart
# can reuse it (Docker/podman give an anonymous writable volume even with --read-only).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGEFIT_STORE_DIR=/models \
    EDGEFIT_CACHE_DIR=/var/cache/edgefit
VOLUME ["/var/cache/edgefit"]

USER 10001:10001
EXPOSE 8000
# Liveness only: /readyz stays 503 while profiling, which may take minutes on a small device.
# No curl in a slim image, so the standard library does the request.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# Exec form: the server is PID 1 and receives SIGTERM itself, so it can drain.
CMD ["edgefit", "serve", "--host", "0.0.0.0", "--port", "8000"]
