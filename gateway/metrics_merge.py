"""One Prometheus exposition from the expositions of several worker processes (`serve --workers N`).

Counters and histograms add up across workers, as do the in-flight gauges (each worker counts its
own requests). Two kinds of sample do not add: `*_created` timestamps (the earliest is kept) and
`gateway_replica_up` (each worker has its own view of a replica; 0 when any worker has it ejected).
"""
from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

_LOWEST_WINS = frozenset({"gateway_replica_up"})


def merge(expositions: Iterable[str]) -> bytes:
    """The sum of `expositions` (text format) in text format, plus a `gateway_workers` gauge that
    counts the ones added (an exposition cut short by a dying worker is left out)."""
    families: dict[str, Metric] = {}
    samples: dict[str, dict[tuple, list]] = {}  # family → (sample name, labels) → [name, labels, value]
    workers = 0
    for text in expositions:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            continue
        workers += 1
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                samples[family.name] = {}
            lowest = family.name.endswith("_created") or family.name in _LOWEST_WINS
            into = samples[family.name]
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                seen = into.get(key)
                if seen is None:
                    into[key] = [s.name, s.labels, s.value]
                else:
                    seen[2] = min(seen[2], s.value) if lowest else seen[2] + s.value
    for name, family in families.items():
        for sample_name, labels, value in samples[name].values():
            family.add_sample(sample_name, labels, value)
    count = GaugeMetricFamily("gateway_workers", "Worker processes whose metrics this scrape adds up")
    count.add_metric([], workers)
    registry = CollectorRegistry()
    registry.register(_Fixed([*families.values(), count]))
    return generate_latest(registry)


class _Fixed:
    """A collector that yields metric families already built."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        return self.families
