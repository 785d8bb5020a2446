"""The JSON sidecar of an engine (``NAME.engine.json``): what it was built from, with what, and where.

An engine runs only with the TensorRT version and on the GPU type it was built for (unless built
version- or hardware-compatible). The plan file cannot say so in a way a user can read, so the
sidecar does, and :func:`check_sidecar` compares it with the running TensorRT and GPU before
TensorRT deserializes anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xvol_export.errors import XvolError
from xvol_export.tensorrt.environment import TensorRTEnvironment
from xvol_export.tensorrt.plan import tensorrt_major
from xvol_export.tensorrt.profiles import ShapeProfile

SIDECAR_FORMAT = "xvol.tensorrt-engine"
SIDECAR_VERSION = 1
HARDWARE_COMPAT = ("none", "ampere+", "same-cc")  # trt.HardwareCompatibilityLevel NONE, AMPERE_PLUS, SAME_COMPUTE_...


def sidecar_path(engine: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    return Path(f"{os.fspath(engine)}.json")


def layers_path(engine: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.layers.json``: the engine inspector's layer information."""
    return Path(f"{os.fspath(engine)}.layers.json")


@dataclass(frozen=True)
class EngineSidecar:
    """What an engine was built with: TensorRT version, GPU, precision, profiles, source graph and settings."""

    tensorrt: str
    gpu_name: str
    compute_capability: str
    precision: str
    plan: dict
    profiles: tuple[ShapeProfile, ...]
    onnx_file: str
    onnx_sha256: str
    settings: dict = field(default_factory=dict)  # workspace, opt level, compatibility, timing cache, ...
    xvol: str = ""

    @property
    def version_compatible(self) -> bool:
        return bool(self.settings.get("version_compatible", False))

    @property
    def hardware_compat(self) -> str:
        return str(self.settings.get("hardware_compat", "none"))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["profiles"] = [p.to_dict() for p in self.profiles]
        return {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict, label: str) -> "EngineSidecar":
        if data.get("format") != SIDECAR_FORMAT:
            raise XvolError(f"{label}: is not an xvol engine sidecar (no \"format\": \"{SIDECAR_FORMAT}\"). Remove it "
                            "or rebuild the engine with xvol export --format engine.")
        if data.get("format_version") != SIDECAR_VERSION:
            raise XvolError(f"{label}: sidecar format version {data.get('format_version')!r}; this xvol reads "
                            f"version {SIDECAR_VERSION}. Upgrade xvol or rebuild the engine.")
        try:
            return cls(str(data["tensorrt"]), str(data["gpu_name"]), str(data["compute_capability"]),
                       str(data["precision"]), dict(data["plan"]),
                       tuple(ShapeProfile.from_dict(p) for p in data["profiles"]), str(data["onnx_file"]),
                       str(data["onnx_sha256"]), dict(data.get("settings", {})), str(data.get("xvol", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise XvolError(f"{label}: the engine sidecar is incomplete or damaged ({type(err).__name__}: {err}). "
                            "Rebuild the engine with xvol export --format engine.") from None


def read_sidecar(engine: str | os.PathLike) -> EngineSidecar | None:
    """The sidecar beside ``engine``, or None when there is none; :class:`XvolError` when it is unreadable."""
    path = sidecar_path(engine)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise XvolError(f"{path}: cannot read the engine sidecar ({type(err).__name__}: {err}). Remove it or "
                        "rebuild the engine.") from None
    if not isinstance(data, dict):
        raise XvolError(f"{path}: the engine sidecar is not a JSON object. Remove it or rebuild the engine.")
    return EngineSidecar.from_dict(data, str(path))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in text.split(".")[:3])


def _capability(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return (int(major), int(minor or 0)) if major.isdigit() and (minor or "0").isdigit() else (0, 0)


def check_sidecar(sidecar: EngineSidecar | None, running: TensorRTEnvironment, engine: str | os.PathLike) -> list[str]:
    """Refuse (:class:`XvolError`) an engine built for another TensorRT version or GPU type than ``running``.

    Returns warnings: no sidecar (nothing could be checked), or another GPU model of the same
    compute capability (it runs, but was tuned on the other one).
    """
    if sidecar is None:
        return [f"{engine}: no sidecar ({sidecar_path(engine).name}); the engine's TensorRT version and GPU "
                "could not be checked before loading it"]
    built, here = sidecar.tensorrt, running.tensorrt
    if sidecar.version_compatible:
        if tensorrt_major(built) != tensorrt_major(here) or _version(here) < _version(built):
            raise XvolError(f"{engine}: built version-compatible with TensorRT {built}, which runs on TensorRT "
                            f"{tensorrt_major(built)}.x from {built} on; this machine has TensorRT {here}. Rebuild "
                            "the engine here from its ONNX graph (xvol export MODEL.onnx --format engine).")
    elif _version(built) != _version(here):
        raise XvolError(f"{engine}: built with TensorRT {built}, but this machine has TensorRT {here}; an engine "
                        "runs only on the TensorRT version that built it. Rebuild it here from its ONNX graph "
                        f"({sidecar.onnx_file}: xvol export {sidecar.onnx_file} --format engine), or build it "
                        "with --version-compatible.")
    built_cc, here_cc = _capability(sidecar.compute_capability), _capability(running.compute_capability)
    compat = sidecar.hardware_compat
    fits = here_cc >= (8, 0) if compat == "ampere+" else here_cc == built_cc
    if not fits:
        rule = ("Ampere or newer (compute capability 8.0+)" if compat == "ampere+"
                else f"compute capability {sidecar.compute_capability} ({sidecar.gpu_name})")
        raise XvolError(f"{engine}: built for {rule}, but this GPU is a {running.gpu_name} (compute capability "
                        f"{running.compute_capability}); an engine runs on the GPU type it was built for. Rebuild "
                        f"it on this GPU from {sidecar.onnx_file} (xvol export {sidecar.onnx_file} --format engine).")
    if compat == "none" and sidecar.gpu_name != running.gpu_name:
        return [f"{engine}: built on a {sidecar.gpu_name} and running on a {running.gpu_name} (same compute "
                "capability): it runs, but its kernels were chosen for the other GPU; rebuild here for best speed"]
    return []
