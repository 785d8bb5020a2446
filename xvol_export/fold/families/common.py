"""What several built-in families share: labels of convs for ``inspect``, and the check of a deploy config."""

from __future__ import annotations

from typing import Any


def conv_label(kh: int, kw: int, stride: int = 1, dilation: int = 1, groups: int = 1, in_channels: int = 0) -> str:
    """``conv3x1``, ``dwconv3x3`` (depthwise), ``conv3x3/g2``, with ``/d2`` (dilation) and ``/s2`` (stride)."""
    depthwise = groups > 1 and groups == in_channels
    label = f"{'dw' if depthwise else ''}conv{kh}x{kw}"
    if groups > 1 and not depthwise:
        label += f"/g{groups}"
    if dilation > 1 and (kh > 1 or kw > 1):
        label += f"/d{dilation}"
    return label + (f"/s{stride}" if stride > 1 else "")


def checked_config(config: dict[str, Any], names: tuple[str, ...], family: str) -> dict[str, Any]:
    """``config`` if it is a dict with exactly ``names`` as keys, else a ValueError naming the difference."""
    if not isinstance(config, dict):
        raise ValueError(f"a {family} deploy config must be a dict, got {type(config).__name__}")
    missing, unknown = sorted(set(names) - set(config)), sorted(set(config) - set(names))
    if missing or unknown:
        raise ValueError(f"bad {family} deploy config: missing {missing}, unknown {unknown}; it takes {list(names)}")
    return config
