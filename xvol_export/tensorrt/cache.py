"""The engine cache of ``xvol bench --backend tensorrt``: an engine is reused only for the same bytes, built the same
way, on the same TensorRT and GPU type.

The folder is ``$XVOL_CACHE_DIR``, else ``$XDG_CACHE_HOME/xvol/engines``, else ``~/.cache/xvol/engines``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from xvol_export.tensorrt.environment import TensorRTEnvironment
from xvol_export.tensorrt.profiles import ShapeProfile

if TYPE_CHECKING:
    from xvol_export.tensorrt.build import EngineSettings


def engine_cache_dir() -> Path:
    """Where cached engines live (see the module's docstring)."""
    if os.environ.get("XVOL_CACHE_DIR"):
        return Path(os.environ["XVOL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xvol" / "engines"


def engine_cache_key(onnx_sha256: str, settings: dict, profiles: list[ShapeProfile],
                     environment: TensorRTEnvironment) -> str:
    """A hex digest of everything the engine depends on: the graph's bytes, the build settings, the
    profiles, the TensorRT version and the GPU's compute capability (not its timing cache)."""
    content = {"onnx_sha256": onnx_sha256, "settings": settings, "profiles": [p.to_dict() for p in profiles],
               "tensorrt": environment.tensorrt, "compute_capability": environment.compute_capability,
               "gpu_name": environment.gpu_name}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def cached_engine_path(onnx_path: str | os.PathLike, key: str) -> Path:
    """``model.onnx`` and a key -> ``CACHE/model-<first 16 hex digits>.engine``."""
    return engine_cache_dir() / f"{Path(onnx_path).stem}-{key[:16]}.engine"


def cached_engine(onnx_path: str | os.PathLike, settings: EngineSettings | None = None,
                  device_index: int = 0) -> Path:
    """The engine for ``onnx_path`` built with ``settings`` on this GPU: from the cache, else built and cached.

    A build whose layers do not run at the graph's precision is refused (:class:`CheckFailed`).
    """
    import onnx

    from xvol_export.errors import CheckFailed
    from xvol_export.io import sha256_file
    from xvol_export.tensorrt.build import EngineSettings, build_engine, plan_profiles, save_engine

    settings = dataclasses.replace(settings or EngineSettings(), device_index=device_index)
    settings.check()
    profiles = plan_profiles(onnx.load(os.fspath(onnx_path), load_external_data=False), settings)
    key = engine_cache_key(sha256_file(onnx_path), settings.to_dict(), profiles,
                           TensorRTEnvironment.current(device_index))
    path = cached_engine_path(onnx_path, key)
    if path.is_file():
        return path
    built = build_engine(onnx_path, settings)
    if not built.layer_check.passed:
        raise CheckFailed(f"{onnx_path}: the TensorRT engine built from it fails its precision check: "
                          f"{built.layer_check.failure()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_engine(built, path, force=True)
    return path
