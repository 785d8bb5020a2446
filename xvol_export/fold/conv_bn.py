"""Fusing BatchNorms into the neighbouring conv or linear, found by tracing the model's wiring with torch.fx.

An eval-mode BatchNorm is a per-channel affine map ``a * x + c``, so it folds exactly into the layer that
produces its input (``conv_bn``, ``convtranspose_bn``, ``linear_bn``) or, where padding does not get in the way,
into the one that consumes its output (``bn_conv``, ``bn_linear``). The fold is of the eval-mode function.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils import parametrize

from xvol_export.fold.arithmetic import bn_affine64, fuse_bn, fuse_bn_before, fuse_bn_transposed
from xvol_export.fold.family import block_types
from xvol_export.fold.submodule import replace_submodule

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_LAYERS = _CONVS + _TRANSPOSED + (nn.Linear,)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# the BatchNorm whose channel axis is the layer's (SyncBatchNorm takes any rank, so it fits every layer)
_NORM_FOR = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d,
             nn.ConvTranspose1d: nn.BatchNorm1d, nn.ConvTranspose2d: nn.BatchNorm2d,
             nn.ConvTranspose3d: nn.BatchNorm3d, nn.Linear: nn.BatchNorm1d}
_REASON_LIMIT = 300


class _Tracer(torch.fx.Tracer):
    """Traces the model's own wiring: ``leaves`` stay opaque, and so does every conv, linear and BatchNorm
    (subclasses from other packages included, so that they show up as one call)."""

    def __init__(self, leaves: tuple[type, ...]):
        super().__init__()
        self.leaves = leaves + _LAYERS + (_BatchNorm,)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def fuse_norms(model: nn.Module, leaf_types: tuple[type, ...] = ()) -> tuple[nn.Module, list[dict], list[dict]]:
    """Fold, in place, every BatchNorm that can be folded exactly into its neighbouring conv or linear.

    ``model`` is traced with torch.fx; modules of ``leaf_types`` and of every registered block family stay
    opaque. Each absorbing layer is replaced by a new one of the same type and geometry with a bias, each folded
    norm by ``nn.Identity()``; the fold computes in float64 and casts once to the layer's dtype. Returns
    ``(model, fused, left)``: ``fused`` lists ``{"kind", "layer", "norm"}`` (qualified names, ``kind`` one of
    ``conv_bn``, ``convtranspose_bn``, ``linear_bn``, ``bn_conv``, ``bn_linear``), ``left`` every BatchNorm kept
    as ``{"name", "reason"}`` (one entry named ``""`` when the model cannot be traced: then nothing is fused).

    ``linear_bn`` and ``bn_linear`` assume the 2-D ``(batch, features)`` layout, the only one in which a
    BatchNorm1d normalizes a linear's features (the tracer sees no shapes to check it).
    """
    norms = {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
    if not norms:
        return model, [], []
    leaves = tuple(leaf_types) + block_types()
    if leaves and isinstance(model, leaves):
        return model, [], [{"name": n, "reason": _opaque_reason("", model)} for n in norms]
    try:
        graph = _Tracer(leaves).trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure means the wiring cannot be seen
        message = " ".join(str(err).split())[:_REASON_LIMIT]
        return model, [], [{"name": "", "reason": f"torch.fx cannot trace the model ({type(err).__name__}: "
                                                  f"{message}); no BatchNorm was fused"}]

    modules = dict(model.named_modules())
    wiring = _Wiring(modules, Counter(n.target for n in graph.nodes if n.op == "call_module"),
                     [n.target for n in graph.nodes if n.op == "get_attr"])
    nodes = {n.target: n for n in graph.nodes if n.op == "call_module" and n.target in norms}
    groups: list[list[tuple[str, str, str]]] = []
    reasons: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in norms or node.target in reasons:
            continue
        found = _pairing(node, wiring)
        if isinstance(found, tuple):
            groups.append([found])
        else:
            reasons[node.target] = found
    paired = {pair[2] for group in groups for pair in group}
    for group in groups:  # BatchNorms next to a paired one compose with it into the same layer
        group += _chained(group[0], nodes, wiring, paired)
        for _, _, norm in group[1:]:
            paired.add(norm)
            reasons.pop(norm, None)

    plan = [pair for group in _apply(model, groups, reasons, leaves) for pair in group]
    fused = [{"kind": kind, "layer": layer, "norm": norm} for kind, layer, norm in plan]
    done = {norm for _, _, norm in plan}
    left = []
    for name in norms:
        if name in done:
            continue
        reason = reasons.get(name)
        if reason is None:
            opaque = _opaque_ancestor(modules, name, leaves)
            reason = (_opaque_reason(opaque, modules[opaque]) if opaque is not None
                      else "forward never calls it as a module (unused, or called through a functional form)")
        left.append({"name": name, "reason": reason})
    return model, fused, left


def fused_layer(layer: nn.Module) -> nn.Module:
    """An empty (uninitialized) layer of ``layer``'s type, geometry, device and dtype, with a bias: what replaces
    a conv, transposed conv or linear that absorbed a BatchNorm (on a meta-device skeleton, say)."""
    if not isinstance(layer, _LAYERS):
        raise ValueError(f"only convs, transposed convs and linears absorb a BatchNorm, not a {type(layer).__name__}")
    weight = layer.weight
    if isinstance(weight, UninitializedParameter):
        raise ValueError(f"the {type(layer).__name__} is an uninitialized lazy layer")
    # the copy keeps the class and its attributes; the memo gives it fresh tensors instead of copying the data
    memo: dict[int, object] = {}
    for tensor in itertools.chain(layer._parameters.values(), layer._buffers.values()):
        if tensor is not None:
            empty = torch.empty_like(tensor)
            memo[id(tensor)] = nn.Parameter(empty, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
    new = copy.deepcopy(layer, memo)
    if new.bias is None:
        size = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        new.bias = nn.Parameter(torch.empty(size, device=weight.device, dtype=weight.dtype), weight.requires_grad)
    return new


# ------------------------------------------------------------------------------------------------ pairing


@dataclass
class _Wiring:
    """What the trace shows: the modules by name, how often forward calls each, which tensors it reads."""

    modules: dict[str, nn.Module]
    calls: Counter
    reads: list[str]

    def read_directly(self, name: str) -> str | None:
        """A tensor of module ``name`` that forward reads itself (not through calling the module), or None."""
        return next((t for t in self.reads if t.startswith(name + ".")), None)


def _pairing(node: torch.fx.Node, wiring: _Wiring) -> tuple[str, str, str] | str:
    """``(kind, layer, norm)`` for the BatchNorm called at ``node``, or the reason it stays."""
    name = node.target
    norm = wiring.modules[name]
    if wiring.calls[name] > 1:
        return f"it is called {wiring.calls[name]} times, so no one layer can absorb it"
    problem = _norm_problem(norm)
    if problem:
        return problem
    if wiring.read_directly(name):
        return f"forward reads its tensor '{wiring.read_directly(name)}' itself, which the fold would remove"
    after = _fold_into_producer(node, norm, wiring)
    if isinstance(after, tuple):
        return (*after, name)
    before = _fold_into_consumer(node, norm, wiring)
    if isinstance(before, tuple):
        return (*before, name)
    return f"{after}; {before}"


def _fold_into_producer(node: torch.fx.Node, norm: _BatchNorm, wiring: _Wiring) -> tuple[str, str] | str:
    modules, calls = wiring.modules, wiring.calls
    src = node.args[0] if node.args else node.kwargs.get("input")
    if not isinstance(src, torch.fx.Node) or src.op != "call_module" or not isinstance(modules[src.target],
                                                                                       _LAYERS):
        return f"it follows {_describe(src, modules)}, not a conv or linear"
    layer_name, layer = src.target, modules[src.target]
    if calls[layer_name] > 1:
        return f"its producer '{layer_name}' is called {calls[layer_name]} times"
    if len(src.users) > 1:
        return f"its producer '{layer_name}' feeds {len(src.users)} consumers, which all need the unnormalized output"
    problem = _layer_problem(layer, wiring.read_directly(layer_name)) or _mismatch(layer, norm, "out")
    if problem:
        return f"its producer '{layer_name}' {problem}"
    kind = "convtranspose_bn" if isinstance(layer, _TRANSPOSED) else "linear_bn" if isinstance(
        layer, nn.Linear) else "conv_bn"
    return kind, layer_name


def _fold_into_consumer(node: torch.fx.Node, norm: _BatchNorm, wiring: _Wiring) -> tuple[str, str] | str:
    modules, calls = wiring.modules, wiring.calls
    users = list(node.users)
    if len(users) != 1:
        return f"its output feeds {len(users)} consumers, so it cannot fold into the next layer"
    user = users[0]
    if user.op != "call_module" or not isinstance(modules[user.target], _CONVS + (nn.Linear,)):
        what = _describe(user, modules)
        if user.op == "call_module" and isinstance(modules[user.target], _TRANSPOSED):
            return (f"it feeds {what}, into which a BatchNorm before it does not fold exactly (its border outputs "
                    "sum fewer taps of the shift)")
        return f"it feeds {what}, not a conv or linear"
    layer_name, layer = user.target, modules[user.target]
    if calls[layer_name] > 1:
        return f"its consumer '{layer_name}' is called {calls[layer_name]} times"
    if user.args[:1] != (node,) or len(user.args) + len(user.kwargs) != 1:
        return f"its consumer '{layer_name}' takes it with other arguments"
    problem = _layer_problem(layer, wiring.read_directly(layer_name)) or _mismatch(layer, norm, "in")
    if problem:
        return f"its consumer '{layer_name}' {problem}"
    if isinstance(layer, nn.Linear):
        return "bn_linear", layer_name
    if layer.padding_mode == "zeros" and _pads(layer):
        return (f"its consumer '{layer_name}' zero-pads (padding={layer.padding}): the fold would give the padded "
                "border the BatchNorm's shift; only padding 0, or a padding_mode that pads with input values "
                "(reflect, replicate, circular), folds exactly")
    return "bn_conv", layer_name


def _norm_problem(norm: _BatchNorm) -> str | None:
    base = _torch_base(norm, _NORMS)
    if base is None:
        return f"a {type(norm).__name__} is not a BatchNorm of a known kind"
    if norm.running_mean is None or norm.running_var is None:
        return "track_running_stats=False: it normalizes with each batch's statistics, not a fixed affine map"
    if isinstance(norm.running_mean, nn.parameter.UninitializedBuffer):
        return "it is an uninitialized lazy BatchNorm"
    if type(norm).forward is not base.forward and not _computes_plain_batchnorm(norm):
        return f"its class {type(norm).__name__} overrides forward, and computes more than a BatchNorm"
    return None


def _computes_plain_batchnorm(norm: _BatchNorm) -> bool:
    """Whether a BatchNorm subclass with its own forward (timm's BatchNormAct2d, say) computes, in eval mode,
    exactly eval-mode BatchNorm (its activation and dropout are identities), holding no tensors of its own."""
    if {name for name, _ in norm.named_parameters()} - {"weight", "bias"}:
        return False
    probe = copy.deepcopy(norm).eval().double()
    shape = {1: (3, norm.num_features), 2: (3, norm.num_features, 3, 2), 3: (3, norm.num_features, 2, 2, 2)}
    base = next((b for b in _NORMS if isinstance(norm, b)), nn.BatchNorm2d)
    dims = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}.get(base, 2)
    x = torch.randn(shape[dims], dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    try:
        with torch.no_grad():
            got = probe(x)
            expected = F.batch_norm(x, probe.running_mean, probe.running_var, probe.weight, probe.bias, False, 0.0,
                                    probe.eps)
    except Exception:  # noqa: BLE001 - a forward that cannot run alone is not a plain BatchNorm
        return False
    return isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.allclose(got, expected, 1e-12, 1e-12)


def _layer_problem(layer: nn.Module, read: str | None) -> str | None:
    """Why ``layer`` cannot absorb a BatchNorm (its output is not plainly ``W x + b``, or forward reads its
    tensor ``read`` directly), or None."""
    if read:
        return f"has its tensor '{read}' read by forward itself, which must not see the folded weights"
    base = _torch_base(layer, _LAYERS)
    for method in ("forward", "_conv_forward"):
        if hasattr(base, method) and getattr(type(layer), method) is not getattr(base, method):
            return f"is a {type(layer).__name__}, which overrides {method}"
    if parametrize.is_parametrized(layer) or not isinstance(layer._parameters.get("weight"), nn.Parameter):
        return "computes its weight (a parametrization, weight_norm or spectral_norm)"
    if isinstance(layer.weight, UninitializedParameter):
        return "is an uninitialized lazy layer"
    return None


def _mismatch(layer: nn.Module, norm: _BatchNorm, side: str) -> str | None:
    """Why ``norm``'s channels are not the ``side`` (``in`` or ``out``) channels of ``layer``, or None."""
    base = _torch_base(layer, _LAYERS)
    if not isinstance(norm, (_NORM_FOR[base], nn.SyncBatchNorm)):
        return f"is a {base.__name__}, whose channel axis a {type(norm).__name__} does not normalize"
    if isinstance(layer, nn.Linear):
        channels = layer.in_features if side == "in" else layer.out_features
    else:
        channels = layer.in_channels if side == "in" else layer.out_channels
    if channels != norm.num_features:
        return f"has {channels} {side}put channels, the BatchNorm {norm.num_features}"
    return None


def _pads(conv: nn.Module) -> bool:
    if conv.padding == "valid":
        return False
    if conv.padding == "same":
        return any(d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    return any(conv.padding)


def _torch_base(module: nn.Module, bases: tuple[type, ...]) -> type | None:
    """The most derived of ``bases`` that ``module`` is an instance of."""
    for cls in type(module).__mro__:
        if cls in bases:
            return cls
    return None


def _describe(node: object, modules: dict[str, nn.Module]) -> str:
    if not isinstance(node, torch.fx.Node):
        return f"a constant ({node!r})"
    if node.op == "placeholder":
        return f"the model's input '{node.target}'"
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} '{node.target}'"
    if node.op == "call_function":
        return f"the function {getattr(node.target, '__name__', node.target)}"
    if node.op == "call_method":
        return f"the method .{node.target}()"
    if node.op == "get_attr":
        return f"the tensor '{node.target}'"
    return f"the model's {node.op}"


def _opaque_ancestor(modules: dict[str, nn.Module], name: str, leaves: tuple[type, ...]) -> str | None:
    """The outermost module above ``name`` that the tracer keeps opaque, or None."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if leaves and isinstance(modules.get(prefix), leaves):
            return prefix
    return None


def _opaque_reason(name: str, module: nn.Module) -> str:
    return (f"inside {type(module).__name__} '{name or '(the model)'}', which is folded as one block, not "
            "traced through")


# ---------------------------------------------------------------------------------------------- folding


def _apply(model: nn.Module, groups: list[list[tuple[str, str, str]]], reasons: dict[str, str],
           leaves: tuple[type, ...]) -> list[list[tuple[str, str, str]]]:
    """Fold the pairs of each group (a layer and the BatchNorms that compose into it, in folding order) into
    ``model``; return the groups that stay folded. A forward that reads a plain attribute of a folded norm or
    layer (``self.bn.num_features``, say) no longer traces: then each group is tried alone and undone (its norms'
    reason put in ``reasons``) where it breaks the trace."""
    undo = [_fold_pair(model, pair) for group in groups for pair in group]
    if _traces(model, leaves) is None:
        return groups
    for restore in reversed(undo):
        restore()
    kept = []
    for group in groups:
        restores = [_fold_pair(model, pair) for pair in group]
        error = _traces(model, leaves)
        if error is None:
            kept.append(group)
            continue
        for restore in reversed(restores):
            restore()
        for _, layer, norm in group:
            reasons[norm] = (f"folding it into '{layer}' breaks forward, which reads attributes of one of them "
                             f"that the fold replaces ({error})")
    return kept


def _chained(pair: tuple[str, str, str], nodes: dict[str, torch.fx.Node], wiring: _Wiring,
             paired: set[str]) -> list[tuple[str, str, str]]:
    """The BatchNorms that compose with ``pair``'s norm on the side away from its layer (``conv -> bn -> bn2``,
    ``bn2 -> bn -> conv``): each called once, feeding only the next, of the layer's channels; the pairs that fold
    them into the same layer, in folding order (outward from the layer)."""
    kind, layer_name, norm_name = pair
    layer, side = wiring.modules[layer_name], "in" if kind in ("bn_conv", "bn_linear") else "out"
    chain, node = [], nodes[norm_name]
    while True:
        if side == "out":
            nxt = next(iter(node.users)) if len(node.users) == 1 else None
            ok = nxt is not None and nxt.args[:1] == (node,)
        else:
            nxt = node.args[0] if node.args else None
            ok = isinstance(nxt, torch.fx.Node) and len(nxt.users) == 1
        name = nxt.target if ok and nxt.op == "call_module" else None
        if name not in nodes or name in paired or wiring.calls[name] > 1:
            return chain
        norm = wiring.modules[name]
        if _norm_problem(norm) or wiring.read_directly(name) or _mismatch(layer, norm, side):
            return chain
        chain.append((kind, layer_name, name))
        node = nxt


def _fold_pair(model: nn.Module, pair: tuple[str, str, str]):
    """Fold one ``(kind, layer, norm)`` pair into ``model``; return the function that undoes it."""
    kind, layer_name, norm_name = pair
    layer, norm = model.get_submodule(layer_name), model.get_submodule(norm_name)
    replace_submodule(model, layer_name, fold_norm(kind, layer, norm))
    replace_submodule(model, norm_name, nn.Identity().train(norm.training))

    def restore() -> None:
        replace_submodule(model, norm_name, norm)
        replace_submodule(model, layer_name, layer)

    return restore


def _traces(model: nn.Module, leaves: tuple[type, ...]) -> str | None:
    """None if ``model`` traces, else the error."""
    try:
        _Tracer(leaves).trace(model)
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {' '.join(str(err).split())[:_REASON_LIMIT]}"
    return None


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv with bias that computes ``bn(conv(x))`` in eval mode (computed in float64)."""
    return fold_norm("conv_bn", conv, bn).eval()


def fold_norm(kind: str, layer: nn.Module, norm: _BatchNorm) -> nn.Module:
    """The layer of ``kind`` computing ``norm(layer(x))`` or ``layer(norm(x))`` (eval mode), computed in float64."""
    scale, shift = bn_affine64(norm)
    kernel = layer.weight.detach().double()
    bias = None if layer.bias is None else layer.bias.detach().double()
    if kind in ("conv_bn", "linear_bn"):
        kernel, bias = fuse_bn(kernel, bias, scale, shift)
    elif kind == "convtranspose_bn":
        kernel, bias = fuse_bn_transposed(kernel, bias, scale, shift, layer.groups)
    else:
        kernel, bias = fuse_bn_before(kernel, bias, scale, shift, getattr(layer, "groups", 1))
    new = fused_layer(layer)
    with torch.no_grad():
        new.weight.copy_(kernel.to(new.weight.dtype))
        new.bias.copy_(bias.to(new.bias.dtype))
    return new
