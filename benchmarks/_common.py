"""Shared benchmark plumbing: interleaved timing, machine description, JSON output, realistic models."""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from xvol_export import create_model, env
from xvol_export.testing import check_not_degenerate, realistic_batchnorm

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def machine() -> dict:
    """The machine results come from (xvol's one description of it), with PyTorch's thread count."""
    return {**env.machine(), "threads": torch.get_num_threads()}


def time_interleaved(calls: dict[str, Callable[[], object]], iterations: int, warmup: int = 3) -> dict[str, dict]:
    """Time each call ``iterations`` times, round-robin, so machine noise hits every variant alike."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(iterations):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_ms": 1e3 * statistics.median(values),
            "mean_ms": 1e3 * statistics.fmean(values),
            "min_ms": 1e3 * min(values),
            "stdev_ms": 1e3 * (statistics.stdev(values) if len(values) > 1 else 0.0),
            "iterations": len(values),
        }
        for name, values in samples.items()
    }


def bootstrap_median_ci(values: list[float], level: float = 0.95, resamples: int = 10_000) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median of ``values``."""
    data = np.asarray(values, dtype=float)
    picks = np.random.default_rng(0).integers(0, len(data), size=(resamples, len(data)))
    medians = np.median(data[picks], axis=1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def paired_ratio(values: list[float], baseline: list[float]) -> tuple[float, tuple[float, float]]:
    """The median of the per-round ratios ``values[i] / baseline[i]`` and its bootstrap 95 % interval."""
    ratios = [v / b for v, b in zip(values, baseline, strict=True)]
    return statistics.median(ratios), bootstrap_median_ci(ratios)


def time_runners(runners: dict, feed: np.ndarray, warmup: int, rounds: int, ratio_key: str,
                 batch: int = 1) -> dict[str, dict]:
    """Round-robin timed calls of xvol runners on ``feed``: per runner its median, min, coefficient of
    variation and items/s, and the paired ratio to the first runner as ``ratio_key`` (and ``ratio_key``_ci95)."""
    from xvol_export.bench import latency_stats

    for runner in runners.values():
        runner.activate()
        runner.bind({runner.input_names()[0]: feed})
    for _ in range(warmup):
        for runner in runners.values():
            runner.timed_call()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            samples[name].append(runner.timed_call().host_ms)
    baseline = next(iter(samples.values()))
    out = {}
    for name, values in samples.items():
        stats = latency_stats(values)
        ratio, interval = paired_ratio(values, baseline)
        out[name] = {"median_ms": stats.median, "min_ms": stats.min, "cv": stats.cv, "rounds": len(values),
                     "items_per_s": stats.throughput(batch), ratio_key: ratio, f"{ratio_key}_ci95": list(interval)}
    return out


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


@lru_cache(maxsize=1)
def _photo_module():
    spec = importlib.util.spec_from_file_location("make_photo_crops", SAMPLES / "make_photo_crops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def photo_crops(size: int, count: int, split: str, seed: int = 0) -> np.ndarray:
    """Normalized crops of the scikit-learn sample photos (``samples/make_photo_crops.py``; needs Pillow)."""
    return _photo_module().photo_crops(size, count, split, seed)


def realistic_model(name: str, size: int, seed: int = 0, **kwargs) -> torch.nn.Module:
    """``create_model(name, **kwargs)`` in eval mode, with seeded BatchNorm gamma/beta and statistics
    calibrated on 64 calibration photo crops at ``size``; refused (ValueError) if its outputs on 16
    held-out crops hardly depend on the input. Weights come from the global torch seed."""
    model = create_model(name, **kwargs)
    realistic_batchnorm(model, photo_crops(size, 64, "calib"), seed=seed).eval()
    with torch.inference_mode():
        outputs = model(torch.from_numpy(photo_crops(size, 16, "holdout")))
    check_not_degenerate(outputs, label=f"{name} {kwargs or ''}".strip())
    return model
