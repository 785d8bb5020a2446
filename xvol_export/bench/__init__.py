"""Benchmark statistics, and the JSON Schema of ``xvol bench``'s report (the job is ``xvol_export.jobs.bench``)."""

from pathlib import Path

from xvol_export.bench.stats import LatencyStats, latency_stats

SCHEMA_PATH = Path(__file__).with_name("schema.json")  # JSON Schema of BenchReport.to_dict() (+ command, status)

__all__ = ["SCHEMA_PATH", "LatencyStats", "latency_stats"]
