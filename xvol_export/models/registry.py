"""A registry of architectures: name -> factory, with the resolved constructor arguments kept.

A model built by :func:`create_model` carries ``xvol_arch = {"name": ..., "config": {...}}``, every
factory argument made explicit, so a checkpoint can rebuild it without guessing defaults.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from torch import nn

from xvol_export.errors import XvolError

# Arguments that choose the form, not the architecture: never stored in ``config``.
FORM_ARGS = ("deploy", "xvol_layout")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]

    def resolve_config(self, kwargs: dict) -> dict:
        """All factory arguments (defaults filled in), without the form arguments."""
        signature = inspect.signature(self.factory)
        try:
            bound = signature.bind(**kwargs)
        except TypeError as err:
            known = ", ".join(p for p in signature.parameters if p not in FORM_ARGS)
            raise XvolError(f"Bad arguments for architecture '{self.name}': {err}. It takes: {known}.") from None
        bound.apply_defaults()
        return {k: _plain(v) for k, v in bound.arguments.items() if k not in FORM_ARGS}


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``factory`` under its function name."""
    _REGISTRY[factory.__name__] = ModelEntry(factory.__name__, factory)
    return factory


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise XvolError(
            f"Unknown architecture '{name}'. Known architectures: {', '.join(list_models())}."
        ) from None


def create_model(name: str, deploy: bool = False, xvol_layout: str = "split", **config) -> nn.Module:
    """Build a registered architecture; ``deploy=True`` builds its folded form directly."""
    entry = get_model_entry(name)
    resolved = entry.resolve_config(config)
    model = entry.factory(**resolved, deploy=deploy, xvol_layout=xvol_layout)
    model.xvol_arch = {"name": name, "config": resolved}
    return model


def _plain(value):
    """Tuples become lists so that configs survive JSON and ``weights_only`` loading alike."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
