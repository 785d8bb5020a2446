"""Benchmarking: latency statistics and the job behind `xvol bench`."""

from xvol_export.bench.job import BACKENDS, BenchCase, BenchReport, BenchSettings, bench_artifacts
from xvol_export.bench.stats import LatencyStats, latency_stats

__all__ = ["BACKENDS", "BenchCase", "BenchReport", "BenchSettings", "LatencyStats", "bench_artifacts",
           "latency_stats"]
