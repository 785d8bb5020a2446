"""The fold plan: what a fold did to a model, JSON-plain, so a deploy model can be rebuilt from its training form.

A deploy checkpoint stores the plan instead of a deploy architecture: the training skeleton is built (on the meta
device, for free), :func:`~xvol_export.fold.model.apply_plan` turns it into the deploy skeleton, and the file's
state dict loads strictly. So a model factory only ever builds the training form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PLAN_VERSION = 1
FUSION_KINDS = ("conv_bn", "bn_conv", "linear_bn", "bn_linear", "convtranspose_bn")
HOOKS = ("reparameterize", "switch_to_deploy", "fuse")  # blocks' own re-parameterization methods, by preference


@dataclass
class FoldPlan:
    """``blocks``: per folded block, its family and deploy configuration; ``fused``: every norm folded into a
    neighbouring conv or linear (``kind`` one of :data:`FUSION_KINDS`, the ``layer`` that absorbed the ``norm``);
    ``hooks``: blocks folded by their own method (name -> the hook called, with ``in_place`` or ``returned``)."""

    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)
    fused: list[dict[str, str]] = field(default_factory=list)
    hooks: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"version": PLAN_VERSION, "blocks": self.blocks, "fused": self.fused, "hooks": self.hooks}

    @classmethod
    def from_dict(cls, data: dict) -> FoldPlan:
        """The plan of a header; :class:`ValueError` naming what is malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"the fold plan is a {type(data).__name__}, not a mapping")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version > PLAN_VERSION:
            raise ValueError(f"fold plan version {version!r} is not one this xvol reads (up to {PLAN_VERSION})")
        blocks, fused, hooks = data.get("blocks", {}), data.get("fused", []), data.get("hooks", {})
        if not isinstance(blocks, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("family"), str)
                and isinstance(v.get("config"), dict) for k, v in blocks.items()):
            raise ValueError("its blocks must map names to {family, config}")
        if not isinstance(fused, list) or not all(
                isinstance(f, dict) and f.get("kind") in FUSION_KINDS and isinstance(f.get("layer"), str)
                and isinstance(f.get("norm"), str) for f in fused):
            raise ValueError("its fused pairs must be {kind, layer, norm} with kind one of " + ", ".join(FUSION_KINDS))
        if not isinstance(hooks, dict) or not all(
                isinstance(v, dict) and v.get("hook") in HOOKS for v in hooks.values()):
            raise ValueError(f"its hooks must map names to {{hook}} with hook one of {', '.join(HOOKS)}")
        return cls(dict(blocks), list(fused), dict(hooks))

    @property
    def empty(self) -> bool:
        return not (self.blocks or self.fused or self.hooks)
