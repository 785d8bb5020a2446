"""Shared test helpers (plain functions; import with ``from helpers import ...``).

``tests/conftest.py`` puts this directory on ``sys.path``, so the import works under
``python -m pytest`` from the repository root, with ``-n 2`` and with any import mode.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from xvol_export.testing import randomize_batchnorm


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def randomize_bn(model: nn.Module, generator: torch.Generator) -> int:
    """:func:`xvol_export.testing.randomize_batchnorm` from ``generator``, a quarter of the gammas negative (a sign
    bug in a fold then shows); returns how many BatchNorms it set. Tests never fold with default statistics."""
    randomize_batchnorm(model, generator=generator, negative_gamma=0.25)
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


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
    from xvol_cli.main import main

    capsys.readouterr()  # drop anything printed before
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    code = info.value.code
    return Result(code if isinstance(code, int) else 0, ANSI.sub("", captured.out), ANSI.sub("", captured.err))


# --- official releases: their key lists and the seeded weights their outputs were recorded with ---------------

DATA = Path(__file__).parent / "data"


def official_keys(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """``(key, shape)`` of an official state dict, from ``tests/data/<name>_keys.txt``."""
    rows = []
    for line in (DATA / f"{name}_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            rows.append((key, tuple(int(n) for n in shape.split(",") if n)))
    return rows


def keys_of(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


def fill_seeded(model: nn.Module, seed: int) -> None:
    """Deterministic weights by key (the procedure that made ``tests/data/*_outputs.json`` with the official code):
    running variances in [0.5, 1.5), running means and biases N(0, 0.01), BN weights in [0.5, 1.5), the rest
    N(0, 1 / fan_in)."""
    gen = make_generator(seed)
    state = model.state_dict()
    with torch.no_grad():
        for name in sorted(state):
            tensor = state[name]
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                value = 0.5 + torch.rand(tensor.shape, generator=gen, dtype=torch.float64)
            elif tensor.dim() == 1 and name.endswith(("running_mean", "bias")):
                value = 0.1 * torch.randn(tensor.shape, generator=gen, dtype=torch.float64)
            elif tensor.dim() == 1:
                value = 0.5 + torch.rand(tensor.shape, generator=gen, dtype=torch.float64)
            else:
                value = torch.randn(tensor.shape, generator=gen, dtype=torch.float64) / math.sqrt(tensor[0].numel())
            tensor.copy_(value)

