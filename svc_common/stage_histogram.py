"""One histogram family whose bucket layout depends on a label value.

Stage latencies span five orders of magnitude: parsing takes a millisecond, decoding tokens
twenty seconds. One shared layout would either waste buckets or blur the stages that matter,
and one metric per stage would make the "where does the time go" query a union of nine names.
So ``rpi_inference_stage_seconds{stage}`` is one family whose series each carry buckets suited
to their stage. The text format allows this (each series has its own ``le`` set), and
``histogram_quantile(0.95, sum by (le, stage) (rate(..._bucket[5m])))`` is exact per stage;
only summing buckets across stages would be wrong, and that sum means nothing anyway.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Histogram, Metric
from prometheus_client.registry import Collector


class PerLabelBucketHistogram(Collector):
    """A histogram family with one label, each of whose values has its own buckets."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        buckets: Mapping[str, Sequence[float]],
        registry: CollectorRegistry | None,
    ) -> None:
        self.name = name
        self._documentation = documentation
        self._label = label
        # Unregistered children do the thread-safe counting; this collector only renames.
        self._children = {
            value: Histogram(name, documentation, buckets=tuple(b), registry=None)
            for value, b in buckets.items()
        }
        if registry is not None:
            registry.register(self)

    @property
    def label_values(self) -> tuple[str, ...]:
        return tuple(self._children)

    def observe(self, value: str, amount: float) -> None:
        """Raises KeyError for a label value without buckets (a programming error)."""
        self._children[value].observe(amount)

    @contextmanager
    def time(self, value: str) -> Iterator[None]:
        child = self._children[value]
        start = time.perf_counter()
        try:
            yield
        finally:
            child.observe(time.perf_counter() - start)

    def describe(self) -> Iterable[Metric]:
        return [Metric(self.name, self._documentation, "histogram")]

    def collect(self) -> Iterable[Metric]:
        family = Metric(self.name, self._documentation, "histogram")
        for value, child in self._children.items():
            for metric in child.collect():
                for sample in metric.samples:
                    if sample.name.endswith("_created"):
                        continue
                    family.add_sample(
                        sample.name, {self._label: value, **sample.labels}, sample.value
                    )
        return [family]
