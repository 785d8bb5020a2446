"""Open any artifact (checkpoint, ONNX graph, OpenVINO IR, TensorRT engine) as a runner on a backend."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xvol_export.backends import RunnerOptions, backends_for
from xvol_export.errors import XvolError
from xvol_export.io import CHECKPOINT_SUFFIXES
from xvol_export.limits import check_input_file
from xvol_export.metadata_keys import INPUT_SHAPE
from xvol_export.runners import Runner

if TYPE_CHECKING:
    from torch import nn

    from xvol_export.checkpoint import Checkpoint, LoadOptions

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
OPENVINO_SUFFIXES = (".xml",)  # an OpenVINO IR: NAME.xml with its weights in NAME.bin


@dataclass
class Artifact:
    path: Path
    kind: str  # "checkpoint", "onnx", "openvino" or "engine" (xvol_export.backends.KIND_NAMES)
    runner: Runner
    input_size: tuple[int, ...] | None  # (C, H, W) where known
    model: nn.Module | None = None  # checkpoints only
    checkpoint: Checkpoint | None = None


def artifact_kind(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    if suffix in OPENVINO_SUFFIXES:
        return "openvino"
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    raise XvolError(
        f"{path}: unknown artifact type '{suffix}'. xvol reads checkpoints ({', '.join(CHECKPOINT_SUFFIXES)}), "
        f"ONNX graphs (.onnx), OpenVINO IR (.xml) and TensorRT engines ({', '.join(ENGINE_SUFFIXES)})."
    )


def open_artifact(path: str | os.PathLike, load: LoadOptions | None = None, name: str | None = None,
                  backend: str | None = None, options: RunnerOptions = RunnerOptions()) -> Artifact:
    """The artifact at ``path`` with a runner on ``backend`` (default: its kind's), named ``name`` (default:
    the file name). :class:`XvolError` when the file is missing, or the backend cannot open it or run here."""
    path = check_input_file(path, "artifact")  # a named pipe would block for ever
    kind = artifact_kind(path)
    if not path.is_file():
        raise XvolError(f"{path}: no such file. Check the path (relative paths start from the current folder).")
    if kind == "openvino" and not path.with_suffix(".bin").is_file():
        raise XvolError(f"{path}: its weights file {path.with_suffix('.bin').name} is missing; an OpenVINO IR is "
                        "NAME.xml with NAME.bin beside it. Copy both, or export again with --format openvino.")
    chosen = backends_for(path, kind, (backend,) if backend else None)[0]
    label = name or path.name
    model, ckpt = None, None
    if kind == "checkpoint":
        from xvol_export.checkpoint import LoadOptions

        model, ckpt = (load or LoadOptions()).load(path)
    runner = chosen.make(path, model, label, options)
    if kind == "checkpoint":
        return Artifact(path, kind, runner, getattr(model, "input_size", None), model, ckpt)
    return Artifact(path, kind, runner, onnx_input_size(path) if kind == "onnx" else _ir_input_size(runner))


def _ir_input_size(runner: Runner) -> tuple[int, ...] | None:
    shape = next(iter(runner.input_metadata().values())).shape
    return tuple(shape[1:]) if len(shape) == 4 and all(shape[1:]) else None


def onnx_input_size(path: Path) -> tuple[int, ...] | None:
    """``(C, H, W)`` from the graph's first input, or from xvol's metadata when the dims are symbolic."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises several types for damaged files
        raise XvolError(f"{path}: is not a readable ONNX file ({type(err).__name__}). Export it again.") from None
    if not model.graph.input:
        raise XvolError(f"{path}: the ONNX graph has no input.")
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and all(dims[1:]):
        return tuple(dims[1:])
    nominal = {p.key: p.value for p in model.metadata_props}.get(INPUT_SHAPE)
    return tuple(int(d) for d in nominal.split("x")[1:]) if nominal else None
