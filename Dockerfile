# The controller's image: a virtualenv with exact versions, run as uid 65532, fit for a
# read-only root filesystem. Builds with docker or podman/buildah (no BuildKit syntax).
# Where no registry is reachable: --build-arg BASE_IMAGE=localhost/gke-ingress-timeout-base:py
# (made by tests/ground/containers.sh; `make image` does this). The base must have python3
# 3.10+ with its venv module.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
# Every runtime package, pyproject's dependencies and theirs, at an exact version and
# installed without resolving: `pip check` below fails the build if one is missing or
# outside pyproject's ranges. To move one, change it here; tests/e2e runs the result.
# setuptools only builds the project's wheel and is removed after.
RUN /opt/venv/bin/pip install --no-deps \
      certifi==2026.10.19.post1 \
      cffi==2.1.1 \
      charset-normalizer==3.5.3 \
      cryptography==50.0.2 \
      google-api-core==2.44.0 \
      google-api-python-client==2.202.0 \
      google-auth==2.63.0 \
      google-auth-httplib2==0.4.4 \
      googleapis-common-protos==1.76.0 \
      httplib2==0.32.1 \
      idna==3.20 \
      opentelemetry-api==1.45.2 \
      proto-plus==1.29.0 \
      prometheus_client==0.26.0 \
      protobuf==7.36.2 \
      pyasn1==0.6.5 \
      pyasn1_modules==0.4.2 \
      pycparser==3.12 \
      pyparsing==3.3.3 \
      PyYAML==6.0.4 \
      requests==2.34.2 \
      typing_extensions==4.16.0 \
      uritemplate==4.2.0 \
      urllib3==2.8.0 \
      setuptools==84.2.1
# README.md: pyproject names it as the readme.
COPY pyproject.toml README.md /src/
COPY controller/ /src/controller/
# google-api-python-client ships the discovery documents of 600 APIs (110 MB); the
# controller builds compute v1 from its static document and reads no other.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation /src \
 && /opt/venv/bin/pip check \
 && find /opt/venv/lib/python3*/site-packages/googleapiclient/discovery_cache/documents \
      -type f ! -name compute.v1.json -delete \
 && /opt/venv/bin/pip uninstall --yes --quiet setuptools pip \
 && /opt/venv/bin/python3 -m compileall -q -f --invalidation-mode unchecked-hash /opt/venv/lib

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="gke-ingress-timeout" \
      org.opencontainers.image.description="Sets GKE Ingress backend-service timeouts from one annotation" \
      org.opencontainers.image.licenses="Apache-2.0"
# Bytecode was compiled at build time: nothing is written at start.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'nonroot:x:65532:' >>/etc/group
COPY --from=build /opt/venv /opt/venv
USER 65532:65532
ENTRYPOINT ["python3", "-m", "controller"]
