# udsproxy in place of Envoy's image: the same entrypoint contract (Envoy's arguments, default
# `-c /etc/envoy/envoy.yaml`, `envoy` on PATH), Debian's python3, a fixed non-root UID.
#
#   bash scripts/image                      # here: podman, base from debootstrap, no registry
#   docker build -t udsproxy .              # elsewhere, from debian:bookworm-slim
#   docker run -p 10000:10000 -v /dev/shm:/dev/shm udsproxy
ARG BASE=debian:bookworm-slim

# Build stage: the wheel, with the hot modules (udsproxy/native.py) compiled by mypyc, and its
# dependencies' wheels, installed into a venv that the runtime stage copies. The compiler (gcc,
# python3-dev) is here only.
FROM ${BASE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
        gcc libc6-dev python3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY conf ./conf
COPY udsproxy ./udsproxy
# The secret "ca" is an optional CA bundle for pip (behind a TLS-inspecting proxy); without it pip
# uses its own. mypyc type-checks what it compiles, so it runs in a build venv that has
# udsproxy's dependencies (their types) and mypy: the plain wheels first, then the compiled
# udsproxy wheel replaces the plain one. The venv has no pip: Debian's pip installs into it
# from the wheels, offline.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels . \
    && python3 -m venv /opt/build \
    && /opt/build/bin/python -m pip install --no-cache-dir --disable-pip-version-check \
        --find-links /wheels udsproxy "mypy>=1.10" types-PyYAML "setuptools>=68" wheel \
    && rm /wheels/udsproxy-*.whl \
    && UDSPROXY_MYPYC=1 /opt/build/bin/python -m pip wheel --no-cache-dir \
        --disable-pip-version-check --no-build-isolation --no-deps --wheel-dir /wheels . \
    && python3 -m venv --without-pip /opt/udsproxy \
    && python3 -m pip --python /opt/udsproxy/bin/python install --no-cache-dir \
        --disable-pip-version-check --no-index --find-links /wheels udsproxy \
    && /opt/udsproxy/bin/python -m udsproxy.config.api_table \
    && /opt/udsproxy/bin/python -m compileall -q -f --invalidation-mode checked-hash /opt/udsproxy \
    && /opt/udsproxy/bin/udsproxy --version >/tmp/version && cat /tmp/version \
    && grep -q 'compiled with mypyc: [0-9]* modules; C: udsproxy.codec._scan, udsproxy.http._request_id)$' /tmp/version
# (above: the cached table of Envoy's API and the bytecode ship in the venv, so a container
# whose user cannot write either starts in 0.2 s, not 1 s)

# Runtime stage: python3 and the venv, nothing to build with and no pip.
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && groupadd --system --gid 10101 udsproxy \
    && useradd --system --uid 10101 --gid 10101 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin udsproxy
COPY --from=build /opt/udsproxy /opt/udsproxy
# `envoy` too: Envoy container specs often say command: [envoy] or /usr/local/bin/envoy.
RUN ln -s /opt/udsproxy/bin/udsproxy /usr/local/bin/udsproxy \
    && ln -s /opt/udsproxy/bin/udsproxy /usr/local/bin/envoy
COPY deploy/docker/envoy.yaml /etc/envoy/envoy.yaml
USER 10101:10101
EXPOSE 10000 9902
# SIGTERM drains (--drain-time-s), SIGHUP reloads, SIGUSR1 reopens the access logs. udsproxy is
# PID 1: it then always runs its supervisor, which handles those signals and reaps every child.
STOPSIGNAL SIGTERM
ENTRYPOINT ["udsproxy"]
CMD ["-c", "/etc/envoy/envoy.yaml"]
