"""Test configuration: helper import path, thread count under xdist, deterministic hypothesis."""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # ``from helpers import ...`` works under every pytest import mode
    sys.path.insert(0, _HERE)

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two cores, two workers: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)

# Deterministic by default (CI); ``HYPOTHESIS_PROFILE=explore`` draws fresh random examples.
_COMMON = dict(deadline=None, database=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("explore", derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def generator() -> torch.Generator:
    """A fresh, fixed-seed CPU generator per test."""
    return torch.Generator().manual_seed(20240601)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small float64 convs (several times faster than two threads, which also
    stall when the machine is busy); the count is given back after the module. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def dirs(tmp_path):
    """(the output folder, the run's private $TMPDIR), both empty: where a run may write, and what it must leave."""
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    return out, tmp
