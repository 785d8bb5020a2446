"""Model specs: a registered architecture name, or a user's own ``package.module:factory``.

A user's factory is imported only when the user names it (``--model``); a spec written in a file is
only compared with the one given, never imported on its own. Configs are JSON-plain keyword
arguments, so that a checkpoint can record them and ``torch.load(weights_only=True)`` can read them.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from xvol_export.errors import XvolError
from xvol_export.models.registry import FORM_ARGS, create_model, get_model_entry, list_models
from xvol_export.naming import assignment, setting

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_USER_SPEC = re.compile(rf"{_DOTTED}:{_DOTTED}")
_CFG_ATTRIBUTES = ("pretrained_cfg", "default_cfg")  # timm's model info: input_size is (C, H, W)


def is_user_spec(text: str) -> bool:
    """Whether ``text`` names a user's factory (``package.module:factory``) rather than a registered name."""
    return ":" in text


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture (``xvol_resnet18``) or a user's ``package.module:factory`` (a function or an
    ``nn.Module`` class; ``factory`` may be dotted, ``module:Class.build``). It builds the training form."""

    name: str

    @classmethod
    def parse(cls, text: str, option: str | None = None) -> ModelSpec:
        """The spec ``text`` names (its syntax only: nothing is imported); :class:`XvolError` naming ``option``
        (default: the ``model`` setting, as the caller knows it)."""
        option = option or setting("model")
        if not isinstance(text, str) or not text.strip():
            raise XvolError(f"{option} is empty. Give a registered name (one of: {', '.join(list_models())}) "
                            "or your own factory as package.module:factory.")
        text = text.strip()
        if is_user_spec(text) and not _USER_SPEC.fullmatch(text):
            raise XvolError(f"{option} '{text}' is not of the form package.module:factory (dotted Python names "
                            "around one colon), e.g. mynets.small:build_net.")
        return cls(text)

    @property
    def is_user(self) -> bool:
        return is_user_spec(self.name)

    @property
    def label(self) -> str:
        return assignment("model", self.name) if self.is_user else f"architecture '{self.name}'"

    def factory(self) -> Callable[..., nn.Module]:
        """The callable that builds the model; a user's module is imported here (the current folder first)."""
        if not self.is_user:
            return get_model_entry(self.name).factory
        module_name, _, attribute = self.name.partition(":")
        try:
            with _current_folder_on_path():
                module = importlib.import_module(module_name)
        except Exception as err:  # noqa: BLE001 - the user's module may fail in any way while importing
            raise XvolError(
                f"{self.label}: cannot import module '{module_name}' ({type(err).__name__}: {err}). Check "
                "the name, and that the module is importable from the current folder or PYTHONPATH."
            ) from None
        target: Any = module
        for part in attribute.split("."):
            if not hasattr(target, part):
                raise XvolError(f"{self.label}: module '{module_name}' has no '{attribute}'. Check the "
                                "factory's name (after the colon).")
            target = getattr(target, part)
        if not callable(target):
            raise XvolError(f"{self.label}: '{attribute}' is a {type(target).__name__}, not a function or "
                            "class that builds a model.")
        return target

    def resolve_config(self, kwargs: dict | None = None) -> dict:
        """Every argument of the factory (defaults filled in), without the form arguments.

        Registered architectures: their registry's rule. A user's factory: its signature (``**kwargs`` merged in);
        values are kept as they are (see :func:`config_problems` for what a checkpoint can record).
        """
        kwargs = dict(kwargs or {})
        if not self.is_user:
            return get_model_entry(self.name).resolve_config(kwargs)
        given_form = sorted(set(kwargs) & set(FORM_ARGS))
        if given_form:
            raise XvolError(
                f"{setting('model_kwargs')} gives {', '.join(given_form)}: xvol always builds the training form of "
                f"{self.label} and folds it itself (a deploy checkpoint records how). Drop it, and load "
                "the training weights."
            )
        factory = self.factory()
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # a builtin or C callable: its arguments cannot be filled in
            return kwargs
        try:
            bound = signature.bind(**kwargs)
        except TypeError as err:
            known = ", ".join(p.name for p in signature.parameters.values()
                              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in FORM_ARGS)
            raise XvolError(f"{self.label} does not take these arguments: {err}. It takes: "
                            f"{known or 'no named arguments'} (give them with {setting('model_kwargs')}).") from None
        bound.apply_defaults()
        config: dict = {}
        for name, value in bound.arguments.items():
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                config.update(value)
            elif kind is not inspect.Parameter.VAR_POSITIONAL and name not in FORM_ARGS:
                config[name] = value
        return config

    def build(self, config: dict | None = None) -> nn.Module:
        """The training-form model of ``config`` (resolved first), carrying ``xvol_arch`` (the spec and resolved
        config) and, for a user's model whose ``pretrained_cfg``/``default_cfg`` says it, ``input_size``."""
        if not self.is_user:
            return create_model(self.name, **dict(config or {}))
        resolved = self.resolve_config(config)
        factory = self.factory()
        try:
            with _current_folder_on_path():  # a factory may import its siblings when it runs
                model = factory(**resolved)
        except XvolError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's factory may fail in any way
            raise XvolError(f"{self.label}: building it with {_shown(resolved)} failed "
                            f"({type(err).__name__}: {err}). Check {setting('model_kwargs')}.") from None
        if not isinstance(model, nn.Module):
            raise XvolError(f"{self.label} returned a {type(model).__name__}, not a torch.nn.Module.")
        size = declared_input_size(model)
        if size is not None and not hasattr(model, "input_size"):
            model.input_size = size
        model.xvol_arch = {"name": self.name, "config": resolved}
        return model


def declared_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """The input size ``(C, H, W)`` a model declares: its ``input_size`` (xvol's models), else ``input_size``
    in its ``pretrained_cfg``/``default_cfg`` dict (timm's convention); None when it declares none."""
    own = _chw(getattr(model, "input_size", None))
    if own is not None:
        return own
    for attribute in _CFG_ATTRIBUTES:
        cfg = getattr(model, attribute, None)
        if isinstance(cfg, dict):
            size = _chw(cfg.get("input_size"))
            if size is not None:
                return size
    return None


def config_problems(config: dict) -> list[str]:
    """``name=value`` for every config value that is not JSON-plain (None, bool, number, text, lists and
    string-keyed dicts of them), so a checkpoint could not record it; empty when all are."""
    return [f"{name}={_short(value)}" for name, value in config.items() if not is_json_plain(value)]


def is_json_plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(is_json_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_json_plain(v) for k, v in value.items())
    return False


def plain_config(config: dict) -> dict:
    """``config`` with tuples as lists (as JSON and ``weights_only`` loading give them back)."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in config.items()}


@contextlib.contextmanager
def _current_folder_on_path():
    """The current folder first on ``sys.path`` meanwhile (as ``python -m`` would have it), so that
    ``--model mynet:build`` works from the folder holding ``mynet.py``; the path is restored after."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        yield
    finally:
        if added and here in sys.path:
            sys.path.remove(here)


def _chw(value) -> tuple[int, int, int] | None:
    if isinstance(value, torch.Size):
        value = tuple(value)
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return tuple(value)
    return None


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(config: dict) -> str:
    return "no arguments" if not config else ", ".join(f"{k}={_short(v, 30)}" for k, v in config.items())
