"""TensorRT engines: build from a verified ONNX graph through Polygraphy, check, describe and run them.

Only ``build`` and the runner import TensorRT (lazily, behind :func:`tensorrt_missing`); profiles,
the precision plan, sidecars, the engine cache key and the layer precision check are plain Python
that runs, and is tested, on any machine.
"""

from xvol_export.tensorrt.environment import TensorRTEnvironment, polygraphy_missing, tensorrt_missing
from xvol_export.tensorrt.plan import PrecisionPlan, precision_plan
from xvol_export.tensorrt.profiles import ShapeProfile, default_profiles, parse_profiles, profile_index_for
from xvol_export.tensorrt.sidecar import EngineSidecar, check_sidecar, read_sidecar, sidecar_path

__all__ = [
    "EngineSidecar", "PrecisionPlan", "ShapeProfile", "TensorRTEnvironment", "check_sidecar", "default_profiles",
    "parse_profiles", "polygraphy_missing", "precision_plan", "profile_index_for", "read_sidecar", "sidecar_path",
    "tensorrt_missing",
]
