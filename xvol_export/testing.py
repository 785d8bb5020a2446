"""Models fit for checking folds: BatchNorm statistics set from real inputs, and a degeneracy check.

Random BatchNorm running statistics (:func:`xvol_export.utils.randomize_batchnorm`) leave a deep
network's logits almost independent of its input, which makes error figures meaningless. Here
the statistics are set as training sets them, from forward passes over real images, and
:func:`check_not_degenerate` refuses a model whose outputs do not vary with the input.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["calibrate_batchnorm", "realistic_batchnorm", "input_dependence", "check_not_degenerate",
           "DEGENERATE_BELOW"]

# input_dependence of the logits on 64 held-out photo crops (samples/make_photo_crops.py), torch seeds
# 0..2: randomize_batchnorm gives 0.004 to 0.04 (ResNet-101 lowest, ResNet-18 and the tiny model
# highest), realistic_batchnorm on 64 calibration crops 0.33 to 0.68. 0.1 lies between, with a factor
# of at least 2.5 to either side.
DEGENERATE_BELOW = 0.1


def calibrate_batchnorm(model: nn.Module, inputs, batch_size: int = 32) -> nn.Module:
    """Set every BatchNorm's running statistics from ``inputs`` as training does, in place; return ``model``.

    ``inputs`` (a tensor or array, ``N, C, H, W``) go through the model in train mode under
    ``torch.no_grad()``, in ``ceil(N / batch_size)`` batches of near-equal size. Each BatchNorm's
    statistics are reset first and accumulated with ``momentum=None``, so they end as the plain
    average of the per-batch means and (unbiased) variances, as ``torch.optim.swa_utils.update_bn``
    computes them. Each BatchNorm's momentum and every module's ``training`` flag are restored afterwards;
    nothing but the running statistics (and ``num_batches_tracked``) changes.
    """
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    if x.dim() < 2 or len(x) == 0:
        raise ValueError(f"inputs must be a non-empty batch (N, C, H, W), got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    reference = next(iter(model.parameters()), None)
    if reference is not None:
        x = x.to(device=reference.device, dtype=reference.dtype)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes
        model.train()
        with torch.no_grad():
            for batch in torch.tensor_split(x, -(-len(x) // batch_size)):
                model(batch)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for m, training in flags:
            m.training = training
    return model


def realistic_batchnorm(model: nn.Module, inputs, seed: int = 0, batch_size: int = 32) -> nn.Module:
    """Random BatchNorm affine parameters, then statistics calibrated on ``inputs``; in place, returns ``model``.

    gamma ~ U[0.5, 1.5] and beta ~ U[-0.5, 0.5] from a generator seeded with ``seed`` (so folds
    see non-trivial affine parameters), then :func:`calibrate_batchnorm` (so the running
    statistics are those of the data, not random).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.affine:
                n = module.num_features
                gamma = torch.empty(n, dtype=torch.float64).uniform_(0.5, 1.5, generator=generator)
                beta = torch.empty(n, dtype=torch.float64).uniform_(-0.5, 0.5, generator=generator)
                module.weight.copy_(gamma)
                module.bias.copy_(beta)
    return calibrate_batchnorm(model, inputs, batch_size=batch_size)


def input_dependence(outputs) -> float:
    """The fraction of the outputs' energy that varies with the input: ``||y - mean_batch(y)|| / ||y||``.

    Computed in float64 over a batch of outputs (tensor or array, batch first, at least two).
    0 for a model that ignores its input. XVol-ResNet-50 (torch seed 0) logits on 64 held-out
    photo crops: 0.0088 at 224x224 and 0.0087 at 64x64 with ``randomize_batchnorm`` (every crop
    gets the same class), 0.37 at 224x224 and 0.48 at 64x64 with :func:`realistic_batchnorm` on 64
    calibration crops.
    """
    if isinstance(outputs, torch.Tensor):
        y = outputs.detach().to("cpu", torch.float64)
    else:
        y = torch.as_tensor(np.asarray(outputs, dtype=np.float64))
    if y.dim() == 0 or len(y) < 2:
        raise ValueError(f"input_dependence needs a batch of at least two outputs, got shape {tuple(y.shape)}")
    total = float(y.norm())
    if total == 0.0:
        return 0.0
    return float((y - y.mean(dim=0, keepdim=True)).norm()) / total


def check_not_degenerate(outputs, minimum: float = DEGENERATE_BELOW, label: str = "model") -> float:
    """Raise ``ValueError`` if :func:`input_dependence` of ``outputs`` is below ``minimum``; else return it.

    The default, 0.1, lies between what random BatchNorm statistics give XVol-ResNet-50 (0.009)
    and what statistics calibrated on photos give it (0.37 to 0.48); see :func:`input_dependence`.
    """
    figure = input_dependence(outputs)
    if not figure >= minimum:
        raise ValueError(
            f"{label} is degenerate: input dependence {figure:.3g} < {minimum:.3g}, its outputs are nearly "
            f"the same for every input, so error figures measured on it would mean nothing. Calibrate its "
            f"BatchNorm statistics on real inputs (xvol_export.testing.realistic_batchnorm)."
        )
    return figure
