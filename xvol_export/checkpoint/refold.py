"""Folding a deploy checkpoint again: only with the layouts it was folded with (a deploy form cannot change its
layout), except for blocks whose family says their deploy form is the same under every layout."""

from __future__ import annotations

import torch

from xvol_export.checkpoint.build import check_size, construct
from xvol_export.checkpoint.record import Checkpoint
from xvol_export.errors import XvolError
from xvol_export.fold.family import deploy_family, get_family, layout_choices
from xvol_export.naming import assignment


def check_refold(ckpt: Checkpoint, layout: str) -> None:
    """Refuse to fold a deploy checkpoint ``ckpt`` with a ``layout`` it was not folded with.

    Nothing to check for a training checkpoint, for ``layout="auto"`` or when every block already
    has ``layout`` (a block whose deploy form is the same under every layout always matches).
    Otherwise :class:`XvolError` naming the file and the layouts it has.
    """
    choices = layout_choices()
    if layout not in choices:
        raise ValueError(f"layout must be one of {choices}, got {layout!r}")
    if not ckpt.folded or layout == "auto" or not ckpt.layouts:
        return
    single_form = _single_form_blocks(ckpt)
    if all(have == layout or name in single_form for name, have in ckpt.layouts.items()):
        return
    counts: dict[str, int] = {}
    for have in ckpt.layouts.values():
        counts[have] = counts.get(have, 0) + 1
    has = " and ".join(f"{name} for {n} block(s)" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    asked = assignment("layout", layout)
    raise XvolError(
        f"{ckpt.label}: is a deploy checkpoint, already folded with {has}, so {asked} cannot apply "
        f"to it. Fold the training checkpoint again with {asked}; a deploy checkpoint cannot change "
        "its layout."
    )


def _single_form_blocks(ckpt: Checkpoint) -> set[str]:
    """The deploy blocks that are the same whatever layout was asked for (the family's ``single_form``)."""
    if ckpt.plan is not None:
        return {name for name, block in ckpt.plan.blocks.items()
                if _single_form(block.get("family"), block.get("config", {}))}
    try:
        check_size(ckpt)
        with torch.device("meta"):
            model = construct(ckpt)
    except (XvolError, TypeError, ValueError):
        return set()  # cannot tell: every block counts
    found = set()
    for name, module in model.named_modules():
        family = deploy_family(module)
        if family is not None and family.single_form is not None and family.single_form(family.deploy_config(module)):
            found.add(name)
    return found


def _single_form(family_name: str | None, config: dict) -> bool:
    try:
        family = get_family(family_name)
    except KeyError:  # a family that is not registered here
        return False
    return family.single_form is not None and family.single_form(config)
