"""The calibration set of an int8 graph: loaded and checked against the graph, and ranges computed from it
(ONNX Runtime's calibrators; entropy with TensorRT's histogram sizes)."""

from __future__ import annotations

import contextlib
import inspect
import os
from pathlib import Path

import numpy as np
import onnx

from xvol_export.errors import XvolError
from xvol_export.export.int8.layout import INT8_OP_TYPES
from xvol_export.inputs import load_npz


def load_calibration(calib: str | os.PathLike, channels: int) -> np.ndarray:
    """The calibration images of ``calib`` (``.npz`` with an ``input`` array), checked to be N x ``channels``
    x H x W."""
    images = load_npz(calib).inputs.numpy()
    if images.ndim != 4 or images.shape[1] != channels:
        raise XvolError(
            f"{calib}: calibration images of shape {images.shape} do not fit the model, which takes {channels} "
            f"channel(s): the 'input' array must be N x {channels} x H x W, preprocessed like the model's inputs."
        )
    return images


def check_calibration(model: onnx.ModelProto, calibration, input_name: str, batch_size: int) -> tuple[np.ndarray, int]:
    """The calibration images as a float32 (N, C, H, W) array that fits ``input_name``, and the batch to feed."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    names = ", ".join(repr(i.name) for i in inputs) or "none"
    match = [i for i in inputs if i.name == input_name]
    if not match:
        raise XvolError(f"The model has no input named {input_name!r} (its inputs: {names}); "
                        "pass the name of the image input.")
    if len(inputs) != 1:
        raise XvolError(f"INT8 calibration feeds one image input, but the model has {len(inputs)} inputs ({names}).")
    tensor_type = match[0].type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise XvolError(f"Input {input_name!r} is {dtype}, not FLOAT: quantize the fp32 graph "
                        "(not an fp16 or already quantized one).")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    dim_names = [str(d.dim_value) if d.HasField("dim_value") else d.dim_param or "?" for d in tensor_type.shape.dim]
    expected = " x ".join(dim_names) or "N x C x H x W"

    array = np.asarray(calibration)
    letters = [str(d) if d else a for d, a in zip(dims[1:], "CHW", strict=True)] if len(dims) == 4 else list("CHW")
    wanted = " x ".join(["N", *letters])
    fix = f"pass an {wanted} float32 array of images preprocessed like the model's inputs"
    if not np.issubdtype(array.dtype, np.floating):
        raise XvolError(f"Calibration data must be floating point, got {array.dtype} of shape {array.shape}; {fix}.")
    if array.ndim != 4:
        raise XvolError(f"Calibration data must be 4-D (N, C, H, W), got {array.ndim}-D shape {array.shape}; "
                        f"{fix}" + (", e.g. add the channel axis with images[:, None]." if array.ndim == 3 else "."))
    if len(dims) not in (0, 4):
        raise XvolError(f"Input {input_name!r} has rank {len(dims)} ({expected}); "
                        "INT8 calibration here takes 4-D image inputs.")
    if array.shape[0] == 0:
        raise XvolError(f"The calibration set is empty (shape {array.shape}); pass at least one image, "
                        "ideally a few hundred representative ones that are not the held-out test set.")
    if dims:
        for axis, label in ((1, "channel(s)"), (2, "rows"), (3, "columns")):
            if dims[axis] and array.shape[axis] != dims[axis]:
                raise XvolError(f"Calibration data of shape {array.shape} has {array.shape[axis]} {label}, but "
                                f"input {input_name!r} takes {dims[axis]} ({expected}); {fix}.")
    if not np.isfinite(array).all():
        raise XvolError(f"Calibration data of shape {array.shape} holds NaN or Inf values; pass finite images.")
    batch = dims[0] if dims and dims[0] else min(batch_size, array.shape[0])  # a fixed batch is fed as it is
    return np.ascontiguousarray(array, dtype=np.float32), batch


@contextlib.contextmanager
def calibration_overflow(images: np.ndarray):
    """ONNX Runtime asserts ("scale issue") when a calibrated range is not finite: the calibration images drive
    some activation past float32's range. Say so about the data, with its largest value."""
    try:
        yield
    except AssertionError as err:
        if "scale" not in str(err):
            raise
        largest = float(np.abs(images).max()) if images.size else 0.0
        raise XvolError(f"The calibration images (largest |value| {largest:.3g}) drive the graph's activations past "
                        "float32's range, so no int8 scale can be computed. Pass images preprocessed like the "
                        "model's inputs (values of order 1).") from None


# Entropy histograms as TensorRT's calibrator keeps them: 2048 bins searched for the best 128-bin window.
# quantize_static's own entropy calibration uses 128 bins for a 128-bin window, which leaves one candidate,
# the full range: its scales came out identical to minmax on every tensor of the digits sample.
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128


def takes_calibration_cache(quantize_static) -> bool:
    """Whether this ONNX Runtime's quantize_static can read ranges from a calibration cache instead of calibrating."""
    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def entropy_ranges(source: str, folder: str, reader, large: bool, excluded: set[str],
                    quantize_outputs: bool = False) -> str:
    """Entropy (KL) calibration of ``source`` with ``ENTROPY_BINS`` bins, saved as a calibration cache; its path."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        Path(source),
        list(INT8_OP_TYPES),
        augmented_model_path=os.path.join(folder, "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        use_external_data_format=large,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    calibrator.collect_data(reader)
    # The KL search is slow Python (~0.5 s per tensor at 2048 bins): search only the tensors that get a Q/DQ
    # pair, the activation inputs of the quantized ops (their outputs too in a layout that quantizes them),
    # not the excluded ops' inputs.
    histograms = getattr(getattr(calibrator, "collector", None), "histogram_dict", None)
    if isinstance(histograms, dict):
        model = onnx.load_model(source, load_external_data=False)
        weights = {init.name for init in model.graph.initializer}
        quantized = [node for node in model.graph.node if node.op_type in INT8_OP_TYPES and node.name not in excluded]
        wanted = {node.input[0] for node in quantized}
        wanted |= {node.input[1] for node in quantized if node.op_type == "MatMul"}
        if quantize_outputs:
            wanted |= {node.output[0] for node in quantized}
        wanted -= weights
        for name in [name for name in histograms if name not in wanted]:
            del histograms[name]
    path = os.path.join(folder, "entropy-ranges.json")
    save_tensors_data(calibrator.compute_data(), path)
    return path
