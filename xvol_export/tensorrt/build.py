"""Build a TensorRT engine from an ONNX graph through Polygraphy's loaders, and check what was built.

Polygraphy (NVIDIA's, maintained against every TensorRT release) parses the graph, creates the
builder config and builds; TensorRT is called directly only for what Polygraphy leaves to its
caller: the engine inspector's layer information. Everything here needs TensorRT, Polygraphy
and a CUDA GPU; :func:`engine_build_missing` says which is missing.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from xvol_export import __version__
from xvol_export.errors import XvolError
from xvol_export.graph_info import graph_precision
from xvol_export.io import atomic_write, sha256_file
from xvol_export.tensorrt.environment import TensorRTEnvironment, engine_build_missing
from xvol_export.tensorrt.layers import LayerPrecisionCheck, check_layer_precisions, expected_precisions
from xvol_export.tensorrt.ops import check_tensorrt_compatible
from xvol_export.tensorrt.plan import PrecisionPlan, precision_plan
from xvol_export.tensorrt.profiles import (
    GraphShape,
    ShapeProfile,
    check_shape_options,
    default_profiles,
    parse_profiles,
)
from xvol_export.tensorrt.sidecar import HARDWARE_COMPAT, EngineSidecar, layers_path, sidecar_path

OPT_LEVELS = range(0, 6)  # TensorRT's builder optimization levels; 3 is its default


@dataclass(frozen=True)
class EngineSettings:
    """How to build: memory, effort, shapes, compatibility, and the fp32 math a user allows.

    ``min_shapes``/``opt_shapes``/``max_shapes`` hold one value per profile (see
    :mod:`xvol_export.tensorrt.profiles`); without them one profile comes from ``batch`` and ``imgsz``.
    ``timing_cache`` is read when it exists and written after the build.
    """

    workspace_gib: float | None = None
    opt_level: int | None = None
    min_shapes: tuple[str, ...] = ()
    opt_shapes: tuple[str, ...] = ()
    max_shapes: tuple[str, ...] = ()
    batch: int = 1
    imgsz: tuple[int, int] | None = None
    timing_cache: str | None = None
    version_compatible: bool = False
    hardware_compat: str = "none"
    tf32: bool = False
    fp16_tactics: bool = False
    device_index: int = 0

    def check(self) -> None:
        """:class:`XvolError` for a value no build could use."""
        if self.workspace_gib is not None and not (math.isfinite(self.workspace_gib) and self.workspace_gib > 0):
            raise XvolError(f"--workspace must be a positive number of GiB, got {self.workspace_gib}.")
        if self.opt_level is not None and self.opt_level not in OPT_LEVELS:
            raise XvolError(f"--opt-level must be 0 to 5 (TensorRT's builder optimization level), got "
                            f"{self.opt_level}.")
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise XvolError(f"--hardware-compat must be one of {', '.join(HARDWARE_COMPAT)}, got "
                            f"'{self.hardware_compat}'.")
        if self.batch < 1:
            raise XvolError(f"--batch must be at least 1, got {self.batch}.")
        check_shape_options(list(self.min_shapes), list(self.opt_shapes), list(self.max_shapes))

    def to_dict(self) -> dict:
        """What the engine depends on (the timing cache's path does not change the engine: it is left out)."""
        return {"workspace_gib": self.workspace_gib, "opt_level": self.opt_level,
                "version_compatible": self.version_compatible, "hardware_compat": self.hardware_compat,
                "tf32": self.tf32, "fp16_tactics": self.fp16_tactics}


@dataclass
class BuiltEngine:
    """A serialized engine, not yet written, with what was checked about it."""

    serialized: bytes
    sidecar: EngineSidecar
    layer_info: dict
    layer_check: LayerPrecisionCheck
    plan: PrecisionPlan
    build_seconds: float
    notes: list[str] = field(default_factory=list)


def graph_inputs(graph: onnx.ModelProto) -> dict[str, GraphShape]:
    """Every true input of ``graph`` (not an initializer) with its declared shape, None where dynamic."""
    initializers = {init.name for init in graph.graph.initializer}
    return {value.name: tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                              for d in value.type.tensor_type.shape.dim)
            for value in graph.graph.input if value.name not in initializers}


def plan_profiles(graph: onnx.ModelProto, settings: EngineSettings) -> list[ShapeProfile]:
    """The profiles to build: the user's, else one from ``--batch``/``--imgsz``."""
    inputs = graph_inputs(graph)
    given = parse_profiles(inputs, list(settings.min_shapes), list(settings.opt_shapes), list(settings.max_shapes))
    return given or default_profiles(inputs, settings.batch, settings.imgsz)


