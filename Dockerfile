# The FedTune aggregator image. The service holds no GPU work: it builds the
# initial state once per federation and averages deltas, so the CPU wheels of
# torch are enough and keep the image small.
#
# Pin the base image by digest for production builds, so a rebuild cannot pick up a
# different image under the same tag: look the digest up once where a registry is
# reachable (`docker buildx imagetools inspect python:3.11-slim`, the index digest) and
# build with --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest>. The default is
# the tag, so a plain `docker build` works; no digest is recorded here because none was
# verified where this file was written.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FEDTUNE_HOST=0.0.0.0 \
    FEDTUNE_PORT=8443 \
    FEDTUNE_DATA_DIR=/var/lib/fedtune

# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only check a numeric USER, and
# deploy/kubernetes/aggregator.yaml sets the same runAsUser/runAsGroup/fsGroup.
ARG FEDTUNE_UID=10001
RUN groupadd --system --gid ${FEDTUNE_UID} fedtune \
    && useradd --system --uid ${FEDTUNE_UID} --gid fedtune --home /var/lib/fedtune \
       --shell /usr/sbin/nologin fedtune \
    && mkdir -p /var/lib/fedtune && chown fedtune:fedtune /var/lib/fedtune \
    && chmod 0700 /var/lib/fedtune

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY aggregator_service ./aggregator_service
COPY client_sdk ./client_sdk
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.6,<=2.14.1" "torchvision<=0.29.1" \
    && pip install ".[postgres,s3]"

USER 10001:10001
VOLUME ["/var/lib/fedtune"]
EXPOSE 8443
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD python -c "import os,ssl,urllib.request as u; c=ssl._create_unverified_context(); s='https' if os.environ.get('FEDTUNE_SSL_CERTFILE') else 'http'; u.urlopen(f'{s}://127.0.0.1:{os.environ[\"FEDTUNE_PORT\"]}/healthz', context=c if s=='https' else None, timeout=2)"

# The service listens on 0.0.0.0 and refuses to start there on plain HTTP: give it its TLS
# pair (FEDTUNE_SSL_CERTFILE, FEDTUNE_SSL_KEYFILE; deploy/TLS.md), or, only when a
# TLS-terminating proxy or ingress is the sole way in (deploy/reverse-proxy.md), set
# FEDTUNE_INSECURE_HTTP=true. /metrics on this port needs the metrics or admin token; a
# cluster-internal scraper can use the separate listener instead (--metrics-port).
ENTRYPOINT ["fedtune-server"]
CMD ["serve"]
