"""The floating-point dtypes xvol reads, folds and writes, by their short names.

One mapping for the whole package (checkpoints, fold reports, the CLI's ``--dtype``):
``fp16``, ``bf16``, ``fp32`` and ``fp64``.
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "fp64": torch.float64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a supported floating dtype (``torch.float16`` -> ``"fp16"``); ``ValueError`` otherwise."""
    try:
        return DTYPE_NAMES[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"{describe_dtype(dtype)} is not one of the supported dtypes {', '.join(DTYPES)}") from None


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a short name or a supported torch dtype; ``ValueError`` for anything else."""
    if isinstance(dtype, torch.dtype):
        dtype_name(dtype)  # supported?
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or the torch dtype), got {dtype!r}")


def describe_dtype(dtype) -> str:
    """``fp16``-style name when supported, else torch's own (``int64``, ``complex64``, ``float8_e4m3fn``)."""
    if isinstance(dtype, torch.dtype):
        return DTYPE_NAMES.get(dtype) or str(dtype).removeprefix("torch.")
    return repr(dtype)


def dtype_kind(dtype: torch.dtype) -> str:
    """``float``, ``complex``, ``bool`` or ``int``: what a tensor of this dtype can stand for."""
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    if dtype == torch.bool:
        return "bool"
    return "int"


__all__ = ["DTYPES", "DTYPE_NAMES", "describe_dtype", "dtype_kind", "dtype_name", "resolve_dtype"]
