"""Prometheus metrics on an app-local registry (several apps in one process never collide).

The hot path touches only pre-resolved label children kept in a dict, so recording a request
costs a dict lookup, a counter increment and a histogram observation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Requests answered before routing (401, 413) or matching no route share one label, so random
# paths cannot blow up the label set.
UNROUTED = "unrouted"


@dataclass(frozen=True)
class Reading:
    """A metric a pattern keeps as plain numbers and the registry reads at scrape time, declared so
    that a pattern's service face can list its metrics (reference_impl/common/service.py)."""

    kind: Literal["gauge", "counter", "counter_family"]
    name: str
    doc: str
    read: Callable[[], float] | Callable[[], Mapping[str, float]]
    label: str = ""
    """The label of a `counter_family`'s values."""


def gauge(name: str, doc: str, read: Callable[[], float]) -> Reading:
    return Reading("gauge", name, doc, read)


def counter(name: str, doc: str, read: Callable[[], float]) -> Reading:
    return Reading("counter", name, doc, read)


def counter_family(name: str, doc: str, label: str, read: Callable[[], Mapping[str, float]]) -> Reading:
    return Reading("counter_family", name, doc, read, label)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter("saaslab_http_requests_total", "HTTP requests by route template and status",
                                 ("method", "route", "status"), registry=self.registry)
        self._latency = Histogram("saaslab_http_request_duration_seconds",
                                  "HTTP request latency by route template and status",
                                  ("method", "route", "status"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.faults_fired = Counter("saaslab_faults_fired_total", "Lab-mode faults fired, by point and mode",
                                    ("point", "mode"), registry=self.registry)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        pair = self._children.get(key)
        if pair is None:
            labels = (method, route, str(status))
            pair = self._children[key] = (self._requests.labels(*labels), self._latency.labels(*labels))
        pair[0].inc()
        pair[1].observe(seconds)

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time, so the hot path never updates it."""
        Gauge(name, doc, registry=self.registry).set_function(read)

    def counter(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere as a plain number, read at scrape time."""
        self.registry.register(_ReadCounter(name, doc, read))

    def counter_family(self, name: str, doc: str, label: str, read: Callable[[], Mapping[str, float]]) -> None:
        """Counters kept elsewhere as a dict of plain numbers (one per `label` value), read at scrape time."""
        self.registry.register(_ReadCounterFamily(name, doc, label, read))

    def register(self, *readings: Reading) -> None:
        for r in readings:
            if r.kind == "gauge":
                self.gauge(r.name, r.doc, r.read)  # type: ignore[arg-type]
            elif r.kind == "counter":
                self.counter(r.name, r.doc, r.read)  # type: ignore[arg-type]
            else:
                self.counter_family(r.name, r.doc, r.label, r.read)  # type: ignore[arg-type]

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ReadCounter(Collector):
    def __init__(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self._name, self._doc, self._read = name, doc, read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._doc, value=self._read())


class _ReadCounterFamily(Collector):
    def __init__(self, name: str, doc: str, label: str, read: Callable[[], Mapping[str, float]]) -> None:
        self._name, self._doc, self._label, self._read = name, doc, label, read

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=(self._label,))
        for value, count in self._read().items():
            family.add_metric((value,), count)
        yield family
