# uploader: watch a directory, upload every file to S3.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

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
VOLUME ["/data/outbox", "/var/lib/uploader"]
ENTRYPOINT ["uploader", "run", "--config", "/config/uploader.yaml"]
