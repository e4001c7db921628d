# The controller's image: a virtualenv with exact versions, run as uid 65532, fit for a
# read-only root filesystem. Builds with docker or podman/buildah (no BuildKit syntax).
# Where no registry is reachable: --build-arg BASE_IMAGE=localhost/gke-ingress-timeout-base:py
# (made by tests/ground/containers.sh; `make image` does this). The base must have CPython
# 3.11 with its venv module on glibc 2.34 or later, amd64 or arm64: the wheels pinned below
# are those (Debian bookworm and later; python:3.11-slim is one).
#
# A tag such as python:3.11-slim moves. A production build should name the base by digest,
# one you have looked up and trust, e.g. `skopeo inspect docker://python:3.11-slim` (its
# Digest) or `docker buildx imagetools inspect python:3.11-slim`:
#   make image BASE_IMAGE=python:3.11-slim@sha256:<that digest>
#   docker build --build-arg BASE_IMAGE=python:3.11-slim@sha256:<that digest> .
# Both stages start FROM it, so the one digest pins both.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
# Every runtime package, pyproject's dependencies and theirs, at an exact version and with
# the sha256 of the wheel that is installed, one for amd64 and one for arm64 where the wheel
# is built per platform: pip refuses any other file (--require-hashes), so a package replaced
# on the index, or a mirror that serves something else, fails the build. No resolving
# (--no-deps): `pip check` below fails the build if one is missing or outside pyproject's
# ranges. setuptools only builds the project's wheel and is removed after. tests/e2e builds
# and runs the result.
# To move a pin: write the NAME==VERSION lines to pins.txt, then, for ARCH x86_64 and aarch64,
#   pip download --no-deps --only-binary :all: --python-version 3.11 --implementation cp \
#     --platform manylinux_2_34_ARCH --platform manylinux_2_28_ARCH \
#     --platform manylinux2014_ARCH -d wheels/ARCH -r pins.txt
#   pip hash wheels/*/*.whl
# (the same file in both folders is one hash). `pip-compile --generate-hashes` on
# pyproject.toml checks that the set is closed and gives the index's hashes to compare.
# Each line below is one line of the requirements file (the Dockerfile joins its lines).
RUN printf '%s\n' \
      'certifi==2026.10.19.post1 \
        --hash=sha256:1324c476b4811eff41a8bc2122cd0bbd4d9c7234c725446d99ab1612b3a7fdd2' \
      'cffi==2.1.1 \
        --hash=sha256:34e261f78cb6ceaaa36f42f2613f4380d94d9c759a9c73c769ee6e0247364632 \
        --hash=sha256:3311ed60d36f83378794e1009ac6258bafbf81f7888b4caa7b35a521e3f95813' \
      'charset-normalizer==3.5.3 \
        --hash=sha256:2a6f937e0b70133d1f826d0a253331b6fe1a4c874808cc12e16f2fb8177042f4 \
        --hash=sha256:90b1ff6cb9c7a204a3b79b1b0ed6ac8a1d8fed3b6dc69e50ae5de0f358ee81d4' \
      'cryptography==50.0.2 \
        --hash=sha256:9dab55f57c74c3cad24c323bacbbd04be4705ba6eb0d92e920b1fc4837ed5079 \
        --hash=sha256:87e9ce85beb6b328ba370cc6e6aea483c92617b4c95b1d33a49297eb662bfb04' \
      'google-api-core==2.44.0 \
        --hash=sha256:8cb9ad8af28de9bc75121686d69b697ce0937e21fad2ad80c9a7e89f22b26e1f' \
      'google-api-python-client==2.202.0 \
        --hash=sha256:aaa90064c9bb642ff1d065b22ca8958a2cb6e345909cefe70d0e5452fc50e08b' \
      'google-auth==2.63.0 \
        --hash=sha256:cbc065325f67511946d1a66672e4f47e71ed162ef1abd2bb8404ceec407c86ba' \
      'google-auth-httplib2==0.4.4 \
        --hash=sha256:bbe5d7b2401bb3a4017f4720e1e91bd273ab9a2bb60b84e65edbc0de127852da' \
      'googleapis-common-protos==1.76.0 \
        --hash=sha256:59e13344a9f3651aa201a03e2bee815a3bf43a4baf1f9ff8a9b62a840ce25fac' \
      'httplib2==0.32.1 \
        --hash=sha256:82e7a6ab08fcb27879864ddf63dbb529fb032ca336c331cb1597d6dd8b47c92e' \
      'idna==3.20 \
        --hash=sha256:ab7ae7122974553370f0bdb919e1a960b2cd1bc1ef0276416d896db81c14582c' \
      'opentelemetry-api==1.45.2 \
        --hash=sha256:2cbd737377e710ee740d261c94e93fa0f08e6d037c18f17513cc0a2d94479a34' \
      'proto-plus==1.29.0 \
        --hash=sha256:8acd070469a7aaf43f440b022ef9757c8cac1a9f866e933f59ae98669ddc6c8b' \
      'prometheus_client==0.26.0 \
        --hash=sha256:fa93d06737aa02bacd05794768508bb97d2fbee28cb3bca04eaae92f0ca953d6' \
      'protobuf==7.36.2 \
        --hash=sha256:89f23aa53c24553a2416fd4fd1ec06f74fa42b14b546d8883128813f775bbfd2 \
        --hash=sha256:e11e1f0180583a2af89db6a2ecd9e8dc40aa6d2988ca175bfd0e6d12ea72d74e' \
      'pyasn1==0.6.5 \
        --hash=sha256:4017b0fce125096b8573b39c989fdb1a4b19cf761e683398184550fea0e66587' \
      'pyasn1_modules==0.4.2 \
        --hash=sha256:29253a9207ce32b64c3ac6600edc75368f98473906e8fd1043bd6b5b1de2c14a' \
      'pycparser==3.12 \
        --hash=sha256:a076f3f489b39b43ed13563a1dafe42447445bec2e294154ec5c57fcdda4c85e' \
      'pyparsing==3.3.3 \
        --hash=sha256:ece8c00a69cf01b45d0b1dedabb469c90d8caf996d4fda40f147627a122849a4' \
      'PyYAML==6.0.4 \
        --hash=sha256:622aa875fa6533f25fedcffe23079357d65a690d462200afed5d8e9d0e01ebee \
        --hash=sha256:71bb5b87465d88d1dfc577115af6d435bff9b26f2512936f610c26aa55966028' \
      'requests==2.34.2 \
        --hash=sha256:2a0d60c172f83ac6ab31e4554906c0f3b3588d37b5cb939b1c061f4907e278e0' \
      'typing_extensions==4.16.0 \
        --hash=sha256:481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8' \
      'uritemplate==4.2.0 \
        --hash=sha256:962201ba1c4edcab02e60f9a0d3821e82dfc5d2d6662a21abd533879bdb8a686' \
      'urllib3==2.8.0 \
        --hash=sha256:0cf3cae568d36aa9576b28dfb35f11328f1cb974ca7647d9475ebb86c75ac6e3' \
      'setuptools==84.2.1 \
        --hash=sha256:ca140b45d5325a9478f880e351484f62fef15f336462e449ca0c03c873d589c2' \
      >/tmp/requirements.txt \
 && /opt/venv/bin/pip install --require-hashes --no-deps --only-binary :all: \
      -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
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
