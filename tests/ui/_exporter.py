"""The real ``sluice metrics serve`` exporter (its server, sampler and collectors) in a
thread of the test process, on the test's store, and HTTP scrapes of it."""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as PromSample

from sluice.report.sampler import Sampler

cli_metrics = importlib.import_module("sluice.cli.metrics")  # `sluice.cli.metrics` is the command

Samples = dict[str, list[PromSample]]
"""Every sample of one scrape, by sample name (``x_total``, ``x_bucket`` ...)."""


@dataclass
class Exporter:
    """A running exporter: where to scrape it, and its sampler."""

    url: str
    sampler: Sampler
    started_at: float
    """time.time() just before the exporter was made."""

    def text(self) -> str:
        """The body of GET /metrics (checked to be the Prometheus text format)."""
        with urllib.request.urlopen(self.url, timeout=30) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body: bytes = response.read()
        return body.decode()

    def scrape(self) -> Samples:
        """Every sample of GET /metrics, by sample name."""
        samples: Samples = {}
        for family in text_string_to_metric_families(self.text()):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(sample)
        return samples

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample ``name`` with exactly these labels, scraped now
        (None if there is none)."""
        return value(self.scrape(), name, **labels)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name`` with exactly these labels (None if none)."""
    found = [s.value for s in samples.get(name, []) if s.labels == labels]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


@contextlib.contextmanager
def exporter(store_url: str, interval: float = 0.25, flow_runs: int = 200) -> Iterator[Exporter]:
    """``sluice metrics serve --port 0`` on ``store_url``, as the command runs it (its
    sampler sampling in the background), until the block ends; then stopped."""
    started_at = time.time()
    server, sampler = cli_metrics.make_server(store_url, "127.0.0.1", 0, interval, flow_runs)
    sampler.start()
    thread = threading.Thread(target=server.serve_forever, name="test-exporter", daemon=True)
    thread.start()
    try:
        yield Exporter(f"http://127.0.0.1:{server.server_port}/metrics", sampler, started_at)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        sampler.stop()
        server.server_close()
        sampler.limits.close()
