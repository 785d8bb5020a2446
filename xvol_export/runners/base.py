"""The runner interface (after Polygraphy): activate, infer, deactivate."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    """One timed call: ``host_ms`` as the caller waits for it; ``device_ms`` from device events, where known."""

    host_ms: float
    device_ms: float | None = None


class Runner(abc.ABC):
    """Runs one artifact on one backend. ``infer`` maps input names to arrays and returns outputs by name.

    Use as a context manager: ``with runner: runner.infer(feed)``.
    """

    name: str = "runner"

    def activate(self) -> None:  # noqa: B027 - optional hook
        """Acquire what inference needs (sessions, devices). Idempotent."""

    def deactivate(self) -> None:  # noqa: B027 - optional hook
        """Release it."""

    @abc.abstractmethod
    def input_names(self) -> list[str]:
        ...

    def fixed_batch(self) -> int | None:
        """The only batch size the artifact accepts, or ``None`` when any batch size works."""
        return None

    @abc.abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...

    # Timing: ``bind`` stages a feed once, then every ``timed_call`` runs it. Backends with a device
    # override both to keep staging and transfers where they belong.
    timed_what = "host wall time per call"

    def bind(self, feed: dict[str, np.ndarray]) -> None:
        """Stage ``feed`` for :meth:`timed_call`."""
        self._bound = feed

    def timed_call(self) -> Timing:
        """Run the bound feed once; the host time covers the whole call."""
        start = time.perf_counter()
        self.infer(self._bound)
        return Timing(1e3 * (time.perf_counter() - start))

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()
