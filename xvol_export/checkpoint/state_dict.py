"""Strict state-dict checks: every key and shape, the kind of each tensor, one floating dtype, finite weights."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from xvol_export.dtypes import DTYPES, describe_dtype, dtype_kind
from xvol_export.errors import XvolError

_KIND_WORDS = {"float": "a floating-point", "int": "an integer", "bool": "a bool", "complex": "a complex"}

# what a hint returns: the sentence saying what the file holds, and the fix
Hint = Callable[[set, list, list], "tuple[str, str] | None"]


def listing(names: list[str], limit: int = 12) -> str:
    """The first ``limit`` names, comma-separated, and how many more there are."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def is_state_dict(obj) -> bool:
    """A non-empty dict of tensors by name."""
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def weights_dtype(state_dict: dict[str, torch.Tensor], label: str) -> torch.dtype | None:
    """The one floating dtype of ``state_dict``'s tensors (``None`` if it holds none).

    :class:`XvolError` naming two keys when floating dtypes are mixed (integer buffers such as
    BatchNorm's ``num_batches_tracked`` do not count), or naming the keys of a floating dtype that
    xvol does not read (not one of :data:`DTYPES`).
    """
    first: dict[torch.dtype, str] = {}
    for key, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            first.setdefault(tensor.dtype, key)
    unsupported = [f"{key} ({describe_dtype(dt)})" for dt, key in first.items() if dt not in DTYPES.values()]
    if unsupported:
        raise XvolError(
            f"{label}: holds floating tensors of a dtype xvol does not read: {listing(unsupported)}. "
            f"Cast the weights to one of {', '.join(DTYPES)} and save them again."
        )
    if len(first) > 1:
        (dt_a, key_a), (dt_b, key_b) = list(first.items())[:2]
        others = f" (and {len(first) - 2} more dtype(s))" if len(first) > 2 else ""
        raise XvolError(
            f"{label}: mixes floating dtypes: {key_a} is {describe_dtype(dt_a)} but {key_b} is "
            f"{describe_dtype(dt_b)}{others}. A checkpoint holds its weights in one dtype: cast the model "
            "to one (e.g. model.float() or model.half()) and save it again."
        )
    return next(iter(first), None)


def load_state_dict_strict(model: nn.Module, state_dict: dict, label: str, assign: bool = False) -> None:
    """Load every key or fail naming each missing, unexpected, misshapen and wrong-kind one.

    ``assign=True`` makes the model use the given tensors (needed for a model built on ``meta``).
    """
    check_state_dict(model, state_dict, label)
    model.load_state_dict(state_dict, strict=True, assign=assign)


def check_state_dict(model: nn.Module, state_dict: dict, label: str, hint: Hint | None = None) -> None:
    """:class:`XvolError` naming every missing, unexpected and misshapen key, then every key whose
    tensor is of another kind than the model's (integer, bool or complex where the model has a
    floating tensor, or floating where it has an integer one). Floating dtypes may differ.

    ``hint(model_keys, missing, unexpected)`` may recognize what the keys are (the other form's weights, say):
    its sentence and fix then frame the listing."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshapen = [
        f"{k} (file {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {listing(unexpected)}")
    if misshapen:
        problems.append(f"{len(misshapen)} key(s) of the wrong shape: {listing(misshapen)}")
    if problems:
        found = hint(set(expected), missing, unexpected) if hint is not None and (missing or unexpected) else None
        what, fix = found or ("the weights do not match the architecture",
                              "Check that the checkpoint's architecture and config are the ones it was trained with.")
        raise XvolError(f"{label}: {what}: " + "; ".join(problems) + f". {fix}")
    wrong_kind = [
        f"{k} ({describe_dtype(state_dict[k].dtype)} where the model has "
        f"{_KIND_WORDS[dtype_kind(expected[k].dtype)]} tensor)"
        for k in expected
        if dtype_kind(state_dict[k].dtype) != dtype_kind(expected[k].dtype)
    ]
    if wrong_kind:
        raise XvolError(
            f"{label}: {len(wrong_kind)} tensor(s) of the wrong kind: {listing(wrong_kind)}. The file is damaged "
            "or not this architecture's weights; use the original checkpoint of this architecture."
        )


def check_weights(model: nn.Module, label: str) -> None:
    """Refuse non-finite parameters/buffers and negative BatchNorm running variances."""
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise XvolError(
            f"{label}: {len(bad)} tensor(s) hold NaN or Inf: {listing(bad)}. The training run diverged or "
            "the file is damaged; use an earlier checkpoint."
        )
    negative = [
        f"{n}.running_var"
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None and (m.running_var < 0).any()
    ]
    if negative:
        raise XvolError(
            f"{label}: negative BatchNorm running variance in {listing(negative)}. A variance cannot be "
            "negative: the file is damaged or was edited; use the original checkpoint."
        )
