"""A model of the rounding an honest runtime may add where PyTorch adds little.

The measured baselines (the training and deploy forms run at the precision, in PyTorch) show the rounding
of one summation order; two things other honest runtimes do were measured to cost more (OpenVINO's CPU
plugin, at 3 to 13 unit roundoffs where PyTorch and ONNX Runtime stayed at 1 to 2):

* adding a conv's or linear's bias (or a BatchNorm's shift) after rounding the sum of products: off by one
  rounding of ``W x``, which is far larger than ``y`` where the bias cancels it;
* summing a reduction (mean, sum, average pooling) one term after another: each of the ``n`` partial
  sums rounded, off by up to ``u sqrt(n)`` of the sum of the terms' magnitudes in root mean square, which
  does not shrink when the output is an average of them, as vectorized sums do (measured: 2 to 29 unit
  roundoffs for a mean of 256 values of 8 channels, against 1 for PyTorch and ONNX Runtime).

:class:`rounding_model`, in a float64 run, perturbs each such result by that much, each rounding at its
largest and of random sign: a conv, transposed conv, linear or BatchNorm by ``u |y - b|``, a reduction of
``n = input size / output size`` terms by ``u_acc sqrt(n) M`` (``M`` the same reduction of the terms'
magnitudes; ``u_acc`` the unit roundoff sums accumulate in: fp32's for fp16 and bf16, whose runtimes
accumulate in fp32). Everything else runs in float64 unchanged. The signs come from a fixed seed, so a verdict on
the same inputs is the same every time.
"""

from __future__ import annotations

import math

import torch
from torch.overrides import TorchFunctionMode

REDUCTIONS = frozenset({"mean", "sum", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                        "avg_pool1d", "avg_pool2d", "avg_pool3d"})
# Sums of products and the position of their bias among the arguments (a BatchNorm: its running mean).
BIASED = {"linear": 2, "conv1d": 2, "conv2d": 2, "conv3d": 2, "conv_transpose1d": 2, "conv_transpose2d": 2,
          "conv_transpose3d": 2, "batch_norm": 1}


class rounding_model(TorchFunctionMode):  # noqa: N801 - a context manager, like torch's own function modes
    """While active, every floating sum of products and reduction is perturbed as the module's docstring says."""

    def __init__(self, unit_roundoff: float, accumulation_roundoff: float | None = None, seed: int = 0):
        super().__init__()
        self.unit_roundoff = unit_roundoff
        self.accumulation_roundoff = unit_roundoff if accumulation_roundoff is None else accumulation_roundoff
        self.generator = torch.Generator().manual_seed(seed)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name not in REDUCTIONS and name not in BIASED:
            return out
        x = args[0] if args else kwargs.get("input")
        if not (isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor) and x.is_floating_point()
                and out.is_floating_point() and out.numel()):
            return out
        if name in REDUCTIONS:
            if out.numel() >= x.numel():
                return out
            size = self.accumulation_roundoff * math.sqrt(x.numel() / out.numel()) * func(x.abs(), *args[1:], **kwargs)
        else:
            size = self.unit_roundoff * (out - _shift(name, out, args, kwargs)).abs()
        signs = torch.randint(0, 2, out.shape, generator=self.generator, dtype=torch.float64).mul_(2).sub_(1)
        return out + size * signs.to(out.device, out.dtype)


def _shift(name: str, out: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor | float:
    """What a sum of products adds after its products: a conv's or linear's bias, a BatchNorm's shift
    (``bias - mean * weight / sqrt(var + eps)``), broadcast over ``out``; 0 without one."""
    shape = (1, -1) + (1,) * (out.dim() - 2) if out.dim() > 1 else (-1,)
    if name != "batch_norm":
        bias = args[BIASED[name]] if len(args) > BIASED[name] else kwargs.get("bias")
        return 0.0 if bias is None else bias.reshape(shape)
    names = ("running_mean", "running_var", "weight", "bias")
    given = dict(zip(names, args[1:5], strict=False)) | {k: v for k, v in kwargs.items() if k in names}
    mean, var, weight, bias = (given.get(k) for k in names)
    eps = args[7] if len(args) > 7 else kwargs.get("eps", 1e-5)
    if mean is None or var is None:
        return 0.0  # batch statistics: not a fixed affine map
    scale = torch.rsqrt(var + eps) * (weight if weight is not None else 1.0)
    shift = (bias if bias is not None else 0.0) - mean * scale
    return shift.reshape(shape)
