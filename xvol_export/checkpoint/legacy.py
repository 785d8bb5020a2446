"""Version-1 deploy checkpoints: their header records the layouts of the blocks, not a fold plan. Their model is
the architecture's deploy form laid out as recorded; their plan is worked out from it once, to save them in
version 2."""

from __future__ import annotations

import torch
from torch import nn

from xvol_export.checkpoint.record import Checkpoint, error_reason, training_model
from xvol_export.errors import XvolError
from xvol_export.fold.family import deploy_family
from xvol_export.fold.plan import FoldPlan
from xvol_export.fold.submodule import replace_submodule
from xvol_export.forms import derive_plan
from xvol_export.models import create_model


def is_version1(ckpt: Checkpoint) -> bool:
    """Read from a version-1 file (a deploy one that has no plan yet, even after a copy in memory)."""
    return ckpt.format_version == 1 or (ckpt.folded and ckpt.plan is None)


def version1_model(ckpt: Checkpoint) -> nn.Module:
    """The deploy architecture of a version-1 checkpoint, with its blocks laid out as its header records."""
    model = create_model(ckpt.architecture, deploy=True, **ckpt.config)
    blocks = {name: module for name, module in model.named_modules()
              if (family := deploy_family(module)) is not None and family.relayout is not None}
    if set(blocks) != set(ckpt.layouts):
        raise XvolError(
            f"{ckpt.label}: its fold layouts name blocks {sorted(ckpt.layouts)} but the architecture has "
            f"{sorted(blocks)}. The file is inconsistent; fold the training checkpoint again."
        )
    for name, layout in ckpt.layouts.items():
        block = blocks[name]
        rebuilt = deploy_family(block).relayout(block, layout)  # in the model's device and dtype
        if rebuilt is not block:
            model = replace_submodule(model, name, rebuilt)
    return model


def version1_plan(ckpt: Checkpoint) -> FoldPlan:
    """The fold plan of a version-1 deploy checkpoint, worked out on the meta device."""
    try:
        with torch.device("meta"):
            deploy = version1_model(ckpt)
        return derive_plan(lambda: training_model(ckpt), deploy)
    except (XvolError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:
        raise XvolError(
            f"{ckpt.label}: a version-1 deploy checkpoint whose fold plan cannot be worked out "
            f"({error_reason(err)}), so it cannot be written in version 2. Fold the training checkpoint again."
        ) from None


def attach_version1_plan(model: nn.Module, ckpt: Checkpoint) -> None:
    """Give a version-1 deploy model its fold plan, so that it saves in version 2 (a note when it cannot)."""
    try:
        plan = derive_plan(lambda: training_model(ckpt), model)
    except Exception as err:  # noqa: BLE001 - the model loads all the same; only saving it again needs the plan
        ckpt.notes.append(f"version-1 deploy checkpoint: its fold plan cannot be worked out ({error_reason(err)}), "
                          "so it cannot be saved in version 2; fold the training checkpoint again for that")
        return
    model.xvol_fold_plan = ckpt.plan = plan
