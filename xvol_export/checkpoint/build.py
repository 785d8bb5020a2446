"""A checkpoint's model, built on the meta device and loaded strictly: the training form, or its deploy form (the
training skeleton with the fold plan applied), in the dtype of the file's weights."""

from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch import nn

from xvol_export.checkpoint.header import check_weights_hash
from xvol_export.checkpoint.legacy import attach_version1_plan, is_version1, version1_model
from xvol_export.checkpoint.record import Checkpoint, training_model
from xvol_export.checkpoint.state_dict import (
    Hint,
    check_state_dict,
    check_weights,
    load_state_dict_strict,
    weights_dtype,
)
from xvol_export.errors import XvolError
from xvol_export.forms import apply_fold_plan, recognize_form
from xvol_export.limits import check_fits, format_bytes
from xvol_export.models import get_model_entry, model_size
from xvol_export.models.spec import ModelSpec, is_user_spec
from xvol_export.naming import setting


def build_model(ckpt: Checkpoint) -> nn.Module:
    """Build the checkpoint's model and load it strictly: the training form, or its deploy form (the training
    skeleton with the fold plan applied; a version-1 file: the deploy architecture with its layouts).

    The model is built in the dtype of the file's floating tensors (fp16, bf16, fp32 or fp64).
    """
    user = is_user_spec(ckpt.architecture)
    try:
        if not user:
            get_model_entry(ckpt.architecture)  # unknown architecture: a clear error first
            check_size(ckpt)  # absurd configs: refused from arithmetic, before any module is built
        model = _construct_on_meta(ckpt)  # no time spent initializing weights that the file replaces
    except XvolError as err:
        raise XvolError(f"{ckpt.label}: {err}") from None
    except (TypeError, ValueError) as err:
        raise XvolError(f"{ckpt.label}: its config does not build '{ckpt.architecture}': {err}.") from None
    # keys (the other form's weights recognized as such), shapes and kinds (float / int / ...)
    check_state_dict(model, ckpt.state_dict, ckpt.label, hint=_form_hint(ckpt))
    dtype = weights_dtype(ckpt.state_dict, ckpt.label)  # one floating dtype, one xvol reads
    if dtype is not None:
        model = model.to(dtype)
    model.load_state_dict(ckpt.state_dict, strict=True, assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        # state the file does not hold (non-persistent buffers): build for real, in the file's dtype
        model = _labelled(ckpt, construct, ckpt)
        if dtype is not None:
            model = model.to(dtype)
        load_state_dict_strict(model, ckpt.state_dict, ckpt.label)
    check_weights(model, ckpt.label)
    check_weights_hash(ckpt)  # last: an edited file's own problem (a key, a NaN) is named first
    if ckpt.folded and is_version1(ckpt):
        attach_version1_plan(model, ckpt)
    return model.eval()


def check_size(ckpt: Checkpoint) -> None:
    """Refuse a config whose model cannot be this file's or cannot fit in memory, from arithmetic alone.

    The architecture's size rule checks every config value (types and ranges, :class:`ValueError`) and
    counts the state-dict values the config describes (a lower bound for a deploy checkpoint, whose
    blocks may be dense or split). Far more values than the file holds means the config is not the file's
    (a few keys more or less are left to :func:`check_state_dict`, which names them); more bytes than this
    machine has means no model of it can be built here.
    """
    size = model_size(ckpt.architecture, ckpt.config, deploy=ckpt.folded)
    if size is None:  # an architecture without a size rule: its constructor checks what it can
        return
    tensors = [t for t in ckpt.state_dict.values() if isinstance(t, torch.Tensor)]
    held = sum(t.numel() for t in tensors)
    itemsize = max((t.element_size() for t in tensors if t.is_floating_point()), default=4)
    if size.values > 2 * held + 1_000_000:  # far more than the file: before building (a few keys: named later)
        raise XvolError(
            f"its config describes a model of at least {size.values:,} values ({size.summary}), but the file holds "
            f"{held:,}. The config is not the one these weights were trained with (or was edited); use the original "
            f"checkpoint, or pass {setting('model_kwargs')} ({setting('config')}) with the training config."
        )
    check_fits(size.values * itemsize + size.activation_bytes,
               f"the model its config describes ({size.values:,} values of {itemsize} bytes, and "
               f"{format_bytes(size.activation_bytes)} of activations for one input of its size)",
               "Use a checkpoint of a smaller model, or a machine with more memory.")


def construct(ckpt: Checkpoint) -> nn.Module:
    """The model of ``ckpt``'s header, its weights not loaded: the training form, the training skeleton with the
    fold plan applied, or (version 1) the deploy architecture with its layouts."""
    if not ckpt.folded:
        return training_model(ckpt)
    if is_version1(ckpt):
        return version1_model(ckpt)
    skeleton = training_model(ckpt)
    arch, size = skeleton.xvol_arch, getattr(skeleton, "input_size", None)
    try:
        model = apply_fold_plan(skeleton, ckpt.plan)
    except ValueError as err:
        raise XvolError(
            f"its fold plan does not fit {ModelSpec(ckpt.architecture).label} with its config: {err}. The file "
            "was edited, or its config is not the one it was folded with; fold the training checkpoint again."
        ) from None
    model.xvol_arch = arch  # the plan may have replaced the root module
    if size is not None and getattr(model, "input_size", None) is None:
        model.input_size = size
    model.xvol_fold_plan = ckpt.plan
    return model


def _construct_on_meta(ckpt: Checkpoint) -> nn.Module:
    try:
        with torch.device("meta"):
            return construct(ckpt)
    except XvolError:
        if not is_user_spec(ckpt.architecture):
            raise
    # a user's factory that cannot build on the meta device (it reads values, say): built for real
    return construct(ckpt)


def _labelled(ckpt: Checkpoint, function: Callable, *args):
    try:
        return function(*args)
    except XvolError as err:
        raise XvolError(f"{ckpt.label}: {err}") from None


def _form_hint(ckpt: Checkpoint) -> Hint:
    """Names the other form's weights as such: a deploy form's given to the training form, or the reverse."""
    def hint(model_keys: set, missing: list, unexpected: list) -> tuple[str, str] | None:
        try:
            form = recognize_form(lambda: training_model(ckpt), model_keys, ckpt.folded, missing, unexpected)
        except Exception:  # noqa: BLE001 - recognition only adds words to the listing, which follows anyway
            return None
        what = ModelSpec(ckpt.architecture).label
        if form == "deploy":
            return (f"holds the weights of a deploy (folded) form, but {what} is built in its training form",
                    "xvol folds and verifies from the training weights: give the training checkpoint, or the deploy "
                    "checkpoint that xvol fold wrote (it records the fold plan that rebuilds the deploy form).")
        if form == "training":
            return ("holds the weights of the training form, but its header says it is folded (a deploy checkpoint)",
                    "The file was edited or damaged: use the training checkpoint (xvol fold folds it), or the "
                    "deploy checkpoint as xvol fold wrote it.")
        return None

    return hint
