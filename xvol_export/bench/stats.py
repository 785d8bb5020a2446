"""Latency statistics from timed samples."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

# Above this coefficient of variation the run is called unstable: the machine was busy or throttling.
UNSTABLE_CV = 0.10


@dataclass
class LatencyStats:
    """Milliseconds per call over ``count`` timed calls; ``percentiles`` maps 90 -> p90 and so on."""

    count: int
    mean: float
    stdev: float
    min: float
    max: float
    median: float
    percentiles: dict[int | float, float] = field(default_factory=dict)

    @property
    def cv(self) -> float:
        """Coefficient of variation, stdev / mean."""
        return self.stdev / self.mean if self.mean > 0 else 0.0

    @property
    def unstable(self) -> bool:
        return self.cv > UNSTABLE_CV

    def throughput(self, batch: int) -> float:
        """Items per second at the median latency."""
        return 1e3 * batch / self.median if self.median > 0 else math.inf

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["percentiles"]
        out["p50"] = self.median
        for q, value in self.percentiles.items():
            out[f"p{_label(q)}"] = value
        out["cv"] = self.cv
        return out


def latency_stats(samples_ms: list[float], percentiles: tuple[float, ...] = (90, 95, 99)) -> LatencyStats:
    """Summarize samples; percentiles use linear interpolation between order statistics (numpy's default)."""
    if not samples_ms:
        raise ValueError("no samples to summarize")
    ordered = sorted(samples_ms)
    return LatencyStats(
        count=len(ordered),
        mean=statistics.fmean(ordered),
        stdev=statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        min=ordered[0],
        max=ordered[-1],
        median=statistics.median(ordered),
        percentiles={q: _percentile(ordered, q) for q in percentiles},
    )


def _percentile(ordered: list[float], q: float) -> float:
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _label(q: float) -> str:
    return str(int(q)) if float(q).is_integer() else str(q).replace(".", "_")
