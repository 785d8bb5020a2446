"""The checkpoint record: what a file holds once read, before any model is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from xvol_export.checkpoint.state_dict import weights_dtype
from xvol_export.dtypes import dtype_name
from xvol_export.errors import XvolError
from xvol_export.fold.family import get_family
from xvol_export.fold.plan import FoldPlan
from xvol_export.models.spec import ModelSpec


@dataclass
class Checkpoint:
    """A loaded checkpoint, before any model is built.

    ``plan`` is the fold plan of a deploy checkpoint (None for a training one, and for a version-1 file until its
    model is built); ``layouts`` the layouts of its blocks whose family has layouts (a version-1 header's, else the
    plan's). ``format_version`` is the version of the file read (None for a checkpoint made in memory).
    """

    architecture: str
    config: dict
    state_dict: dict[str, torch.Tensor]
    folded: bool = False
    layouts: dict[str, str] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)
    plan: FoldPlan | None = None
    format_version: int | None = None
    weights_sha256: str | None = None  # the sha256 of the tensors its header records (None: not recorded)

    def __post_init__(self) -> None:
        if self.plan is not None and not self.layouts:
            self.layouts = plan_layouts(self.plan)

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "<checkpoint>"

    @property
    def dtype(self) -> str | None:
        """The floating dtype of the weights as a short name (``fp16``, ``bf16``, ``fp32``, ``fp64``).

        ``None`` when the state dict holds no floating tensor; :class:`XvolError` when it mixes
        floating dtypes or holds one xvol does not read (float8).
        """
        found = weights_dtype(self.state_dict, self.label)
        return dtype_name(found) if found is not None else None


def plan_layouts(plan: FoldPlan) -> dict[str, str]:
    """``{block: layout}`` of a plan's blocks whose family has layouts (what version-1 headers called ``layouts``)."""
    return {name: block["config"]["layout"] for name, block in plan.blocks.items()
            if "layout" in block.get("config", {}) and _has_layouts(block.get("family"))}


def _has_layouts(family: str | None) -> bool:
    try:
        return bool(get_family(family).layouts)
    except KeyError:  # a family that is not registered here
        return False


def training_model(ckpt: Checkpoint) -> nn.Module:
    """The training form of the checkpoint's architecture and config (its weights not loaded)."""
    return ModelSpec(ckpt.architecture).build(ckpt.config)


def error_reason(err: BaseException) -> str:
    """``err`` in a sentence: its type named unless it is one of ours or a ValueError."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return f"{type(err).__name__}: {text}" if not isinstance(err, (ValueError, XvolError)) else str(text)
