"""The checkpoint header: written in format version 2, read in versions 1 and 2, every field checked."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from xvol_export.checkpoint.record import Checkpoint
from xvol_export.checkpoint.state_dict import is_state_dict
from xvol_export.errors import XvolError
from xvol_export.fold.plan import FoldPlan
from xvol_export.integrity import SHA256_HEX, state_dict_sha256
from xvol_export.io import build_timestamp
from xvol_export.models.spec import ModelSpec, is_user_spec, plain_config
from xvol_export.version import __version__

FORMAT = "xvol.checkpoint"
FORMAT_VERSION = 2  # 2: fold_plan; 1: the blocks' layouts only, still read
WEIGHTS_HASH = "state_dict_sha256"  # the header's record of the tensors' sha256 (absent in older files)


def new_header(ckpt: Checkpoint, plan: FoldPlan | None, state_dict: dict[str, torch.Tensor],
               metadata: dict | None) -> dict:
    """The version-2 header of ``ckpt`` saved with ``plan`` and ``state_dict``; ``metadata`` added to its own."""
    meta = {"xvol_version": __version__,
            "created": build_timestamp(),
            **ckpt.metadata, **(metadata or {})}
    # Plain JSON types only, so the file stays loadable with weights_only=True.
    meta = json.loads(json.dumps(meta, default=str))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": ckpt.architecture,
        "config": plain_config(ckpt.config),
        "folded": ckpt.folded,
        "fold_plan": _plain_plan(plan) if ckpt.folded else None,
        "metadata": meta,
        WEIGHTS_HASH: state_dict_sha256(state_dict),
    }


def from_header(path: Path, header: dict, state_dict) -> Checkpoint:
    """The checkpoint of a file's ``header`` and ``state_dict``; :class:`XvolError` naming any malformed field."""
    version = header.get("format_version")
    if "format_version" not in header:
        raise XvolError(
            f"{path}: its header has no format_version, so xvol cannot tell how to read it. The file was not "
            "written by xvol_export.save_checkpoint or was edited; save it again from the model."
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise XvolError(
            f"{path}: its header's format_version is {version!r}, not a version number (xvol writes "
            f"{FORMAT_VERSION}). The file is damaged or was edited; save it again from the model."
        )
    if version > FORMAT_VERSION:
        raise XvolError(
            f"{path}: checkpoint format version {version!r} is newer than this xvol understands "
            f"({FORMAT_VERSION}). Upgrade xvol."
        )
    fields = {"architecture": str, "config": dict, "folded": bool, "metadata": dict,
              **({"layouts": dict} if version == 1 else {})}
    wrong = [k for k, t in fields.items() if not isinstance(header.get(k), t)]
    if version >= 2 and "fold_plan" not in header:
        wrong.append("fold_plan")
    if wrong or not is_state_dict(state_dict):
        what = ", ".join(wrong + ([] if is_state_dict(state_dict) else ["state_dict"]))
        raise XvolError(f"{path}: the checkpoint's {what} field(s) are missing or malformed. Save it again.")
    architecture = header["architecture"]
    if is_user_spec(architecture):
        try:
            ModelSpec.parse(architecture)
        except XvolError:
            raise XvolError(f"{path}: its architecture {architecture!r} is neither a registered name nor "
                            "package.module:factory. The file is damaged or was edited; save it again.") from None
    plan = None
    if version >= 2:
        plan = _header_plan(path, header["fold_plan"], header["folded"])
    recorded = header.get(WEIGHTS_HASH)
    if recorded is not None and not (isinstance(recorded, str) and SHA256_HEX.fullmatch(recorded)):
        raise XvolError(f"{path}: its header's {WEIGHTS_HASH} is {str(recorded)[:80]!r}, not a sha256 (64 hex "
                        "digits). The file is damaged or was edited; save it again from the model.")
    return Checkpoint(
        architecture=architecture,
        config=header["config"],
        state_dict=state_dict,
        folded=header["folded"],
        layouts=header["layouts"] if version == 1 else {},
        metadata=header["metadata"],
        plan=plan,
        format_version=version,
        weights_sha256=recorded,
    )


def check_weights_hash(ckpt: Checkpoint) -> None:
    """Refuse weights whose sha256 is not the one the file's header recorded when it was saved."""
    if ckpt.weights_sha256 is None or state_dict_sha256(ckpt.state_dict) == ckpt.weights_sha256:
        return
    raise XvolError(
        f"{ckpt.label}: is damaged: its weights do not match the sha256 recorded in its header when it was saved "
        f"({WEIGHTS_HASH}), so some of them are not the ones saved. Copy or download it again, or use the original "
        "checkpoint. (Weights edited on purpose after saving: save them with xvol_export.save_checkpoint, which "
        "records their new hash.)"
    )


def _header_plan(path: Path, raw, folded: bool) -> FoldPlan | None:
    """The fold plan of a version-2 header: a deploy checkpoint has one, a training checkpoint none."""
    if raw is None:
        if folded:
            raise XvolError(f"{path}: its header says it is folded (a deploy checkpoint) but its fold_plan is null, "
                            "so its deploy form cannot be rebuilt. The file was edited; fold the training "
                            "checkpoint again.")
        return None
    if not folded:
        raise XvolError(f"{path}: its header holds a fold_plan but says it is not folded. The file was edited or "
                        "damaged; save it again from the model.")
    try:
        return FoldPlan.from_dict(raw)
    except (ValueError, TypeError, AttributeError) as err:
        raise XvolError(f"{path}: its fold_plan is malformed: {err}. The file was edited or damaged; fold the "
                        "training checkpoint again.") from None


def _plain_plan(plan: FoldPlan) -> dict:
    try:
        return json.loads(json.dumps(plan.to_dict(), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise XvolError(f"The fold plan holds a value that JSON cannot record ({err}): a block family's "
                        "deploy_config must return JSON-plain values.") from None
