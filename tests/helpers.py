"""Shared test helpers (plain functions; import with ``from helpers import ...``).

``tests/conftest.py`` puts this directory on ``sys.path``, so the import works under
``python -m pytest`` from the repository root, with ``-n 2`` and with any import mode.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def randomize_bn(
    model: nn.Module,
    generator: torch.Generator,
    mean_std: float = 0.5,
    var_range: tuple[float, float] = (0.3, 3.0),
    gamma_range: tuple[float, float] = (0.5, 1.5),
    beta_std: float = 0.5,
) -> int:
    """Give every BatchNorm non-default statistics and affine parameters; return how many.

    running_mean ~ N(0, mean_std^2); running_var ~ U(var_range) (positive, spread); gamma = +-U(gamma_range)
    (random sign, so a sign bug in the fold shows); beta ~ N(0, beta_std^2). Default statistics
    (0, 1, 1, 0) hide folding bugs, so tests never fold without calling this first.
    """
    count = 0
    for module in model.modules():
        if not isinstance(module, _BatchNorm):
            continue
        n = module.num_features
        with torch.no_grad():
            if module.running_mean is not None:
                ref = module.running_mean
                module.running_mean.copy_((torch.randn(n, generator=generator, dtype=torch.float64) * mean_std).to(ref))
                lo, hi = var_range
                var = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
                module.running_var.copy_(var.to(module.running_var))
            if module.affine:
                lo, hi = gamma_range
                magnitude = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
                sign = torch.where(torch.rand(n, generator=generator) < 0.25, -1.0, 1.0).double()
                module.weight.copy_((magnitude * sign).to(module.weight))
                module.bias.copy_((torch.randn(n, generator=generator, dtype=torch.float64) * beta_std).to(module.bias))
        count += 1
    return count


def init_params(model: nn.Module, generator: torch.Generator, gain: float = 1.0, bias_std: float = 0.1) -> nn.Module:
    """Re-initialize every conv/linear from ``generator``: weight ~ N(0, gain^2 / fan_in), bias ~ N(0, bias_std^2)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                w = module.weight
                fan_in = w[0].numel()
                scale = gain / math.sqrt(fan_in)
                w.copy_((torch.randn(w.shape, generator=generator, dtype=torch.float64) * scale).to(w))
                if module.bias is not None:
                    b = module.bias
                    b.copy_((torch.randn(b.shape, generator=generator, dtype=torch.float64) * bias_std).to(b))
    return model


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` computed in float64 (0 when both are zero, inf when only ``b`` is)."""
    a64, b64 = a.detach().double(), b.detach().double()
    assert a64.shape == b64.shape, f"shape mismatch {tuple(a64.shape)} vs {tuple(b64.shape)}"
    num = (a64 - b64).norm().item()
    den = b64.norm().item()
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """Cloned state dict and every submodule's ``training`` flag."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {name: m.training for name, m in model.named_modules()}
    return state, flags


def assert_unchanged(model: nn.Module, snap: tuple[dict[str, torch.Tensor], dict[str, bool]]) -> None:
    """``model`` has exactly the state (bit-exact, same dtypes) and training flags of ``snap``."""
    state, flags = snap
    now = model.state_dict()
    assert list(now) == list(state), "state-dict keys changed"
    for key, value in state.items():
        assert now[key].dtype == value.dtype, f"{key}: dtype changed"
        assert torch.equal(now[key], value), f"{key}: tensor changed"
    now_flags = {name: m.training for name, m in model.named_modules()}
    assert now_flags == flags, "training flags or module tree changed"


def count_instances(model: nn.Module, types) -> int:
    return sum(isinstance(m, types) for m in model.modules())


# ----------------------------------------------------------------------------------------- the CLI

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Result:
    """What one ``xvol`` run did: exit code and output, with colour codes removed."""

    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        lines = self.out.strip().splitlines()
        return lines[-1].strip() if lines else ""

    @property
    def message(self) -> str:
        """stderr with the console's line wrapping undone."""
        return " ".join(self.err.split())

    @property
    def text(self) -> str:
        return self.out + self.err


def run_cli(capsys, *args) -> Result:
    """``xvol ARGS`` in this process; returns the exit code and what it printed."""
    from xvol_cli import app as cli_app

    capsys.readouterr()  # drop anything printed before
    with pytest.raises(SystemExit) as info:
        cli_app.main([str(a) for a in args])
    captured = capsys.readouterr()
    code = info.value.code
    return Result(code if isinstance(code, int) else 0, ANSI.sub("", captured.out), ANSI.sub("", captured.err))
