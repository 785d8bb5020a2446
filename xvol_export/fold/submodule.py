"""Replacing one submodule of a model by its qualified name: how every fold step swaps a block or layer."""

from __future__ import annotations

from torch import nn


def replace_submodule(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """``root`` with its submodule ``name`` replaced by ``module`` (``module`` itself when ``name`` is the root)."""
    if not name:
        return module
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
    return root
