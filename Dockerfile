# The production image: `consent-ledger serve` against Kafka and PostgreSQL, as the
# manifests under deploy/k8s run it. No embedded PostgreSQL (the "embedded" extra is
# left out: `serve --embedded` says so and stops), no compilers, not root.
#
#   buildah bud -t consent-ledger:0.1.0 .     (or docker build / podman build)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Builder: a wheel of the project and of every dependency it runs with, installed
# into a virtualenv that the final stage copies whole. Every dependency ships
# manylinux wheels for CPython 3.11, so nothing is compiled here either.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ledger/ ledger/
COPY services/ services/
COPY protos/gen/python/ protos/gen/python/
RUN pip wheel --wheel-dir /wheels ".[speed]" \
    && python -m venv /opt/consent-ledger \
    && /opt/consent-ledger/bin/pip install --no-index --find-links /wheels "consent-ledger[speed]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="consent-ledger" \
      org.opencontainers.image.description="Event-sourced SMS consent ledger: gRPC CanSend on Kafka and PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"
# The uid the manifests' securityContext names (runAsUser: 10001).
RUN groupadd --system --gid 10001 consent \
    && useradd --system --uid 10001 --gid consent --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin consent
COPY --from=builder /opt/consent-ledger /opt/consent-ledger
ENV PATH=/opt/consent-ledger/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONSENT_GRPC_LISTEN=0.0.0.0:50051 \
    CONSENT_HEALTH_LISTEN=0.0.0.0:8081 \
    CONSENT_METRICS_LISTEN=0.0.0.0:9464 \
    CONSENT_LOG_FORMAT=json
USER 10001:10001
WORKDIR /tmp
# gRPC (the API), the plaintext health port for probes, Prometheus metrics
EXPOSE 50051 8081 9464
ENTRYPOINT ["consent-ledger"]
CMD ["serve"]