def build_engine(onnx_path: str | os.PathLike, settings: EngineSettings = EngineSettings()) -> BuiltEngine:
    """Build an engine from the ONNX file at ``onnx_path`` at the precision its graph holds.

    Refuses (:class:`XvolError`) a machine without TensorRT, Polygraphy or a GPU, settings out of
    range, a graph TensorRT's parser would refuse, and a precision request the TensorRT version
    cannot honour. The layer precision check is returned, not raised: the caller decides.
    """
    settings.check()
    missing = engine_build_missing()
    if missing:
        raise XvolError(f"{onnx_path}: cannot build a TensorRT engine here: {missing}.")

    graph = onnx.load(os.fspath(onnx_path), load_external_data=False)
    check_tensorrt_compatible(graph, str(onnx_path))
    environment = TensorRTEnvironment.current(settings.device_index)
    precision = graph_precision(graph)
    plan = precision_plan(precision, environment.tensorrt, settings.tf32, settings.fp16_tactics)
    profiles = plan_profiles(graph, settings)
    start = time.perf_counter()
    serialized, layer_info = _build_with_polygraphy(Path(onnx_path), plan, profiles, settings)
    elapsed = time.perf_counter() - start
    sidecar = EngineSidecar(
        tensorrt=environment.tensorrt, gpu_name=environment.gpu_name,
        compute_capability=environment.compute_capability, precision=precision, plan=plan.to_dict(),
        profiles=tuple(profiles), onnx_file=Path(onnx_path).name, onnx_sha256=sha256_file(onnx_path),
        settings=settings.to_dict(), xvol=__version__,
    )
    check = check_layer_precisions(layer_info, expected_precisions(graph), plan)
    return BuiltEngine(serialized, sidecar, layer_info, check, plan, elapsed)


def _build_with_polygraphy(onnx_path: Path, plan: PrecisionPlan, profiles: list[ShapeProfile],
                           settings: EngineSettings) -> tuple[bytes, dict]:
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, EngineFromBytes, NetworkFromOnnxPath
    from polygraphy.backend.trt import Profile as PolygraphyProfile

    trt_profiles = []
    for profile in profiles:
        trt_profile = PolygraphyProfile()
        for shape_range in profile.ranges:
            trt_profile.add(shape_range.name, min=shape_range.min, opt=shape_range.opt, max=shape_range.max)
        trt_profiles.append(trt_profile)
    pools = ({trt.MemoryPoolType.WORKSPACE: int(settings.workspace_gib * (1 << 30))}
             if settings.workspace_gib is not None else None)
    compat = {"none": trt.HardwareCompatibilityLevel.NONE, "ampere+": trt.HardwareCompatibilityLevel.AMPERE_PLUS,
              "same-cc": trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY}[settings.hardware_compat]
    timing_cache = settings.timing_cache
    config = CreateConfig(
        tf32="TF32" in plan.flags, fp16="FP16" in plan.flags, profiles=trt_profiles, memory_pool_limits=pools,
        builder_optimization_level=settings.opt_level, hardware_compatibility_level=compat,
        version_compatible=settings.version_compatible or None,
        load_timing_cache=timing_cache if timing_cache and os.path.isfile(timing_cache) else None,
        profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
    )
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=plan.strongly_typed)
    try:
        serialized = bytes(EngineBytesFromNetwork(network, config, save_timing_cache=timing_cache)())
    except Exception as err:  # noqa: BLE001 - Polygraphy raises PolygraphyException with TensorRT's log
        raise XvolError(f"{onnx_path}: TensorRT could not build an engine ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[-1] if str(err).strip() else 'no message'}). Re-run with "
                        "--debug for TensorRT's log.") from None
    engine = EngineFromBytes(serialized)()
    inspector: trt.EngineInspector = engine.create_engine_inspector()
    layer_info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return serialized, layer_info


def save_engine(built: BuiltEngine, path: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write the plan file at ``path``, its sidecar ``path.json`` and its layer information ``path.layers.json``.

    The sidecar and layer files are written first and the engine last, each atomically, so an engine
    never appears without its sidecar.
    """
    sidecar, layers = sidecar_path(path), layers_path(path)
    with atomic_write(layers, force) as tmp:
        tmp.write_text(json.dumps(built.layer_info, indent=2, sort_keys=True) + "\n")
    with atomic_write(sidecar, force) as tmp:
        tmp.write_text(json.dumps(built.sidecar.to_dict(), indent=2, sort_keys=True) + "\n")
    with atomic_write(path, force) as tmp:
        tmp.write_bytes(built.serialized)
    return [Path(path), sidecar, layers]
