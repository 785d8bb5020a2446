"""INT8 Q/DQ: an int8 QuantizeLinear/DequantizeLinear copy of an fp32 graph, by ONNX Runtime's ``quantize_static``,
in the layout of the runtime that runs it; the nodes each block family keeps in float stay float."""

from __future__ import annotations

import os
import tempfile
from typing import Sequence

import numpy as np
import onnx

from xvol_export.errors import XvolError
from xvol_export.export.int8.calibration import (
    calibration_overflow,
    check_calibration,
    entropy_ranges,
    takes_calibration_cache,
)
from xvol_export.export.int8.layout import INT8_OP_TYPES, Int8Layout, int8_layout
from xvol_export.export.int8.options import check_method
from xvol_export.export.quiet import quiet_converters

_PROTOBUF_LIMIT = 2**31 - 2**26  # a larger model is written with its weights beside it


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
    (:func:`~xvol_export.export.int8.variants.quantizable_layers` lists the candidates). ``model`` is not modified.
    Raises :class:`XvolError` for calibration data that does not fit the model.
    """
    check_method(calibrate_method)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise XvolError(f"The calibration batch size must be a positive integer, got {batch_size!r}.")
    images, batch = check_calibration(model, calibration, input_name, int(batch_size))
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
    model = named_nodes(model)
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
    with tempfile.TemporaryDirectory(prefix="xvol-int8-") as tmp, quiet_converters():
        source, target = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save_model(model, source, save_as_external_data=large)
        cache = {}
        with calibration_overflow(images):
            if calibrate_method == "entropy" and takes_calibration_cache(quantize_static):
                cache["calibration_cache_path"] = entropy_ranges(source, tmp, _Reader(), large, set(excluded),
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


def int8_float_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes every registered block family needs kept in float under INT8 (X-volution: the one-hot shift
    convs), in graph order."""
    from xvol_export.fold.family import families

    kept = {name for family in families() if family.int8_float_nodes for name in family.int8_float_nodes(model)}
    return [node.name for node in model.graph.node if node.name in kept]


def named_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
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
