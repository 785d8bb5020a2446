"""Block families: one record per re-parameterizable block type, and their registry.

Everything that depends on what a block is (how it folds, how it is described, what its deploy form
becomes in an exported graph, which nodes must stay in float under INT8, how it computes fastest on
a runtime) is looked up here. A new family is one module that builds a :class:`BlockFamily` and
calls :func:`register_family`; third-party packages do the same through the ``xvol.families``
entry point group (each entry point names a module, or a callable returning families, loaded on
first lookup). The built-in families (``xvol_export.fold.families``) register when the
``xvol_export.fold`` package is imported, which Python does before it imports this module.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from xvol_export.fold.arithmetic import assign

ENTRY_POINT_GROUP = "xvol.families"


@dataclass(frozen=True)
class FoldContext:
    """What the walker knows when it folds one block: the layout asked for (``auto``: the family's choice),
    the block's output size at the profiled input (``None`` without a profile), and runtime options
    (``{}``: the family's defaults) for families whose deploy form can compute more than one way."""

    layout: str = "auto"
    out_hw: tuple[int, int] | None = None
    runtime: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeTarget:
    """Where a deploy model will run, for :attr:`BlockFamily.runtime_options`: ``backend`` (torch,
    onnxruntime, openvino, tensorrt), ``device`` (cpu, cuda), the batch, and whether it is dynamic."""

    backend: str = "torch"
    device: str = "cpu"
    batch: int = 1
    dynamic: bool = False


def _one_conv(deploy: nn.Module) -> int:
    return 1


def _no_layout(block: nn.Module, context: FoldContext) -> tuple[str, str]:
    return "", ""


@dataclass(frozen=True, kw_only=True)
class BlockFamily:
    """One re-parameterizable block family.

    ``fold(block, context)`` returns the deploy module of an eval-mode, float64 training block without
    modifying it, computing in float64 (``context.layout`` is a concrete layout, or ``""`` for families
    without layouts). ``deploy_config(deploy)`` is the JSON-plain description of
    a deploy module and ``build_deploy(config)`` rebuilds an empty one from it: a deploy checkpoint's fold
    plan stores the first and applies the second. The rest describe the family to the walker's users.

    The three have defaults, so that a family gives only what is its own. ``deploy_config``: the deploy
    block's ``config()``. ``build_deploy``: the first deploy type called with the config, which must hold
    exactly ``deploy_args`` (when given). ``fold``: the deploy block built from the training block's
    attributes named ``deploy_args``, then :func:`finish_fold` with the tensors of ``fold_weights``.
    """

    name: str
    description: str  # one line, before -> after, for inspect
    training_types: tuple[type[nn.Module], ...]
    deploy_types: tuple[type[nn.Module], ...]
    fold: Callable[[nn.Module, FoldContext], nn.Module] | None = None
    deploy_config: Callable[[nn.Module], dict[str, Any]] | None = None
    build_deploy: Callable[[dict[str, Any]], nn.Module] | None = None
    # the deploy block's constructor arguments, which are also attributes of the training block
    deploy_args: tuple[str, ...] = ()
    # the family's own arithmetic, for the default fold: the deploy block's tensors by state-dict name, in float64
    fold_weights: Callable[[nn.Module, FoldContext], dict[str, torch.Tensor]] | None = None
    describe_training: Callable[[nn.Module], str]
    describe_deploy: Callable[[nn.Module], str]
    layouts: tuple[str, ...] = ()  # a family whose deploy form can be laid out more than one way
    # (layout, reason) for ``auto``, from the block and its output size
    choose_layout: Callable[[nn.Module, FoldContext], tuple[str, str]] = _no_layout
    # MACs of a deploy (or training) block that the profiler's Conv/Linear hooks do not see (e.g. attention)
    extra_macs: Callable[[nn.Module, tuple[int, ...], tuple[int, ...]], int] | None = None
    # how many Conv nodes the deploy block becomes in an exported graph (the export's structural check)
    graph_convs: Callable[[nn.Module], int] = _one_conv
    # names of the nodes of an exported graph that must stay in float under INT8 (exact one-hot shifts, say)
    int8_float_nodes: Callable[[Any], list[str]] | None = None
    # how a deploy block can compute (option -> choices; the same weights and function either way), its fastest
    # options for a target, and ``apply_runtime``: a copy of a deploy block set to compute with the given options
    runtime_choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    runtime_options: Callable[[RuntimeTarget], dict[str, str]] | None = None
    apply_runtime: Callable[[nn.Module, dict[str, str]], nn.Module] | None = None
    # small training blocks that exercise the family's branches: what the conformance kit
    # (``xvol_export.testing.check_family``) and the registry's tests fold
    examples: Callable[[], list[nn.Module]] | None = None
    # deploy checkpoints of a family with layouts: ``relayout(block, layout)`` is ``block`` laid out as ``layout``
    # (an empty one; version-1 files record only their blocks' layouts), ``single_form(deploy_config)`` whether
    # that deploy block is the same under every layout (a deploy checkpoint may then be folded again with any)
    relayout: Callable[[nn.Module, str], nn.Module] | None = None
    single_form: Callable[[dict[str, Any]], bool] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"a family name must be an identifier, got {self.name!r}")
        if not self.training_types or not self.deploy_types:
            raise ValueError(f"family {self.name!r}: give at least one training and one deploy module type")
        if self.fold is None and (self.fold_weights is None or not self.deploy_args):
            raise ValueError(f"family {self.name!r}: give fold, or fold_weights and deploy_args")
        if self.deploy_config is None:
            object.__setattr__(self, "deploy_config", _own_config)
        if self.build_deploy is None:
            object.__setattr__(self, "build_deploy", _builder(self.deploy_types[0], self.deploy_args, self.name))
        if self.fold is None:
            object.__setattr__(self, "fold", _folder(self.build_deploy, self.deploy_args, self.fold_weights))


def finish_fold(block: nn.Module, deploy: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The shared end of a fold: ``deploy`` (a new block) on the device and dtype of ``block``'s weights, in eval
    mode, with ``tensors`` (float64, by state-dict name) cast into it once."""
    weight = next(block.parameters())
    deploy = deploy.to(device=weight.device, dtype=weight.dtype).eval()
    assign(deploy, **tensors)
    return deploy


def checked_config(config: dict[str, Any], names: tuple[str, ...], family: str) -> dict[str, Any]:
    """``config`` if it is a dict with exactly ``names`` as keys, else a ValueError naming the difference."""
    if not isinstance(config, dict):
        raise ValueError(f"a {family} deploy config must be a dict, got {type(config).__name__}")
    missing, unknown = sorted(set(names) - set(config)), sorted(set(config) - set(names))
    if missing or unknown:
        raise ValueError(f"bad {family} deploy config: missing {missing}, unknown {unknown}; it takes {list(names)}")
    return config


def _own_config(deploy: nn.Module) -> dict[str, Any]:
    return deploy.config()


def _builder(deploy_type: type[nn.Module], names: tuple[str, ...], family: str) -> Callable[[dict], nn.Module]:
    def build_deploy(config: dict[str, Any]) -> nn.Module:
        return deploy_type(**(checked_config(config, names, family) if names else config))

    return build_deploy


def _folder(build_deploy: Callable[[dict], nn.Module], names: tuple[str, ...],
            fold_weights: Callable[[nn.Module, FoldContext], dict[str, torch.Tensor]]) -> Callable:
    def fold(block: nn.Module, context: FoldContext | None = None) -> nn.Module:
        deploy = build_deploy({name: getattr(block, name) for name in names})
        return finish_fold(block, deploy, fold_weights(block, context or FoldContext()))

    return fold


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point of the ``xvol.families`` group that failed to load: ``entry_point`` (``name = value``), the
    ``distribution`` that declares it (name and version), and the ``error``."""

    entry_point: str
    distribution: str
    error: str

    def __str__(self) -> str:
        return f"{self.entry_point} (from {self.distribution}): {self.error}"


_FAMILIES: dict[str, BlockFamily] = {}
_BROKEN: list[BrokenPlugin] = []
_entry_points_loaded = False


def register_family(family: BlockFamily, *, replace: bool = False) -> BlockFamily:
    """Register ``family`` (returned, so a module can keep it). A name or module type already taken by
    another family is refused unless ``replace``."""
    if not replace:
        if family.name in _FAMILIES and _FAMILIES[family.name] is not family:
            raise ValueError(f"a block family named {family.name!r} is registered already")
        for other in _FAMILIES.values():
            taken = set(other.training_types + other.deploy_types) & set(family.training_types + family.deploy_types)
            if other.name != family.name and taken:
                names = ", ".join(sorted(t.__name__ for t in taken))
                raise ValueError(f"family {family.name!r}: {names} belong(s) to family {other.name!r} already")
    _FAMILIES[family.name] = family
    return family


def families() -> list[BlockFamily]:
    """Every registered family, built-in ones first, in registration order."""
    _load_entry_points()
    return list(_FAMILIES.values())


def get_family(name: str) -> BlockFamily:
    _load_entry_points()
    try:
        return _FAMILIES[name]
    except KeyError:
        broken = f"; plugins that failed to load: {'; '.join(map(str, _BROKEN))}" if _BROKEN else ""
        raise KeyError(f"no block family named {name!r}; registered: {', '.join(_FAMILIES)}{broken}") from None


def broken_plugins() -> list[BrokenPlugin]:
    """The ``xvol.families`` entry points that failed to load (each warned about once, then skipped)."""
    _load_entry_points()
    return list(_BROKEN)


def training_family(module: nn.Module) -> BlockFamily | None:
    """The family whose training form ``module`` is (the most derived registered type wins), else None."""
    return _lookup(module, lambda f: f.training_types)


def deploy_family(module: nn.Module) -> BlockFamily | None:
    """The family whose deploy form ``module`` is, else None."""
    return _lookup(module, lambda f: f.deploy_types)


def block_types() -> tuple[type[nn.Module], ...]:
    """Every registered training and deploy block type: the modules the walker and tracers treat as one unit."""
    return tuple(t for f in families() for t in (*f.training_types, *f.deploy_types))


def layout_choices() -> tuple[str, ...]:
    """Every registered family's layouts, and ``auto`` (each block's family chooses)."""
    layouts = dict.fromkeys(layout for family in families() for layout in family.layouts)
    return (*layouts, "auto")


def check_layout(layout: str) -> str:
    """``layout`` if it is one of :func:`layout_choices`, else a ValueError naming them: the one check of a
    layout choice."""
    if layout not in layout_choices():
        raise ValueError(f"layout must be one of {layout_choices()}, got {layout!r}")
    return layout


def _lookup(module: nn.Module, types_of: Callable[[BlockFamily], Iterable[type]]) -> BlockFamily | None:
    for cls in type(module).__mro__:  # the most derived registered type first
        for family in families():
            if cls in tuple(types_of(family)):
                return family
    return None


def _load_entry_points() -> None:
    """Import the families that installed packages declare (once). A broken plugin is not fatal for the others:
    it is warned about, named with its distribution and error, kept for :func:`broken_plugins`, and skipped."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
            if callable(loaded) and not isinstance(loaded, type):
                for family in loaded() or ():
                    register_family(family)
        except Exception as err:  # noqa: BLE001 - third-party code: whatever it raises, the other plugins load
            _report_broken(entry, err)


def _report_broken(entry: importlib.metadata.EntryPoint, err: Exception) -> None:
    dist = getattr(entry, "dist", None)
    distribution = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    message = " ".join(str(err).split())
    broken = BrokenPlugin(f"{entry.name} = {entry.value}", distribution, f"{type(err).__name__}: {message}")
    _BROKEN.append(broken)
    warnings.warn(f"the xvol block-family plugin {broken}; its families are not registered", RuntimeWarning,
                  stacklevel=4)
