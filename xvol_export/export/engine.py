"""``xvol export --format engine``: a TensorRT engine from a verified ONNX graph, checked and judged before it is
written.

The ONNX graph is written first (``NAME.onnx`` beside the engine: an engine is rebuilt from it on
every other GPU type). The engine is built through Polygraphy, its layers' precisions checked
against the graph, run on TensorRT against the same reference as the graph, and only then
renamed into place with its sidecar and layer information.
"""

from __future__ import annotations

import os
from pathlib import Path

from xvol_export import cleanup
from xvol_export.compare import Tolerance
from xvol_export.errors import XvolError
from xvol_export.io import check_output_path
from xvol_export.tensorrt.build import EngineSettings, build_engine, save_engine
from xvol_export.tensorrt.environment import engine_build_missing
from xvol_export.tensorrt.sidecar import layers_path, sidecar_path
from xvol_export.verify import Reference, VerifyReport, verify


def engine_files(path: str | os.PathLike) -> list[Path]:
    """``model.engine`` -> the engine, its sidecar ``model.engine.json`` and ``model.engine.layers.json``."""
    return [Path(path), sidecar_path(path), layers_path(path)]


def check_engine_request(settings: EngineSettings, label: str) -> None:
    """Before any work: settings in range, and a machine that can build (:class:`XvolError` otherwise)."""
    settings.check()
    missing = engine_build_missing()
    if missing:
        raise XvolError(f"{label}: --format engine cannot build a TensorRT engine here: {missing}. Export --format "
                        "onnx here and build the engine on the target GPU (xvol export MODEL.onnx --format engine).")


def build_verified_engine(onnx_path: Path, output: Path, settings: EngineSettings, reference: Reference,
                          tolerance: Tolerance | None, seed: int | None,
                          force: bool) -> tuple[VerifyReport | None, dict, list[str], list[Path]]:
    """Build, check and judge the engine; write it only when everything passed.

    Returns the engine's verification (None when its layer check failed first), a summary of the
    build (plan, profiles, layer check, build time), failures, and the files written.
    """
    from xvol_export.runners.tensorrt_runner import TensorRTRunner

    for target in engine_files(output):
        check_output_path(target, force)
    built = build_engine(onnx_path, settings)
    summary = {"plan": built.plan.to_dict(), "profiles": [p.to_dict() for p in built.sidecar.profiles],
               "layer_check": built.layer_check.to_dict(), "build_s": round(built.build_seconds, 3),
               "tensorrt": built.sidecar.tensorrt, "gpu": built.sidecar.gpu_name,
               "compute_capability": built.sidecar.compute_capability}
    if not built.layer_check.passed:
        return None, summary, [f"engine: {built.layer_check.failure()}"], []
    with cleanup.staged(output) as staged:  # named for this process: swept by the next run if it is killed
        save_engine(built, staged, force=True)
        with TensorRTRunner(staged, f"TensorRT engine {built.sidecar.precision}",
                            device_index=settings.device_index) as runner:
            report = verify(reference, runner, tolerance=tolerance, precision=built.sidecar.precision, seed=seed)
        if not report.passed:
            return report, summary, [], []
        for source, target in reversed(list(zip(engine_files(staged), engine_files(output), strict=True))):
            os.replace(source, target)  # the engine last: it never appears without its sidecar
        return report, summary, [], engine_files(output)
