"""Small helpers: realistic BatchNorm statistics for checking folds, an error measure, a step clock."""

from __future__ import annotations

import time

import torch
from torch import nn


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters, in place.

    Default statistics (mean 0, var 1, gamma 1, beta 0) hide folding bugs; never test with them.
    Variances are spread over ``[0.25, 4]`` and means over ``[-1, 1]``.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            n = module.num_features
            if module.running_mean is not None:
                module.running_mean.copy_(_uniform(n, -1.0, 1.0, generator))
                module.running_var.copy_(torch.exp(_uniform(n, -1.386, 1.386, generator)))  # 0.25 .. 4
            if module.weight is not None:
                module.weight.copy_(_uniform(n, 0.5, 1.5, generator))
                module.bias.copy_(_uniform(n, -0.5, 0.5, generator))
    return model


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(n, dtype=torch.float64).uniform_(low, high, generator=generator)


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
