"""Strict JSON reports, written atomically."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from xvol_export.io import atomic_write


def write_json(path: str | os.PathLike, payload: dict, force: bool = False) -> None:
    """Write a JSON report atomically; NaN and infinite figures (a broken candidate's) become the strings
    "NaN", "Infinity" and "-Infinity", so that strict JSON readers accept the file."""
    text = json.dumps(_strict(json.loads(json.dumps(payload, default=_json_default))), indent=2, allow_nan=False)
    text += "\n"
    with atomic_write(path, force, size=len(text.encode())) as tmp:
        tmp.write_text(text)


def _strict(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strict(item) for item in value]
    return value


def _json_default(value):
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
