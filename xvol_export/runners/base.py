"""The runner interface (after Polygraphy): activate, infer, deactivate."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """One input of an artifact: its numpy dtype and shape, dynamic dimensions as None."""

    dtype: np.dtype
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class Timing:
    """One timed call: ``host_ms`` as the caller waits for it; ``device_ms`` (compute), ``h2d_ms`` and ``d2h_ms``
    (input and output copies) from device events, where known."""

    host_ms: float
    device_ms: float | None = None
    h2d_ms: float | None = None
    d2h_ms: float | None = None


class Runner(abc.ABC):
    """Runs one artifact on one backend. ``infer`` maps input names to arrays and returns outputs by name.

    Use as a context manager: ``with runner: runner.infer(feed)``.
    """

    name: str = "runner"

    def activate(self) -> None:
        """Acquire what inference needs (sessions, devices). Idempotent."""
        self._active = True

    def deactivate(self) -> None:
        """Release it."""
        self._active = False

    @property
    def is_active(self) -> bool:
        """Whether :meth:`activate` has acquired what inference needs (and :meth:`deactivate` not yet released it)."""
        return getattr(self, "_active", False)

    @abc.abstractmethod
    def input_metadata(self) -> dict[str, InputSpec]:
        """Every input by name, in order: dtype and shape (dynamic dimensions as None)."""

    def input_names(self) -> list[str]:
        return list(self.input_metadata())

    def fixed_batch(self) -> int | None:
        """The only batch size the artifact accepts, or ``None`` when any batch size works."""
        shape = next(iter(self.input_metadata().values())).shape
        return shape[0] if shape else None

    @abc.abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...

    # Timing: ``bind`` stages a feed once, then every ``timed_call`` runs it. Backends with a device
    # override both to keep staging and transfers where they belong.
    @property
    def timed_what(self) -> str:
        """What a timing covers, in plain words."""
        return "host wall time per call"

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


def named_outputs(result) -> dict:
    """A model's result by output name, as exported graphs name them: ``output`` for one tensor, ``output0``,
    ``output1``... for a tuple or list, the keys of a dict."""
    if isinstance(result, dict):
        return {str(k): v for k, v in result.items()}
    if isinstance(result, (tuple, list)):
        return {f"output{i}": v for i, v in enumerate(result)}
    if hasattr(result, "shape"):
        return {"output": result}
    raise TypeError(f"the model returned {type(result).__name__}, not tensors")

