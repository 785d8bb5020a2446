"""ONNX export steps as small functions on ``onnx.ModelProto``: export, check, simplify, tag, save."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator

import onnx
import torch
from torch import nn

from xvol_export.cleanup import staged, temporary_folder
from xvol_export.errors import XvolError
from xvol_export.graph_info import graph_precision, op_counts, read_metadata
from xvol_export.io import atomic_write, check_output_path
from xvol_export.metadata_keys import VERIFIED

EXPORTERS = ("torchscript", "dynamo")
# Opsets each exporter can write; the design asks for 17 or newer.
OPSET_RANGES = {"torchscript": (17, 20), "dynamo": (18, 23)}
DEFAULT_OPSET = 17
SIMPLIFIERS = ("onnxslim", "onnxsim")
# Protobuf cannot serialize a model over 2 GiB: larger ones keep their weights beside the file.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
INPUT_NAME, OUTPUT_NAME = "input", "output"


def check_opset(opset: int, exporter: str) -> None:
    if exporter not in EXPORTERS:
        raise XvolError(f"Unknown exporter '{exporter}'. Choose one of: {', '.join(EXPORTERS)}.")
    low, high = OPSET_RANGES[exporter]
    if not low <= opset <= high:
        raise XvolError(
            f"Opset {opset} is not available with the {exporter} exporter: it writes opsets {low} to {high}"
            + (" (X-volution graphs need 17 or newer)." if opset < 17 else ".")
            + f" Choose --opset between {low} and {high}."
        )


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = False,
    exporter: str = "torchscript",
) -> onnx.ModelProto:
    """Export an eval-mode model with one input ``input`` (NCHW) and its outputs named as :func:`output_names`
    names them (one tensor: ``output``).

    ``dynamic`` makes batch, height and width symbolic (``batch``, ``height``, ``width``).
    """
    check_opset(opset, exporter)
    example = torch.zeros(input_shape, dtype=next(model.parameters()).dtype)
    outputs = output_names(model, example)
    with temporary_folder() as tmp, _quiet():
        path = os.path.join(tmp, "model.onnx")
        if exporter == "torchscript":
            axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, **{n: {0: "batch"} for n in outputs}}
            torch.onnx.export(model, (example,), path, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=outputs, dynamic_axes=axes if dynamic else None, do_constant_folding=True)
        else:
            _require("onnxscript", "the dynamo exporter", "dynamo")
            shapes = None
            if dynamic:
                dims = (torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width"))
                shapes = ({0: dims[0], 2: dims[1], 3: dims[2]},)
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=outputs,
                                        dynamic_shapes=shapes, verbose=False)
            program.save(path)
        return onnx.load(path, load_external_data=True)


def output_names(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The graph's output names, those the verification gives the PyTorch model's outputs: ``output`` for one
    tensor, ``output0``, ``output1``, ... for a tuple or list, the keys of a dict (the model is run once)."""
    from xvol_export.runners.base import named_outputs

    with torch.inference_mode():
        return list(named_outputs(model(example)))


def check_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.checker`` with full checks, then shape inference; returns the shape-inferred model."""
    try:
        if model.ByteSize() < EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(model, full_check=True)
            return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        with temporary_folder() as tmp:  # the checker reads large models from a path
            path = os.path.join(tmp, "model.onnx")
            onnx.save_model(_copy(model), path, save_as_external_data=True, location="model.onnx.data")
            onnx.checker.check_model(path, full_check=True)
            onnx.shape_inference.infer_shapes_path(path, path, check_type=True, strict_mode=True)
            return onnx.load(path)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise RuntimeError(f"the exported graph fails onnx.checker: {err}") from err


def simplify(model: onnx.ModelProto, simplifier: str = "onnxslim") -> onnx.ModelProto:
    """Constant folding and graph clean-up with ``onnxslim`` or ``onnxsim``; symbolic dims are kept."""
    if simplifier not in SIMPLIFIERS:
        raise XvolError(f"Unknown simplifier '{simplifier}'. Choose one of: {', '.join(SIMPLIFIERS)}.")
    with _quiet():
        if simplifier == "onnxslim":
            import onnxslim

            return onnxslim.slim(model)
        _require("onnxsim", "--simplifier onnxsim", "onnxsim")
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise RuntimeError("onnxsim could not validate its simplified graph")
        return simplified


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> onnx.ModelProto:
    """Replace ``metadata_props`` entries with these key/value strings (others are kept)."""
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))
    return model


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write atomically; a model over 2 GB keeps its weights in ``NAME.data`` beside it. Returns the files."""
    path = Path(path)
    if model.ByteSize() < EXTERNAL_DATA_THRESHOLD:
        with atomic_write(path, force) as tmp:
            onnx.save_model(model, tmp)
        return [path]
    data_path = path.with_name(path.name + ".data")
    check_output_path(path, force)
    check_output_path(data_path, force)
    with staged(path) as aside:  # both files are written aside, then renamed into place
        onnx.save_model(_copy(model), aside, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_path.name)
        os.replace(aside.with_name(data_path.name), data_path)
        os.replace(aside, path)
    return [path, data_path]


@contextlib.contextmanager
def runnable(model: onnx.ModelProto) -> Iterator[bytes | str]:
    """What ONNX Runtime can open for ``model``: its bytes, or a temporary file when over 2 GB."""
    if model.ByteSize() < EXTERNAL_DATA_THRESHOLD:
        yield model.SerializeToString()
        return
    with temporary_folder() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save_model(_copy(model), path, save_as_external_data=True, location="model.onnx.data")
        yield path


def _require(module: str, feature: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise XvolError(f"{feature} needs {module}, which is not installed: pip install 'xvol[{extra}]' "
                        f"(or pip install {module}).")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Saving with external data rewrites the initializers in place: save a copy instead."""
    duplicate = onnx.ModelProto()
    duplicate.CopyFrom(model)
    return duplicate


@contextlib.contextmanager
def _quiet():
    """Exporters and simplifiers print progress and deprecation chatter; keep the CLI's output clean."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def describe_graph(path: str | os.PathLike) -> dict:
    """What ``xvol inspect`` says of an ONNX file: inputs, outputs, opset, precision, op counts, and whether
    TensorRT's ONNX parser would take every node (checked on the CPU)."""
    from xvol_export.io import sha256_file
    from xvol_export.tensorrt.ops import compatibility_report

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises several types for damaged files
        raise XvolError(f"{path}: is not a readable ONNX file ({type(err).__name__}). Export it again.") from None

    def tensors(values) -> dict:
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    initializers = {init.name for init in model.graph.initializer}
    return {
        "path": os.fspath(path), "sha256": sha256_file(path),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "precision": graph_precision(model),
        "inputs": tensors(v for v in model.graph.input if v.name not in initializers),
        "outputs": tensors(model.graph.output), "nodes": len(model.graph.node), "ops": op_counts(model),
        "metadata": {k: v for k, v in read_metadata(model).items() if k != VERIFIED},
        "tensorrt_compatibility": compatibility_report(model),
    }
