"""Reading a Prometheus text exposition in tests: ``scrape(url).value(name, **labels)``."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    """Every sample of one scrape: (sample name, labels) → value."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(samples)

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or ``None`` if there is none."""
        return self.samples.get((name, frozenset(labels.items())))

    def series(self, name: str) -> list[dict[str, str]]:
        """The label sets of every sample called ``name``."""
        return [dict(labels) for sample, labels in self.samples if sample == name]

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample called ``name`` whose labels include these."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)


def scrape(url: str, **request: object) -> Scrape:
    """GET ``url`` (a ``/metrics`` endpoint) and parse it."""
    response = httpx.get(url, timeout=10, **request)  # type: ignore[arg-type]
    response.raise_for_status()
    return Scrape.parse(response.text)
