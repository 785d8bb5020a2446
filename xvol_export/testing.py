"""Models fit for checking folds: BatchNorm statistics set from real inputs, and a degeneracy check.

Random BatchNorm running statistics (:func:`randomize_batchnorm`) leave a deep
network's logits almost independent of its input, which makes error figures meaningless. Here
the statistics are set as training sets them, from forward passes over real images, and
:func:`check_not_degenerate` refuses a model whose outputs do not vary with the input.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["calibrate_batchnorm", "check_family", "check_not_degenerate", "input_dependence", "randomize_batchnorm",
           "realistic_batchnorm", "DEGENERATE_BELOW"]

# input_dependence of the logits on 64 held-out photo crops (samples/make_photo_crops.py), torch seeds
# 0..2: randomize_batchnorm gives 0.004 to 0.04 (ResNet-101 lowest, ResNet-18 and the tiny model
# highest), realistic_batchnorm on 64 calibration crops 0.33 to 0.68. 0.1 lies between, with a factor
# of at least 2.5 to either side.
DEGENERATE_BELOW = 0.1


def randomize_batchnorm(model: nn.Module, seed: int = 0, *, generator: torch.Generator | None = None,
                        negative_gamma: float = 0.0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters, in place; return ``model``.

    Default statistics (mean 0, var 1, gamma 1, beta 0) hide folding bugs; never check a fold with them.
    Means over ``[-1, 1]``, variances over ``[0.25, 4]`` (log-uniform), gammas over ``[0.5, 1.5]`` with a
    ``negative_gamma`` share made negative (a sign bug in a fold then shows), betas over ``[-0.5, 0.5]``.
    Drawn from ``generator``, else from a generator seeded with ``seed``. The one implementation: the
    project's tests and benchmarks use it too.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, _BatchNorm):
                continue
            n = module.num_features
            if module.running_mean is not None:
                module.running_mean.copy_(_uniform(n, -1.0, 1.0, generator))
                module.running_var.copy_(torch.exp(_uniform(n, -1.386, 1.386, generator)))  # 0.25 .. 4
            if module.weight is not None:
                gamma = _uniform(n, 0.5, 1.5, generator)
                beta = _uniform(n, -0.5, 0.5, generator)
                if negative_gamma > 0:
                    gamma = torch.where(_uniform(n, 0.0, 1.0, generator) < negative_gamma, -gamma, gamma)
                module.weight.copy_(gamma)
                module.bias.copy_(beta)
    return model


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(n, dtype=torch.float64).uniform_(low, high, generator=generator)


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

    With randomized BatchNorm statistics (some gammas negative), in float64, on a batch of odd-sized inputs: the
    registry finds the family from the block and from its deploy form; every layout folds to a deploy block whose
    output equals the training block's in eval mode (relative L2 at most ``tolerance``; its fp32 cast at most
    1e-5); the fold leaves the block as it was; the deploy configuration is JSON-plain and rebuilds, through
    ``build_deploy`` and a strict state-dict load, a block with the same output; the descriptions are non-empty;
    exported to ONNX it holds the Conv nodes the family counts and no BatchNormalization. Through the walker, the
    block folds as its family, folding again is a no-op, and the fold plan rebuilds the deploy form from the
    training skeleton on the meta device, as a deploy checkpoint does.
    """
    import json

    from xvol_export.fold.family import FoldContext, deploy_family, families, training_family

    registered = any(f is family for f in families())  # a family may be checked before it is registered
    blocks = [block] if block is not None else list(family.examples() if family.examples else [])
    assert blocks, f"family {family.name!r} gives no example block: pass one"
    held = []
    for index, sample in enumerate(blocks):
        label = f"{family.name} example {index} ({type(sample).__name__})"
        sample = randomize_batchnorm(copy.deepcopy(sample), seed=seed + index, negative_gamma=0.25).eval().double()
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
            with torch.no_grad():
                fp32 = float((deploy.float()(x.float()).double() - expected).norm() / expected.norm())
            assert fp32 <= 1e-5, f"{label}, layout {layout or '-'}: fp32 deploy rel L2 {fp32:.3g} > 1e-5"
            convs = _check_graph(family, deploy, x, label)
            held.append(f"{label}, layout {layout or '-'}: rel L2 {error:.2g} (fp32 {fp32:.2g}), config round trip, "
                        f"input unchanged, {convs} Conv node(s) and no BatchNormalization in its graph")
        held.append(_check_walker(family, sample, x, expected, label))
    return held


def _check_graph(family, deploy: nn.Module, x: torch.Tensor, label: str) -> int:
    """The deploy block exported to ONNX holds the Conv nodes its family counts, and no BatchNormalization."""
    from xvol_export.export import onnx_graph

    graph = onnx_graph.export_onnx(copy.deepcopy(deploy).float(), tuple(x.shape))
    ops = [node.op_type for node in graph.graph.node]
    assert "BatchNormalization" not in ops, f"{label}: its graph holds a BatchNormalization node"
    assert ops.count("Conv") == family.graph_convs(deploy), \
        f"{label}: its graph holds {ops.count('Conv')} Conv node(s), its family counts {family.graph_convs(deploy)}"
    return ops.count("Conv")


def _check_walker(family, sample: nn.Module, x: torch.Tensor, expected: torch.Tensor, label: str) -> str:
    """Through the walker: the block folds as its family, a second fold is a no-op, and the fold plan rebuilds
    the deploy form from the training skeleton on the meta device (what a deploy checkpoint does)."""
    import json

    from xvol_export.fold import apply_plan, fold
    from xvol_export.fold.plan import FoldPlan

    model = nn.Sequential(sample)
    deploy, report = fold(model)
    assert [b.family for b in report.blocks] == [family.name], f"{label}: the walker folded {report.blocks}"
    again, second = fold(deploy)
    assert not second.blocks and not second.fused, f"{label}: folding the deploy form again changed it"
    with torch.no_grad():
        assert torch.equal(again(x), deploy(x)), f"{label}: a second fold changed the outputs"
    plan = FoldPlan.from_dict(json.loads(json.dumps(report.plan.to_dict())))
    with torch.device("meta"):
        skeleton = copy.deepcopy(model).to("meta")
    rebuilt = apply_plan(skeleton, plan)
    rebuilt.load_state_dict(deploy.state_dict(), strict=True, assign=True)
    with torch.no_grad():
        error = float((rebuilt.eval()(x) - expected).norm() / expected.norm())
    assert error <= 1e-12, f"{label}: rebuilt from its fold plan, rel L2 {error:.3g}"
    return f"{label}: walker, second fold a no-op, rebuilt from its fold plan on the meta device (rel L2 {error:.2g})"
