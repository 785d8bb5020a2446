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
class ModelSize:
    """What a config asks for, from arithmetic alone (no module is built): ``values`` in the state dict (a
    lower bound where the form leaves a choice), ``activation_bytes`` of float64 activations for one input of
    the model's own size, and a one-line ``summary`` of where they come from."""

    values: int
    activation_bytes: int
    summary: str
    recorded_values: int = 0  # per input: every X-volution block's input and output, which verification keeps


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    # config (resolved, form arguments apart), deploy -> ModelSize; ValueError naming a bad config value
    size: Callable[[dict, bool], ModelSize] | None = None

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


def register_model(factory: Callable[..., nn.Module] | None = None, *,
                   size: Callable[[dict, bool], ModelSize] | None = None):
    """Decorator: register ``factory`` under its function name (``@register_model`` or
    ``@register_model(size=rule)``). ``size(config, deploy)`` checks a resolved config's values (ValueError
    naming the bad one) and returns its :class:`ModelSize`, so absurd configs are refused before anything
    is built."""
    def register(function: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[function.__name__] = ModelEntry(function.__name__, function, size)
        return function

    return register(factory) if factory is not None else register


def model_size(name: str, config: dict, deploy: bool = False) -> ModelSize | None:
    """The :class:`ModelSize` of architecture ``name`` built with ``config`` (None when it has no size rule);
    :class:`ValueError` naming a config value of the wrong type or range, :class:`XvolError` for bad arguments."""
    entry = get_model_entry(name)
    if entry.size is None:
        return None
    return entry.size(entry.resolve_config(dict(config)), deploy)


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
    """Build a registered architecture (its training form); ``deploy=True`` asks a factory that has one for its
    folded form directly (what version-1 deploy checkpoints need; newer ones apply their fold plan)."""
    entry = get_model_entry(name)
    resolved = entry.resolve_config(config)
    if entry.size is not None:  # absurd sizes: refused from arithmetic, before a module is built
        from xvol_export.limits import check_fits

        try:
            size = entry.size(resolved, deploy)
        except ValueError as err:
            raise XvolError(f"Bad config for architecture '{name}': {err}.") from None
        if not _on_meta_device():
            check_fits(size.values * 4 + size.activation_bytes, f"'{name}' with this config ({size.summary})",
                       "Choose a smaller config.")
    # Only version-1 deploy checkpoints ask a factory for its deploy form; a factory need not take form arguments.
    form = {"deploy": True, "xvol_layout": xvol_layout} if deploy else {}
    accepted = inspect.signature(entry.factory).parameters
    if deploy and not {"deploy", "xvol_layout"} <= set(accepted):
        raise XvolError(f"architecture '{name}' builds its training form only; fold it (xvol fold) for its deploy "
                        "form.")
    model = entry.factory(**resolved, **form)
    model.xvol_arch = {"name": name, "config": resolved}
    return model


def input_cost(model: nn.Module, sample_shape: tuple[int, ...]) -> tuple[float, float] | None:
    """``(activation_bytes, recorded_values)`` of one input of ``sample_shape`` (C, H, W) through ``model``: its
    size rule's figures at its own input size, scaled by the pixel count. None for a model xvol did not build."""
    arch, own = getattr(model, "xvol_arch", None), getattr(model, "input_size", None)
    if not isinstance(arch, dict) or not own or len(own) != 3 or len(sample_shape) != 3:
        return None
    try:
        size = model_size(arch["name"], arch["config"])
    except (XvolError, ValueError, KeyError, TypeError):
        return None
    if size is None:
        return None
    scale = (float(sample_shape[1]) * float(sample_shape[2])) / (own[1] * own[2])
    return size.activation_bytes * scale, size.recorded_values * scale


def _on_meta_device() -> bool:
    """Whether new tensors go to the meta device (``with torch.device("meta")``): no memory is spent."""
    import torch

    return torch.empty(0).is_meta


def _plain(value):
    """Tuples become lists so that configs survive JSON and ``weights_only`` loading alike."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
