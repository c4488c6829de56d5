"""Helpers for the operability tests: a daemon's HTTP endpoint, scraped as Prometheus would."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from daemon_harness import Daemon, wait_until

_SERVING = re.compile(r"serving /metrics, /healthz and /readyz on (http://[0-9a-f.:\[\]]+)")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def endpoint(daemon: Daemon) -> str:
    """The base URL the daemon logged it serves on (metrics.listen may say port 0)."""
    match = wait_until(lambda: _SERVING.search(daemon.log()), what="the metrics endpoint")
    return match.group(1)


def get(url: str, *, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Scrape:
    """One /metrics page: family names and samples."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.names = {f.name for f in self.families} | {
            s.name for f in self.families for s in f.samples}
        # The parser drops the counter suffix from family names; the exposition has it.
        self.names |= {f"{f.name}_total" for f in self.families if f.type == "counter"}

    def value(self, name: str, default: float | None = None, **labels: str) -> float | None:
        for family in self.families:
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return sample.value
        return default

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` matching `labels` (0 if none)."""
        return sum(sample.value for family in self.families for sample in family.samples
                   if sample.name == name
                   and all(sample.labels.get(k) == v for k, v in labels.items()))


def scrape(base: str) -> Scrape:
    status, text = get(f"{base}/metrics")
    assert status == 200, text
    return Scrape(text)


def wait_for_metric(base: str, predicate: Any, *, what: str, timeout: float = 30.0) -> Scrape:
    """Scrape until `predicate(scrape)` holds; return that scrape."""
    def attempt() -> Scrape | None:
        page = scrape(base)
        return page if predicate(page) else None
    return wait_until(attempt, timeout=timeout, interval=0.1, what=what)
