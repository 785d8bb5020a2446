"""Outputs of one run on one input set, by output name and by block, as float64 arrays (no PyTorch needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from xvol_export.runners import Runner

if TYPE_CHECKING:
    import torch


@dataclass
class Outputs:
    """One model's outputs on one input set (float64 copies), by output name and by block name.

    ``blocks`` holds each block's output inside its own network; ``isolated`` each block run alone on
    the reference's float64 block input (cast to the model's precision): the block's own error.
    """

    values: dict[str, np.ndarray]
    blocks: dict[str, np.ndarray] = field(default_factory=dict)
    isolated: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Baseline:
    """An honest implementation at a candidate's precision, and the float64 form of the same function it is
    judged against: what a candidate's error may be compared with (:mod:`~xvol_export.verify.gates`)."""

    label: str
    truth: Outputs
    outputs: Outputs


def run_batches(runner: Runner, inputs: torch.Tensor | np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Run ``inputs`` through ``runner`` in batches; every output, stacked, by name (float64).

    A runner with a fixed batch size gets exactly that many items per call (the last batch is
    padded with copies of its last item, and the padding's outputs are dropped).
    """
    array = inputs.numpy() if hasattr(inputs, "numpy") else np.asarray(inputs)  # a tensor or an array
    name = runner.input_names()[0]
    fixed = runner.fixed_batch()
    step = fixed or batch_size
    outputs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(array), step):
        chunk = array[start: start + step]
        count = len(chunk)
        if fixed and count < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - count, axis=0)])
        for key, value in runner.infer({name: chunk}).items():
            outputs.setdefault(key, []).append(np.asarray(value, dtype=np.float64)[:count])
    return {key: np.concatenate(parts, axis=0) for key, parts in outputs.items()}
