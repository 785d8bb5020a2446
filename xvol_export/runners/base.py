"""The runner interface (after Polygraphy): activate, infer, deactivate."""

from __future__ import annotations

import abc

import numpy as np


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

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()
