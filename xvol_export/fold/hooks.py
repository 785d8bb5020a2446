"""Folding blocks xvol has no family for through their own re-parameterization method.

timm, RepVGG, MobileOne and YOLO code bases give their blocks a ``reparameterize()``, ``switch_to_deploy()`` or
``fuse()`` (preference order: :data:`xvol_export.fold.plan.HOOKS`). Some rebuild the block in place (timm's
MobileOneBlock swaps its branches for a ``reparam_conv`` and returns None), some return the deploy module, some
return the equivalent ``(kernel, bias)``. A fold plan records which hook ran, and :func:`replay_hook` runs it
again on a meta-device skeleton to rebuild the deploy architecture.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from typing import Any

import torch
from torch import nn

from xvol_export.fold.family import deploy_family, training_family
from xvol_export.fold.plan import HOOKS

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def hook_of(module: nn.Module) -> str | None:
    """The re-parameterization hook ``module`` offers (the first of ``HOOKS`` that its class defines as a method
    callable without arguments), or None; always None for xvol's family blocks and for torch's own layers."""
    cls = type(module)
    if cls.__module__ == "torch" or cls.__module__.startswith("torch."):
        return None
    if training_family(module) is not None or deploy_family(module) is not None:
        return None
    for name in HOOKS:
        method = getattr(cls, name, None)
        if method is None or method is getattr(nn.Module, name, None) or not callable(method):
            continue
        bound = getattr(module, name, None)  # an instance attribute (a flag, say) may hide the method
        if callable(bound) and _takes_no_arguments(bound):
            return name
    return None


def fold_with_hook(block: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """Run ``block``'s own hook on an eval-mode deep copy (``block`` is never modified) and return
    ``(deploy, {"hook": name, "mode": "in_place" | "returned"})``.

    ``in_place``: the hook rebuilt the copy (it returned None or the copy), which is the deploy module.
    ``returned``: it returned a module, which is the deploy module, or ``(kernel, bias)``, which a new conv of the
    geometry of the block's widest-kernel conv holds; such a block must compute just the sum of its branches (no
    activation after them), which the caller's equivalence check confirms. The hook computes in the block's own
    dtype: pass a float64 copy for an exact fold. :class:`ValueError` for a block without a hook, or a hook
    that returns anything else.
    """
    hook = hook_of(block)
    if hook is None:
        raise ValueError(f"{type(block).__name__} has no re-parameterization hook of its own "
                         f"({', '.join(f'{h}()' for h in HOOKS)}), or is a block xvol folds itself")
    deploy, mode = _run(copy.deepcopy(block).eval(), hook)
    return deploy, {"hook": hook, "mode": mode}


def replay_hook(block: nn.Module, hook: str) -> nn.Module:
    """The deploy module of the skeleton ``block`` (tensors on the meta device, normally): ``hook`` run on a copy
    as :func:`fold_with_hook` ran it. For a meta skeleton the hook runs with meta as the default device, so the
    layers it creates (``nn.Conv2d(...)`` then ``.weight.data = kernel``, as timm and mmpretrain do) are meta too.
    :class:`ValueError` naming the block class and hook where the hook cannot run there."""
    cls = type(block).__name__
    if hook not in HOOKS:
        raise ValueError(f"{hook!r} is not a re-parameterization hook; known: {', '.join(HOOKS)}")
    if not callable(getattr(type(block), hook, None)):
        raise ValueError(f"{cls} has no {hook}() to replay")
    tensors = [*block.parameters(), *block.buffers()]
    on_meta = bool(tensors) and all(t.is_meta for t in tensors)
    try:
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            deploy, _ = _run(copy.deepcopy(block).eval(), hook)
    except Exception as err:  # noqa: BLE001 - third-party code: anything it raises means it cannot replay here
        where = "on the meta device" if on_meta else "on this skeleton"
        raise ValueError(f"{cls}.{hook}() cannot run {where} ({type(err).__name__}: {err}); build the deploy "
                         "skeleton on a real device instead") from err
    return deploy.to("meta") if on_meta else deploy


def _run(work: nn.Module, hook: str) -> tuple[nn.Module, str]:
    """Call ``hook`` on ``work`` (a copy the caller owns) and make its result a deploy module, with its mode.

    Hooks build their deploy layers with ``nn.Conv2d(...)`` (timm's ``fuse()``, say), in the default dtype: the
    hook runs with the block's own floating dtype as the default, so a float64 fold stays float64 throughout."""
    dtype = next((t.dtype for t in [*work.parameters(), *work.buffers()] if t.is_floating_point()), None)
    previous = torch.get_default_dtype()
    try:
        if dtype is not None and dtype != previous:
            torch.set_default_dtype(dtype)
        deploy, mode = _call(work, hook)
    finally:
        torch.set_default_dtype(previous)
    if dtype is not None:  # a hook that fixed its own dtype: the block's dtype, as every other deploy block
        deploy = deploy.to(dtype)
    return deploy, mode


def _call(work: nn.Module, hook: str) -> tuple[nn.Module, str]:
    before = _structure(work)
    with torch.no_grad():
        result = getattr(work, hook)()
        if result is None or result is work:
            return work.eval(), "in_place"
        if isinstance(result, nn.Module):
            return result.eval(), "returned"
        pair = _kernel_bias(result)
        if pair is None:
            raise ValueError(f"{type(work).__name__}.{hook}() returned {_describe(result)}: neither None (a block "
                             "rebuilt in place), a module, nor a (kernel, bias) pair")
        if _structure(work) != before:  # it rebuilt the block and returned its kernel as well: the block wins
            return work.eval(), "in_place"
        return _conv_holding(work, hook, *pair).eval(), "returned"


def _kernel_bias(result: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        return None
    kernel, bias = (_as_tensor(v) for v in result)
    if kernel is None or (bias is None and result[1] is not None):
        return None
    return kernel, bias


def _as_tensor(value: Any) -> torch.Tensor | None:
    """A tensor, or an array (some code bases return numpy), as a tensor; anything else None."""
    if isinstance(value, torch.Tensor):
        return value
    if value is not None and hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        return torch.as_tensor(value)
    return None


def _conv_holding(block: nn.Module, hook: str, kernel: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A conv with the geometry of ``block``'s widest-kernel conv, holding ``kernel`` and ``bias``."""
    name = type(block).__name__
    convs = [m for m in block.modules() if isinstance(m, _CONVS)]
    if not convs:
        raise ValueError(f"{name}.{hook}() returned a (kernel, bias) pair, but the block holds no conv to take "
                         "the deploy conv's geometry from")
    widest = max(convs, key=lambda c: math.prod(c.kernel_size))  # the first of the widest
    if tuple(kernel.shape) != tuple(widest.weight.shape):
        raise ValueError(f"{name}.{hook}() returned a {tuple(kernel.shape)} kernel, but the block's widest conv "
                         f"holds {tuple(widest.weight.shape)}")
    if bias is not None and tuple(bias.shape) != (widest.out_channels,):
        raise ValueError(f"{name}.{hook}() returned a bias of shape {tuple(bias.shape)}, not ({widest.out_channels},)")
    weight = widest.weight
    base = next(cls for cls in type(widest).__mro__ if cls in _CONVS)
    conv = base(widest.in_channels, widest.out_channels, widest.kernel_size, widest.stride, widest.padding,
                widest.dilation, widest.groups, bias=True, padding_mode=widest.padding_mode,
                device=weight.device, dtype=weight.dtype)
    if not weight.is_meta:
        conv.weight.copy_(kernel.to(weight.dtype))
        conv.bias.copy_(bias.to(weight.dtype) if bias is not None else torch.zeros_like(conv.bias))
    return conv


def _structure(module: nn.Module) -> tuple:
    """The module tree and tensor names, to tell whether a hook rebuilt the block."""
    return (tuple((n, type(m)) for n, m in module.named_modules()), tuple(n for n, _ in module.named_parameters()),
            tuple(n for n, _ in module.named_buffers()))


def _takes_no_arguments(method: Any) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: try calling it
        return True
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"
