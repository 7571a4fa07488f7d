"""Metrics of the reference-image HTTP cache (http_cache.py), read from its counts when scraped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inference_svc.imaging.http_cache import ResponseCache

FETCH_CACHE_LOOKUPS_TOTAL: Final = "rpi_inference_fetch_cache_lookups_total"
FETCH_CACHE_EVICTIONS_TOTAL: Final = "rpi_inference_fetch_cache_evictions_total"
FETCH_CACHE_BYTES: Final = "rpi_inference_fetch_cache_bytes"

METRIC_TYPES: Final[dict[str, str]] = {
    FETCH_CACHE_LOOKUPS_TOTAL: "counter",
    FETCH_CACHE_EVICTIONS_TOTAL: "counter",
    FETCH_CACHE_BYTES: "gauge",
}


class FetchCacheCollector(Collector):
    def __init__(self, cache: ResponseCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        counts = self._cache.counts
        lookups = CounterMetricFamily(
            FETCH_CACHE_LOOKUPS_TOTAL,
            "Downloads of reference images, by what the HTTP cache could do: hit (fresh, no "
            "request), revalidated (stale, the server answered 304), miss (downloaded).",
            labels=["result"],
        )
        lookups.add_metric(["hit"], counts.hits)
        lookups.add_metric(["revalidated"], counts.revalidated)
        lookups.add_metric(["miss"], counts.misses)
        yield lookups
        yield CounterMetricFamily(
            FETCH_CACHE_EVICTIONS_TOTAL,
            "Reference-image bodies evicted from the HTTP cache to make room (least recently "
            "used).",
            value=counts.evictions,
        )
        yield GaugeMetricFamily(
            FETCH_CACHE_BYTES,
            "Bytes of reference-image bodies the HTTP cache holds.",
            value=counts.bytes,
        )
