# syntax=docker/dockerfile:1
# The gateway and the operator: one image, two entry points.
#   gateway:  python -m tutor_gateway   (the default command; REST + WebSocket on :9000)
#   operator: python -m tutor_operator  (the chart sets this command)
# Build from the repository root: docker build -t ghcr.io/vts/tutor-serving:dev .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY operator/ operator/
COPY contract/ contract/
COPY engine-image/tutor_engine/ engine-image/tutor_engine/
# No inference libraries: the kube extra only (kopf, lightkube and their clients).
RUN pip install ".[kube]"

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin tutor
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 9000
CMD ["python", "-m", "tutor_gateway"]
