"""Latency statistics of `xvol bench` (xvol_export.bench.stats) against hand-computed values and numpy."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from xvol_export.bench import latency_stats
from xvol_export.bench.stats import UNSTABLE_CV, LatencyStats

# ------------------------------------------------------------------------------ known samples


def test_one_to_five_by_hand():
    stats = latency_stats([1.0, 2.0, 3.0, 4.0, 5.0], percentiles=(90,))
    assert stats.count == 5
    assert stats.mean == pytest.approx(3.0)
    assert stats.median == pytest.approx(3.0)
    # sample standard deviation: sum of squared deviations 4+1+0+1+4 = 10, over n-1 = 4
    assert stats.stdev == pytest.approx(math.sqrt(2.5))
    assert stats.min == 1.0
    assert stats.max == 5.0
    # linear interpolation: position (5-1)*0.9 = 3.6 -> 4 + 0.6*(5-4)
    assert stats.percentiles[90] == pytest.approx(4.6)


def test_default_percentiles_by_hand():
    stats = latency_stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert set(stats.percentiles) == {90, 95, 99}
    assert stats.percentiles[95] == pytest.approx(4.8)   # position 3.8
    assert stats.percentiles[99] == pytest.approx(4.96)  # position 3.96


def test_percentile_bounds_are_min_and_max():
    stats = latency_stats([7.0, 3.0, 5.0], percentiles=(0, 100))
    assert stats.percentiles[0] == 3.0
    assert stats.percentiles[100] == 7.0


def test_single_sample():
    stats = latency_stats([2.5], percentiles=(50, 90, 99.9))
    assert stats.count == 1
    assert stats.stdev == 0.0
    assert stats.cv == 0.0
    assert stats.mean == stats.median == stats.min == stats.max == 2.5
    assert all(v == 2.5 for v in stats.percentiles.values())
    assert not stats.unstable


def test_unsorted_input_same_as_sorted():
    samples = [5.0, 1.0, 4.0, 2.0, 3.0]
    stats = latency_stats(samples, percentiles=(90,))
    assert stats.min == 1.0 and stats.max == 5.0
    assert stats.median == pytest.approx(3.0)
    assert stats.percentiles[90] == pytest.approx(4.6)
    assert stats == latency_stats(sorted(samples), percentiles=(90,))
    assert samples == [5.0, 1.0, 4.0, 2.0, 3.0], "the caller's list must not be reordered"


def test_even_count_median_is_mean_of_middle_two():
    stats = latency_stats([4.0, 1.0, 10.0, 2.0])
    assert stats.median == pytest.approx(3.0)  # (2 + 4) / 2
    assert stats.mean == pytest.approx(4.25)


# ------------------------------------------------------------------------------ against numpy


@pytest.mark.parametrize("n", [2, 7, 100, 1001])
def test_percentiles_match_numpy_linear(n):
    rng = np.random.default_rng(n)
    samples = list(rng.lognormal(mean=1.0, sigma=0.5, size=n))
    qs = (0, 1, 25, 50, 90, 95, 99, 99.9, 100)
    stats = latency_stats(samples, percentiles=qs)
    for q in qs:
        assert stats.percentiles[q] == pytest.approx(float(np.percentile(samples, q)), rel=1e-12, abs=1e-12), q
    assert stats.median == pytest.approx(float(np.median(samples)), rel=1e-12)
    assert stats.mean == pytest.approx(float(np.mean(samples)), rel=1e-12)
    assert stats.stdev == pytest.approx(float(np.std(samples, ddof=1)), rel=1e-9)
    assert stats.min == min(samples) and stats.max == max(samples)


def test_percentiles_are_monotone():
    samples = [random.Random(3).uniform(0.5, 2.0) for _ in range(200)]
    qs = (10, 50, 90, 95, 99, 99.9)
    stats = latency_stats(samples, percentiles=qs)
    values = [stats.percentiles[q] for q in qs]
    assert values == sorted(values)
    assert stats.min <= values[0] and values[-1] <= stats.max


# ------------------------------------------------------------------------------ to_dict, throughput, cv


def test_to_dict_keys_and_values():
    stats = latency_stats([1.0, 2.0, 3.0, 4.0, 5.0], percentiles=(90, 95, 99, 99.9))
    out = stats.to_dict()
    assert set(out) == {"count", "mean", "stdev", "min", "max", "median", "p50", "p90", "p95", "p99", "p99_9", "cv"}
    assert "percentiles" not in out
    assert out["p50"] == out["median"] == pytest.approx(3.0)
    assert out["p90"] == pytest.approx(4.6)
    assert out["p99_9"] == pytest.approx(float(np.percentile([1, 2, 3, 4, 5], 99.9)))
    assert out["cv"] == pytest.approx(math.sqrt(2.5) / 3.0)
    assert out["count"] == 5


def test_to_dict_float_integral_percentile_label():
    # --percentile parses to floats (90.0): the key is still p90, not p90_0
    out = latency_stats([1.0, 2.0], percentiles=(90.0, 99.5)).to_dict()
    assert "p90" in out and "p99_5" in out
    assert "p90_0" not in out


def test_throughput_is_items_per_second_at_median():
    stats = latency_stats([4.0, 5.0, 6.0])  # median 5 ms
    assert stats.throughput(1) == pytest.approx(200.0)
    assert stats.throughput(8) == pytest.approx(1600.0)
    assert stats.throughput(8) == pytest.approx(1000 * 8 / stats.median)


def test_cv_and_unstable_threshold():
    steady = latency_stats([10.0, 10.1, 9.9, 10.0])
    assert steady.cv == pytest.approx(steady.stdev / steady.mean)
    assert steady.cv < UNSTABLE_CV
    assert not steady.unstable
    noisy = latency_stats([1.0, 2.0, 3.0, 4.0, 5.0])  # cv ~ 0.53
    assert noisy.cv == pytest.approx(math.sqrt(2.5) / 3)
    assert noisy.unstable
    assert UNSTABLE_CV == pytest.approx(0.10)


def test_unstable_is_strictly_above_threshold():
    just_at = LatencyStats(count=10, mean=1.0, stdev=0.10, min=0.8, max=1.2, median=1.0)
    just_over = LatencyStats(count=10, mean=1.0, stdev=0.1001, min=0.8, max=1.2, median=1.0)
    assert not just_at.unstable
    assert just_over.unstable


def test_zero_mean_and_median_do_not_divide_by_zero():
    zero = latency_stats([0.0, 0.0, 0.0])
    assert zero.cv == 0.0
    assert zero.throughput(1) == math.inf


# ------------------------------------------------------------------------------ errors


def test_empty_samples_raise():
    with pytest.raises(ValueError, match="no samples"):
        latency_stats([])


@pytest.mark.parametrize("q", [-0.1, 100.01, 101, float("nan")])
def test_out_of_range_percentile_raises(q):
    with pytest.raises(ValueError, match="percentile"):
        latency_stats([1.0, 2.0, 3.0], percentiles=(90, q))
