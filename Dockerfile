# uploader: watch a directory, upload every file to S3.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini as PID 1: forwards SIGTERM/SIGHUP to the uploader and reaps zombies.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY uploader ./uploader
RUN pip install --no-cache-dir . \
    && groupadd --system --gid 10001 uploader \
    && useradd --system --uid 10001 --gid uploader --no-create-home --shell /usr/sbin/nologin uploader \
    && mkdir -p /data/outbox /var/lib/uploader /config \
    && chown uploader:uploader /data/outbox /var/lib/uploader

COPY config/uploader.yaml /config/uploader.yaml

USER 10001:10001
# /data/outbox: the watched directory; /var/lib/uploader: the journal (keep it).
VOLUME ["/data/outbox", "/var/lib/uploader"]
# /metrics, /healthz, /readyz (metrics.listen in the example config: 0.0.0.0:9100).
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=15s --start-period=20s --retries=3 \
    CMD ["uploader", "health", "--config", "/config/uploader.yaml"]
ENTRYPOINT ["tini", "--", "uploader", "run", "--config", "/config/uploader.yaml"]
