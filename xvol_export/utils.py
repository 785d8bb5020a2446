"""Small helpers: an error measure and a step clock."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def relative_l2(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """``||candidate - reference|| / ||reference||``, computed in float64."""
    reference = reference.double()
    return float((candidate.double() - reference).norm() / reference.norm())


class StepClock:
    """``with clock("step"):`` adds the step's wall time, in seconds, to ``timings[step]``."""

    def __init__(self, timings: dict[str, float]):
        self.timings = timings
        self.step = ""

    def __call__(self, step: str) -> "StepClock":
        self.step = step
        return self

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.timings[self.step] = self.timings.get(self.step, 0.0) + time.perf_counter() - self.start
