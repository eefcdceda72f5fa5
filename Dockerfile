# syntax=docker/dockerfile:1
# Tallyray's server image: `docker build -t tallyray .` — see docs/deploy.md.
#
# Ray keeps its object store in /dev/shm. Docker gives a container 64 MB there by default,
# which Ray warns about and works around by falling back to /tmp (slower). Run the image
# with a larger /dev/shm: `docker run --shm-size=2g …`, or `shm_size:` in compose (as
# docker-compose.yml does); on Kubernetes, mount an emptyDir with `medium: Memory` on
# /dev/shm (as deploy/kuberay/rayservice.yaml does).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the Tallyray wheel, and a wheel of every dependency --------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tallyray ./tallyray
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime: the wheels installed, no sources, no compiler, a non-root user -------------
FROM ${PYTHON_IMAGE} AS runtime
# wget: KubeRay's default probes of a Ray pod call it (`wget … /api/local_raylet_healthz`).
RUN apt-get update \
    && apt-get install --yes --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels tallyray
RUN groupadd --gid 10001 tallyray \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /var/lib/tallyray tallyray
USER 10001:10001
WORKDIR /var/lib/tallyray
# Listen on every interface of the container (the server's default is loopback only); the
# database URL and the admin key come from the environment or secret files at run time,
# never from the image (TALLYRAY_DATABASE_URL_FILE, TALLYRAY_ADMIN_KEY_FILE).
ENV TALLYRAY_HOST=0.0.0.0 \
    TALLYRAY_PORT=8000 \
    RAY_USAGE_STATS_ENABLED=0 \
    PYTHONUNBUFFERED=1
EXPOSE 8000
# Liveness: the API answers /healthz (python: the slim image has no curl).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TALLYRAY_PORT', '8000') + '/healthz', timeout=4)"]
# SIGTERM (docker stop) stops the server cleanly, as Ctrl-C does; give it the time to.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tallyray"]
CMD ["serve"]
