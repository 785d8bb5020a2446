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

__all__ = ["calibrate_batchnorm", "check_family", "realistic_batchnorm", "input_dependence", "check_not_degenerate",
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


# --- the block-family conformance kit -----------------------------------------------------------------------


def check_family(family, block: nn.Module | None = None, *, input_hw: tuple[int, int] = (7, 9), seed: int = 0,
                 tolerance: float = 1e-12) -> list[str]:
    """Check a :class:`~xvol_export.fold.family.BlockFamily` on ``block`` (default: each of its ``examples``) and
    return what holds, one line per check; :class:`AssertionError` naming the first that does not.

    With randomized BatchNorm statistics, in float64, on a batch of odd-sized inputs: the registry finds the
    family from the block and from its deploy form; every layout folds to a deploy block whose output equals the
    training block's in eval mode (relative L2 at most ``tolerance``); the fold leaves the block as it was; the
    deploy configuration is JSON-plain and rebuilds, through ``build_deploy`` and a strict state-dict load, a
    block with the same output; the descriptions are non-empty and the graph holds at least one Conv.
    """
    import copy
    import json

    from xvol_export.fold.family import FoldContext, deploy_family, families, training_family
    from xvol_export.utils import randomize_batchnorm

    registered = any(f is family for f in families())  # a family may be checked before it is registered
    blocks = [block] if block is not None else list(family.examples() if family.examples else [])
    assert blocks, f"family {family.name!r} gives no example block: pass one"
    held = []
    for index, sample in enumerate(blocks):
        label = f"{family.name} example {index} ({type(sample).__name__})"
        sample = randomize_batchnorm(copy.deepcopy(sample), seed=seed + index).eval().double()
        assert not registered or training_family(sample) is family, f"{label}: the registry does not find it"
        channels = next(m for m in sample.modules() if isinstance(m, nn.modules.conv._ConvNd)).in_channels
        x = torch.randn(2, channels, *input_hw, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        before = {k: v.clone() for k, v in sample.state_dict().items()}
        with torch.no_grad():
            expected = sample(x)
        for layout in family.layouts or ("",):
            deploy = family.fold(sample, FoldContext(layout=layout)).eval()
            assert all(torch.equal(before[k], v) for k, v in sample.state_dict().items()), f"{label}: fold changed it"
            assert isinstance(deploy, family.deploy_types) and (not registered or deploy_family(deploy) is family), \
                f"{label}: its deploy form is a {type(deploy).__name__}, not one of the family's deploy types"
            with torch.no_grad():
                got = deploy(x)
            error = float((got - expected).norm() / expected.norm().clamp_min(1e-300))
            assert error <= tolerance, f"{label}, layout {layout or '-'}: rel L2 {error:.3g} > {tolerance:g}"
            config = json.loads(json.dumps(family.deploy_config(deploy)))
            rebuilt = family.build_deploy(config).double().eval()
            rebuilt.load_state_dict(deploy.state_dict(), strict=True)
            with torch.no_grad():
                assert torch.equal(rebuilt(x), got), f"{label}: build_deploy(deploy_config) computes differently"
            assert family.describe_training(sample) and family.describe_deploy(deploy), f"{label}: no description"
            assert family.graph_convs(deploy) >= 1, f"{label}: its deploy form holds no Conv"
            held.append(f"{label}, layout {layout or '-'}: rel L2 {error:.2g}, config round trip, input unchanged")
    return held
