"""Request metrics with a bounded set of labels, in BentoML's names.

BentoML's own HTTP metrics label each series with the request path, unknown paths included: 20,000
requests to random paths grew a worker from 470 MB to 1 GB and ``/metrics`` to 84 MB. The service
turns them off (``metrics={"enabled": False}``) and records the same three series here
(``bentoml_service_request_total``, ``..._request_duration_seconds``, ``..._request_in_progress``)
with ``endpoint`` one of the service's routes, or ``other`` for any path it does not serve.
:func:`exposition` is what ``/metrics`` answers (:mod:`serving.guard` serves it, behind the API key).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from timeit import default_timer

from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.context import server_context

__all__ = ["OTHER", "RequestMetrics", "exposition"]

OTHER = "other"  # the endpoint label of every path the service does not serve
METRICS_PATH = "/metrics"


@functools.cache
def _instruments() -> tuple:
    """The three series, created once per process (several apps in one process share them)."""
    client = BentoMLContainer.metrics_client.get()
    namespace = BentoMLContainer.api_server_config.metrics.namespace.get() or "bentoml_service"
    labels = ["endpoint", "service_name", "service_version", "http_response_code"]
    total = client.Counter(namespace=namespace, name="request_total", documentation="Total number of HTTP requests",
                           labelnames=labels)
    duration = client.Histogram(namespace=namespace, name="request_duration_seconds",
                                documentation="API HTTP request duration in seconds", labelnames=labels,
                                buckets=BentoMLContainer.duration_buckets.get())
    in_progress = client.Gauge(namespace=namespace, name="request_in_progress",
                               documentation="Total number of HTTP requests in progress now",
                               labelnames=labels[:3], multiprocess_mode="livesum")
    return total, duration, in_progress


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of every process of the server (multiprocess mode under ``bentoml
    serve``; this process's registry in a test), and its content type."""
    client = BentoMLContainer.metrics_client.get()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return client.generate_latest(), client.CONTENT_TYPE_LATEST
    import prometheus_client

    return prometheus_client.generate_latest(), prometheus_client.CONTENT_TYPE_LATEST


class RequestMetrics:
    """ASGI middleware: counts, times and tracks every HTTP request under ``endpoint(path)``, which
    must come from a bounded set (the service's routes and :data:`OTHER`)."""

    def __init__(self, app, endpoint: Callable[[str], str]) -> None:
        self.app, self.endpoint = app, endpoint

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            return await self.app(scope, receive, send)
        total, duration, in_progress = _instruments()
        names = {"endpoint": self.endpoint(scope["path"]), "service_name": server_context.bento_name,
                 "service_version": server_context.bento_version}
        start, status = default_timer(), [500]

        async def recording_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        with in_progress.labels(**names).track_inprogress():
            try:
                await self.app(scope, receive, recording_send)
            finally:
                labels = names | {"http_response_code": str(status[0])}
                total.labels(**labels).inc()
                duration.labels(**labels).observe(max(default_timer() - start, 0.0))
