"""``sluice metrics serve``: a headless Prometheus exporter (needs ``sluice[metrics]``)."""

from __future__ import annotations

from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.simple_server import make_server as wsgi_server

import click

from sluice.cli._common import EXIT_ERROR, CLIError, SluiceGroup, redacted, resolved_url, url_option
from sluice.cli._serve import (
    browser_url,
    check_interval,
    listen_options,
    require_modules,
    warn_if_exposed,
)
from sluice.report.units import format_duration

__all__ = ["metrics"]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape."""


def make_server(
    store_url: str, host: str, port: int, interval: float, flow_runs: int = 200
) -> tuple[WSGIServer, Any]:
    """The exporter's WSGI server (bound, not serving yet) and its sampler; the flow
    metrics read the newest ``flow_runs`` flow runs of the run history at each scrape."""
    require_modules("sluice metrics serve", "metrics", ("prometheus_client",))
    from prometheus_client import make_wsgi_app

    from sluice.limits.sync import Limits
    from sluice.metrics import FlowsCollector, LimitsCollector, build_registry
    from sluice.report.sampler import Sampler

    limits = Limits(store_url)
    sampler = Sampler(limits, interval)
    collectors = [LimitsCollector(sampler), FlowsCollector(store_url, flow_runs)]
    app = make_wsgi_app(build_registry(collectors))
    try:
        server = wsgi_server(host, port, app, handler_class=_Quiet)
    except OSError as exc:
        limits.close()
        raise CLIError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
            "or --host",
            EXIT_ERROR,
        ) from exc
    return server, sampler


@click.group(cls=SluiceGroup)
@url_option
def metrics() -> None:
    """Prometheus metrics of the store's limits and flow runs."""


@metrics.command()
@listen_options(9787, "How often every limit is inspected")
@click.option(
    "--flow-runs",
    type=click.IntRange(1, 10_000),
    default=200,
    show_default=True,
    help="How many of the newest flow runs of the run history the flow metrics describe.",
)
@url_option
def serve(host: str, port: int, interval: float, flow_runs: int) -> None:
    """Serve GET /metrics in the Prometheus text format until Ctrl-C.

    Every metric, a Grafana dashboard and Prometheus alert rules: docs/metrics.md in the
    Sluice repository.
    """
    check_interval(interval)
    url = resolved_url().url
    server, sampler = make_server(url, host, port, interval, flow_runs)
    warn_if_exposed(host, port, "the exporter")
    address = browser_url(host, server.server_port)
    click.echo(f"sluice metrics: {redacted(url)} on {address}metrics")
    click.echo(
        f"every limit is inspected every {format_duration(interval)}, which reclaims expired "
        "leases; Ctrl-C to stop"
    )
    sampler.start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return
    finally:
        sampler.stop()
        server.server_close()
