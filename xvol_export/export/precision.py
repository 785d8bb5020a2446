"""Precision of an exported graph: FP16 and INT8 Q/DQ forms of an fp32 ``onnx.ModelProto``.

TensorRT 11 takes precision from the graph itself (it dropped the FP16/INT8 builder flags), so the
conversion happens here, in ONNX, where ONNX Runtime can check it on any CPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import onnx

from xvol_export.errors import XvolError

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Quantized: inputs and weights of the ops that carry weights, as TensorRT's Q/DQ placement advice asks.
# Measured on the digits sample (``samples/``): also quantizing the PSSA aggregate's Add/Mul/ReduceSum/
# Softmax or the residual Adds left accuracy unchanged and doubled the logit error (rel. L2 0.009 -> 0.015).
INT8_OP_TYPES = ("Conv", "Gemm", "MatMul")
_PROTOBUF_LIMIT = 2**31 - 2**26  # a larger model is written with its weights beside it

INT8_TARGETS = ("tensorrt", "onnxruntime", "openvino")
WEIGHT_BITS = ("auto", "8", "7")


@dataclass(frozen=True)
class Int8Layout:
    """How an int8 Q/DQ graph is laid out for the runtime that runs it (``xvol.int8_layout`` in its metadata).

    ``activations``: ``s8`` (symmetric, zero point 0) or ``u8`` (asymmetric); ``weight_bits``: 8, or 7 where the
    target's int8 kernels sum pairs of u8 x s8 products in a saturating int16 (x86 without VNNI): 7-bit weights
    keep every pair sum within it; ``quantize_outputs``: a Q/DQ pair on each quantized op's output too, with an
    int32 bias, so the runtime fuses integer kernels; ``isa``: the instruction set ``weight_bits`` was chosen for.
    """

    target: str
    activations: str
    weight_bits: int
    quantize_outputs: bool
    reason: str
    isa: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# One row per target: what its runtime takes, measured (benchmarks/backends.py, XVol-ResNet-50 at 224, batch 8).
_LAYOUTS = {
    "tensorrt": ("s8", False, "TensorRT takes symmetric int8 Q/DQ (zero point 0) on each op's inputs and fuses the "
                              "bias and output itself; its GPU kernels sum in int32"),
    "onnxruntime": ("u8", True, "ONNX Runtime fuses DQ -> op -> Q into integer u8 x s8 kernels (3.4x faster than "
                                "fp32 measured); with Q/DQ on inputs only it runs float ops on dequantized values, "
                                "no faster than fp32 (s8 activations: 1.4x slower)"),
    "openvino": ("u8", False, "OpenVINO fuses Q/DQ into its own int8 kernels; u8 activations (its native form) "
                              "were the more accurate on the same calibration"),
}


def int8_layout(target: str = "onnxruntime", weight_bits: str | int = "auto") -> Int8Layout:
    """The layout for ``target`` (one of :data:`INT8_TARGETS`); ``weight_bits`` ``auto`` gives 7 where the target's
    CPU kernels can saturate on this machine's ISA (:func:`xvol_export.env.has_vnni`, under oneDNN's cap for
    OpenVINO) and 8 elsewhere (and always for TensorRT)."""
    if target not in _LAYOUTS:
        raise XvolError(f"Unknown int8 target '{target}'. Choose one of: {', '.join(INT8_TARGETS)}.")
    if str(weight_bits) not in WEIGHT_BITS:
        raise XvolError(f"--int8-weight-bits must be one of {', '.join(WEIGHT_BITS)}, got {weight_bits!r}.")
    from xvol_export import env

    activations, outputs, reason = _LAYOUTS[target]
    isa = "" if target == "tensorrt" else ", ".join(env.cpu_features() if target == "onnxruntime"
                                                    else env.onednn_features()) or "no AVX2"
    if str(weight_bits) != "auto":
        bits = int(weight_bits)
    elif target == "tensorrt" or env.has_vnni(target):
        bits = 8
    else:
        bits = 7
        reason += ("; 7-bit weights: without VNNI (" + isa + ") u8 x s8 pair sums saturate int16 at 8 bits "
                   "(XVol-ResNet-50 on OpenVINO capped at AVX2: rel L2 0.92 at 8 bits, 0.16 at 7)")
    return Int8Layout(target, activations, bits, outputs, reason, isa)


def to_fp16(model: onnx.ModelProto, keep_io_types: bool = True) -> onnx.ModelProto:
    """An FP16 copy of ``model``: float16 weights and activations; inputs and outputs stay float32
    (casts at the edges) unless ``keep_io_types`` is False. ``model`` is not modified.

    Uses onnxconverter-common's ``convert_float_to_float16`` (works with onnx 1.23 / protobuf 7) with
    its default op block list; keeping Softmax/ReduceSum of the attention logits in fp32 was measured
    and changed nothing (same top-1, same error), so the graph stays uniformly fp16.
    """
    from onnxconverter_common import float16

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with _quiet():
        return float16.convert_float_to_float16(copy, keep_io_types=keep_io_types)


def to_int8_qdq(
    model: onnx.ModelProto,
    calibration: np.ndarray,
    input_name: str,
    *,
    per_channel: bool = True,
    calibrate_method: str = "minmax",
    batch_size: int = 16,
    nodes_to_exclude: Sequence[str] = (),
    layout: Int8Layout | None = None,
) -> onnx.ModelProto:
    """An INT8 QuantizeLinear/DequantizeLinear copy of ``model``, laid out for ``layout``'s runtime (default: the
    TensorRT layout).

    Activations per tensor as the layout says (s8 symmetric or u8 asymmetric), weights symmetric int8 (7-bit
    where the layout says) per output channel unless ``per_channel`` is False, calibrated by ONNX Runtime's
    ``quantize_static`` on ``calibration``
    (N, C, H, W float images, preprocessed like the model's inputs) fed to ``input_name`` in batches
    of ``batch_size`` (the input's own batch where that is fixed). ``entropy`` searches 2048-bin
    histograms, as TensorRT's calibrator does, where quantize_static takes a calibration cache
    (``calibration_cache_path``, ONNX Runtime 1.32 has it); otherwise quantize_static's own 128-bin
    search, which has a single candidate, the full range. Only the inputs and weights of
    Conv/Gemm/MatMul are quantized; biases and everything else stay float, and so do the one-hot
    grouped convs that take the attention aggregate's shifts (they copy pixels: quantizing them
    would quantize the attention's k and v); a layout with ``quantize_outputs`` also quantizes those ops'
    outputs and biases (int32). ``nodes_to_exclude`` names more nodes to keep in float
    (``xvol_export.export.int8.quantizable_layers`` lists the candidates). ``model`` is not modified.
    Raises :class:`XvolError` for calibration data that does not fit the model.
    """
    if calibrate_method not in CALIBRATION_METHODS:
        raise XvolError(f"Unknown calibration method '{calibrate_method}'. Choose one of: "
                        f"{', '.join(CALIBRATION_METHODS)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise XvolError(f"The calibration batch size must be a positive integer, got {batch_size!r}.")
    images, batch = _check_calibration(model, calibration, input_name, int(batch_size))
    # Every batch the same size: ONNX Runtime's histogram calibrators (percentile, entropy) fail on a
    # short last batch (microsoft/onnxruntime#18792), so it is topped up with the first images again
    # (a repeat moves no min/max and barely a histogram).
    images = np.take(images, np.arange(-(-len(images) // batch) * batch), axis=0, mode="wrap")

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(images):
                return None
            chunk = images[self.start:self.start + batch]
            self.start += batch
            return {input_name: chunk}

        def rewind(self):
            self.start = 0

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[calibrate_method]
    layout = layout or int8_layout("tensorrt")
    extra_options = {"ActivationSymmetric": layout.activations == "s8", "WeightSymmetric": True}
    if not layout.quantize_outputs:
        # Q/DQ on inputs only, float biases: TensorRT and OpenVINO fuse a Conv's bias and output into what follows,
        # and ONNX Runtime runs DQ -> float op, a faithful simulation of the graph.
        extra_options.update({"QuantizeBias": False, "OpTypesToExcludeOutputQuantization": list(INT8_OP_TYPES)})
    model = _named_nodes(model)
    shift_convs = int8_float_nodes(model)
    if isinstance(nodes_to_exclude, str):
        nodes_to_exclude = [nodes_to_exclude]
    unknown = sorted(set(nodes_to_exclude) - {node.name for node in model.graph.node})
    if unknown:
        raise XvolError(f"nodes_to_exclude names no node of the graph: {', '.join(map(repr, unknown))}; "
                        "name Conv/Gemm/MatMul nodes as quantizable_layers(graph) lists them.")
    excluded = list(dict.fromkeys([*shift_convs, *nodes_to_exclude]))
    # quantize_static writes to a path. No quant_pre_process: measured, it changed nothing here and
    # took 3-4x longer.
    large = model.ByteSize() >= _PROTOBUF_LIMIT
    with tempfile.TemporaryDirectory(prefix="xvol-int8-") as tmp, _quiet():
        source, target = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save_model(model, source, save_as_external_data=large)
        cache = {}
        with _calibration_overflow(images):
            if calibrate_method == "entropy" and _takes_calibration_cache(quantize_static):
                cache["calibration_cache_path"] = _entropy_ranges(source, tmp, _Reader(), large, set(excluded),
                                                                  layout.quantize_outputs)
            quantize_static(
                source,
                target,
                _Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8 if layout.activations == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=layout.weight_bits == 7,
                calibrate_method=method,
                op_types_to_quantize=list(INT8_OP_TYPES),
                nodes_to_exclude=excluded,
                use_external_data_format=large,
                extra_options=extra_options,
                **cache,
            )
        return onnx.load_model(target)  # external data too, while the folder exists


@contextlib.contextmanager
def _calibration_overflow(images: np.ndarray):
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


def _takes_calibration_cache(quantize_static) -> bool:
    """Whether this ONNX Runtime's quantize_static can read ranges from a calibration cache instead of calibrating."""
    import inspect

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _entropy_ranges(source: str, folder: str, reader, large: bool, excluded: set[str],
                    quantize_outputs: bool = False) -> str:
    """Entropy (KL) calibration of ``source`` with ``ENTROPY_BINS`` bins, saved as a calibration cache; its path."""
    from pathlib import Path

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


def int8_float_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes every registered block family needs kept in float under INT8 (X-volution: the one-hot shift
    convs), in graph order."""
    from xvol_export.fold.family import families

    kept = {name for family in families() if family.int8_float_nodes for name in family.int8_float_nodes(model)}
    return [node.name for node in model.graph.node if node.name in kept]


def _named_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy in which every node has a unique name (quantize_static excludes nodes by name)."""
    names = [node.name for node in model.graph.node]
    if all(names) and len(set(names)) == len(names):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    seen = set()
    for index, node in enumerate(copy.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_xvol_{index}"
        seen.add(node.name)
    return copy


def _check_calibration(model: onnx.ModelProto, calibration, input_name: str, batch_size: int) -> tuple[np.ndarray, int]:
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
def _quiet():
    """The converters print progress and log advice on the root logger; keep the CLI's stdout clean.

    A NullHandler stands in while the root logger has none, so ``logging.warning`` inside the
    quantizer cannot install a permanent stderr handler (``basicConfig``) behind the caller's back.
    """
    root = logging.getLogger()
    handler = logging.NullHandler() if not root.handlers else None
    if handler is not None:
        root.addHandler(handler)
    advice = _DropPreprocessingAdvice()
    root.addFilter(advice)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(advice)
        if handler is not None:
            root.removeHandler(handler)


class _DropPreprocessingAdvice(logging.Filter):
    """Drops quantize_static's 'consider pre-processing' warning (pre-processing was measured and skipped)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()
