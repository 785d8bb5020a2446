"""Block families: one record per re-parameterizable block type, and their registry.

Everything that depends on what a block is (how it folds, how it is described, what its deploy form
becomes in an exported graph, which nodes must stay in float under INT8, how it computes fastest on
a runtime) is looked up here. A new family is one module that builds a :class:`BlockFamily` and
calls :func:`register_family`; third-party packages do the same through the ``xvol.families``
entry point group (each entry point names a module, or a callable returning families, loaded on
first lookup).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from torch import nn

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


@dataclass(frozen=True)
class BlockFamily:
    """One re-parameterizable block family.

    ``fold(block, context)`` returns the deploy module of an eval-mode, float64 training block without
    modifying it, computing in float64 (``context.layout`` is a concrete layout, or ``""`` for families
    without layouts). ``deploy_config(deploy)`` is the JSON-plain description of
    a deploy module and ``build_deploy(config)`` rebuilds an empty one from it: a deploy checkpoint's fold
    plan stores the first and applies the second. The rest describe the family to the walker's users.
    """

    name: str
    description: str  # one line, before -> after, for inspect
    training_types: tuple[type[nn.Module], ...]
    deploy_types: tuple[type[nn.Module], ...]
    fold: Callable[[nn.Module, FoldContext], nn.Module]
    deploy_config: Callable[[nn.Module], dict[str, Any]]
    build_deploy: Callable[[dict[str, Any]], nn.Module]
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


_FAMILIES: dict[str, BlockFamily] = {}
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
        raise KeyError(f"no block family named {name!r}; registered: {', '.join(_FAMILIES)}") from None


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


def _lookup(module: nn.Module, types_of: Callable[[BlockFamily], Iterable[type]]) -> BlockFamily | None:
    for cls in type(module).__mro__:  # the most derived registered type first
        for family in families():
            if cls in tuple(types_of(family)):
                return family
    return None


def _load_entry_points() -> None:
    """Import the families that installed packages declare (once). A broken plugin is named, not fatal
    for the others: its error is raised when the family is looked up by name."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    import xvol_export.fold.families  # noqa: F401  (the built-in families register on import)

    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry.load()
        if callable(loaded) and not isinstance(loaded, type):
            for family in loaded() or ():
                register_family(family)
