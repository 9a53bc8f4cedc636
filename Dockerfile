# mtrd: traceroutes as a REST API, as a container image (a sidecar, or on its own).
#
#   podman build --format docker -t mtrd .      (or: docker build -t mtrd .)
#   podman run --rm --cap-drop ALL --cap-add NET_RAW --read-only -p 127.0.0.1:8080:8080 mtrd
#
# Two stages: the builder makes a virtualenv in /opt/mtrd with Debian's python3 and installs the
# project into it; the final image has only Debian's python3, mtr-tiny and tini, and that
# virtualenv. It runs as an unprivileged user (uid 10001): the one privilege it needs is
# CAP_NET_RAW, which /usr/bin/mtr-packet carries as a file capability (cap_net_raw+ep), so the
# container needs NET_RAW in its bounding set (--cap-add NET_RAW / cap_add: [NET_RAW]) and must
# not set no-new-privileges (which ignores file capabilities).
#
# pip settings: the build reads PIP_* build arguments (PIP_INDEX_URL, PIP_TRUSTED_HOST, ...) and
# a CA bundle given as the build secret pip-cert, so a machine that reaches PyPI through a mirror
# or a TLS-inspecting proxy passes its own, e.g.
#   podman build --format docker --build-arg PIP_INDEX_URL="$PIP_INDEX_URL" \
#     --secret id=pip-cert,src=/etc/ssl/certs/ca-certificates.crt -t mtrd .
# The secret is mounted read-only for the one RUN that runs pip, and nothing of it stays in any
# layer. --format docker keeps the HEALTHCHECK (an OCI image config has no field for it).
# .ci/container-test passes the host's pip settings this way.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# --- builder: the virtualenv ---------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS builder

ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ARG PIP_TRUSTED_HOST=""
ARG PIP_CLIENT_CERT=""
ARG PIP_DEFAULT_TIMEOUT=""
ARG PIP_RETRIES=""
ARG PIP_PROXY=""
ARG PIP_NO_INDEX=""
ARG PIP_ONLY_BINARY=""
ARG PIP_PREFER_BINARY=""

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

SHELL ["/bin/bash", "-euo", "pipefail", "-c"]

# hadolint ignore=DL3008
RUN apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/mtrd

COPY pyproject.toml README.md openapi.yaml /src/
COPY service/ /src/service/

# A build argument left empty is dropped, so that pip sees only the settings that were given.
# pip and setuptools leave the virtualenv once the project is in, and so do the packages' own test
# suites (a quarter of the virtualenv, Twisted's mostly): nothing at run time needs them.
RUN --mount=type=secret,id=pip-cert \
    for name in $(env | sed -n 's/^\(PIP_[A-Z_]*\)=$/\1/p'); do unset "$name"; done; \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi; \
    /opt/mtrd/bin/pip install --no-cache-dir /src; \
    /opt/mtrd/bin/pip uninstall --yes pip setuptools; \
    find /opt/mtrd/lib/python3*/site-packages -mindepth 2 -type d \( -name test -o -name tests \) \
        -prune -exec rm -rf {} +; \
    /opt/mtrd/bin/python -c 'import mtrd.app, mtrd.web.routes, twisted.internet.reactor'

# --- the image -----------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE}

SHELL ["/bin/bash", "-euo", "pipefail", "-c"]

# Debian's mtr-tiny sets cap_net_raw+ep on /usr/bin/mtr-packet when setcap is installed, and
# makes it setuid root when it is not. Neither setcap nor a setuid binary should stay: libcap2-bin
# comes only for this layer, the file capability is set (and checked) explicitly, and it goes.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 mtr-tiny tini libcap2-bin \
    && chmod u-s /usr/bin/mtr-packet \
    && setcap cap_net_raw+ep /usr/bin/mtr-packet \
    && getcap /usr/bin/mtr-packet | grep -q 'cap_net_raw[=+]ep' \
    && DEBIAN_FRONTEND=noninteractive apt-get purge -y --auto-remove libcap2-bin \
    && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --no-log-init mtrd

COPY --from=builder /opt/mtrd /opt/mtrd

ENV PATH=/opt/mtrd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MTRD_LISTEN=0.0.0.0:8080

USER 10001:10001
EXPOSE 8080

# Liveness without curl: the virtualenv's python asks /healthz on loopback, at MTRD_LISTEN's port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/mtrd/bin/python3", "-c", "import os, urllib.request; port = os.environ.get('MTRD_LISTEN', ':8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).close()"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "mtrd", "serve"]

LABEL org.opencontainers.image.title="mtrd" \
      org.opencontainers.image.description="Traceroutes as a REST API, on a supervised pool of mtr-packet processes" \
      org.opencontainers.image.licenses="GPL-2.0-only"
