"""Logging: `text` for people, `json` (one object per line) for containers."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from uploader.logfilters import ContextFilter, RedactingFilter, Redactor

# Fields callers attach with `extra=` that belong in the structured line.
CONTEXT_FIELDS = ("file", "key", "attempt", "error_code", "size", "repeats")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info or record.exc_text:
            # exc_text when set: the redacted text (see uploader.logfilters)
            line["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup_logging(*, level: str, fmt: str, library_level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter(Redactor.from_environ(os.environ)))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_levels(level=level, library_level=library_level)


def set_levels(*, level: str, library_level: str = "INFO") -> None:
    """Our level, and the libraries' (also on a live reload)."""
    logging.getLogger().setLevel(level)
    # Library chatter at DEBUG would drown ours, unless asked for (logging.library_level).
    floor = max(logging.getLevelName(library_level), logging.getLevelName(level))
    for noisy in ("botocore", "aiobotocore", "aioboto3", "urllib3", "asyncio", "aiohttp"):
        logging.getLogger(noisy).setLevel(floor)
