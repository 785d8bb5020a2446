"""RepVGG blocks (Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021).

Training form: ``ReLU(SE(BN(conv_kxk(x)) + BN(conv_1x1(x)) [+ BN(x)]))``; deploy form: ``ReLU(SE(conv_kxk(x)))``
with bias. Module and parameter names are those of the official code (github DingXiaoH/RepVGG, ``repvgg.py`` and
``se_block.py``), so its training and converted checkpoints load with ``strict=True``.

Where this differs from the official code, it does so on purpose: any odd kernel size (the official asserts 3,
padding 1); ``dilation`` and ``padding_mode`` apply to every branch (the official training form ignores both,
so its fold changes the function when they are not the defaults); the SE block pools over the whole map (the
official pools a ``W x W`` window, which is the same only on square inputs). ``RepVGGBlock(..., deploy=True)``
returns a :class:`RepVGGBlockDeploy`, a separate type, so the two forms can be told apart.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RepVGGBlock", "RepVGGBlockDeploy", "RepVGGSEBlock", "check_geometry", "conv_bn", "resolve_identity"]

# The constructor arguments of the deploy form, in order; a training block's ``config()`` has them too.
DEPLOY_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
               "padding_mode", "use_se")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class RepVGGSEBlock(nn.Module):
    """Squeeze-and-excitation with the official RepVGG names: ``down`` and ``up`` (1x1 convs with bias)."""

    def __init__(self, input_channels: int, internal_neurons: int):
        super().__init__()
        self.down = nn.Conv2d(input_channels, internal_neurons, kernel_size=1, stride=1, bias=True)
        self.up = nn.Conv2d(internal_neurons, input_channels, kernel_size=1, stride=1, bias=True)
        self.input_channels = input_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.up(F.relu(self.down(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, dilation: int = 1,
            groups: int = 1, padding_mode: str = "zeros") -> nn.Sequential:
    """One branch: ``conv`` (no bias) then ``bn``."""
    branch = nn.Sequential()
    branch.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                        bias=False, padding_mode=padding_mode))
    branch.add_module("bn", nn.BatchNorm2d(out_channels))
    return branch


def check_geometry(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, dilation: int,
                   groups: int, centre_branch: bool = True) -> None:
    """ValueError unless a block of this geometry can be built and re-parameterized.

    ``centre_branch``: the block has a 1x1 (or identity) branch that the fold adds to the kxk kernel's centre
    tap, so the kernel must be odd and ``padding`` at least ``dilation * (kernel_size // 2)`` (the 1x1 branch is
    padded by the difference, which keeps it aligned with that tap).
    """
    values = {"in_channels": in_channels, "out_channels": out_channels, "kernel_size": kernel_size,
              "stride": stride, "dilation": dilation, "groups": groups, "padding": padding}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < (0 if name == "padding" else 1):
            raise ValueError(f"{name} must be at least {0 if name == 'padding' else 1}, got {value}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
    if centre_branch:
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the 1x1 and identity branches fold into its centre tap), "
                             f"got {kernel_size}")
        if padding < dilation * (kernel_size // 2):
            raise ValueError(f"padding={padding} is less than dilation * (kernel_size // 2) = "
                             f"{dilation * (kernel_size // 2)}: the 1x1 branch could not be aligned with the "
                             f"kernel's centre tap")


def resolve_identity(use_identity: bool | None, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                     padding: int, dilation: int) -> bool:
    """Whether a block gets its BatchNorm identity branch.

    ``None`` follows the official rule (same channels and stride 1); ``False`` omits it; ``True`` insists. An
    identity that cannot be (channels differ, a stride, or a padding that changes the size) is a ValueError
    naming why.
    """
    if use_identity is not None and not isinstance(use_identity, bool):
        raise ValueError(f"use_identity must be None, True or False, got {use_identity!r}")
    if use_identity is False:
        return False
    reasons = []
    if in_channels != out_channels:
        reasons.append(f"in_channels={in_channels} differs from out_channels={out_channels}")
    if stride != 1:
        reasons.append(f"stride={stride} is not 1")
    if use_identity is None and reasons:
        return False
    if padding != dilation * (kernel_size // 2):
        reasons.append(f"padding={padding} changes the spatial size (it must be dilation * (kernel_size // 2) = "
                       f"{dilation * (kernel_size // 2)}); pass use_identity=False to build the block without it")
    if reasons:
        raise ValueError("an identity branch needs the output to have the input's shape, but " + "; ".join(reasons))
    return True


def deploy_requested(cls: type, flag: str, args: tuple, kwargs: dict) -> inspect.BoundArguments | None:
    """The bound constructor arguments when ``flag`` asks for the deploy form, else None (bad arguments: None,
    so that ``__init__`` reports them)."""
    try:
        bound = inspect.signature(cls.__init__).bind_partial(None, *args, **kwargs)
    except TypeError:
        return None
    return bound if bound.arguments.get(flag) else None


class RepVGGBlock(nn.Module):
    """Training-form RepVGG block: a kxk conv + BN, a 1x1 conv + BN and (same shape only) a BN identity, summed,
    then SE (optional) and ReLU. ``deploy=True`` returns a :class:`RepVGGBlockDeploy` instead.

    ``use_identity`` (keyword only, not in the official code): ``None`` for the official rule, ``False`` to omit
    the identity branch, ``True`` to require it (ValueError where the shapes forbid it).
    """

    def __new__(cls, *args, **kwargs):
        bound = deploy_requested(cls, "deploy", args, kwargs)
        if bound is not None:
            kept = {k: v for k, v in bound.arguments.items() if k in DEPLOY_ARGS}
            return RepVGGBlockDeploy(**kept)
        return super().__new__(cls)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, padding_mode: str = "zeros", deploy: bool = False,
                 use_se: bool = False, *, use_identity: bool | None = None):
        super().__init__()
        check_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        identity = resolve_identity(use_identity, in_channels, out_channels, kernel_size, stride, padding, dilation)
        _store(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode, use_se)
        self.deploy = False
        # Registration order is the official one, so state-dict keys come in the official order.
        self.nonlinearity = nn.ReLU()
        self.se = RepVGGSEBlock(out_channels, out_channels // 16) if use_se else nn.Identity()
        self.rbr_identity = nn.BatchNorm2d(in_channels) if identity else None
        self.rbr_dense = conv_bn(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                 padding_mode)
        self.rbr_1x1 = conv_bn(in_channels, out_channels, 1, stride, padding - dilation * (kernel_size // 2), 1,
                               groups, padding_mode)

    def config(self) -> dict:
        """The constructor arguments (``use_identity`` resolved): ``RepVGGBlock(**m.config())`` rebuilds it."""
        return {**{name: getattr(self, name) for name in DEPLOY_ARGS}, "use_identity": self.rbr_identity is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return self.nonlinearity(self.se(y))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


class RepVGGBlockDeploy(nn.Module):
    """Deploy-form RepVGG block: ``rbr_reparam`` (one kxk conv with bias), then SE (optional) and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, padding_mode: str = "zeros", use_se: bool = False):
        super().__init__()
        check_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, centre_branch=False)
        _store(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode, use_se)
        self.deploy = True
        self.nonlinearity = nn.ReLU()
        self.se = RepVGGSEBlock(out_channels, out_channels // 16) if use_se else nn.Identity()
        self.rbr_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                     bias=True, padding_mode=padding_mode)

    def config(self) -> dict:
        """The constructor arguments: ``RepVGGBlockDeploy(**m.config())`` rebuilds it."""
        return {name: getattr(self, name) for name in DEPLOY_ARGS}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinearity(self.se(self.rbr_reparam(x)))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


def _store(block: nn.Module, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
           dilation: int, groups: int, padding_mode: str, use_se: bool) -> None:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
    if not isinstance(use_se, bool):
        raise ValueError(f"use_se must be True or False, got {use_se!r}")
    block.in_channels, block.out_channels, block.kernel_size = in_channels, out_channels, kernel_size
    block.stride, block.padding, block.dilation, block.groups = stride, padding, dilation, groups
    block.padding_mode, block.use_se = padding_mode, use_se
