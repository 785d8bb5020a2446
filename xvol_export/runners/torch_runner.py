"""PyTorch runner: an eval-mode module on a chosen device and dtype."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from xvol_export.runners.base import Runner


class TorchRunner(Runner):
    """Runs ``model`` in eval mode under ``torch.inference_mode``; one input named ``input``, one output ``output``.

    The model must already be in eval mode: a runner does not change the model it is given.
    """

    def __init__(self, model: nn.Module, name: str = "torch", device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        if model.training:
            raise ValueError("TorchRunner needs an eval-mode model (call .eval() on a copy first)")
        self.model = model
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype

    def input_names(self) -> list[str]:
        return ["input"]

    def activate(self) -> None:
        self.model.to(self.device)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.asarray(feed["input"])).to(self.device, self.dtype)
        with torch.inference_mode():
            y = self.model(x)
        return {"output": y.detach().cpu().numpy()}
