"""Precision of an exported graph: the FP16 form of an fp32 ``onnx.ModelProto`` (INT8 is
:mod:`xvol_export.export.int8`; its names are importable here too, for the CLI and the benchmarks).

TensorRT 11 takes precision from the graph itself (it dropped the FP16/INT8 builder flags), so the
conversion happens here, in ONNX, where ONNX Runtime can check it on any CPU.
"""

from __future__ import annotations

import onnx

from xvol_export.export.int8 import (  # noqa: F401 - where the CLI and the benchmarks find them
    CALIBRATION_METHODS,
    INT8_OP_TYPES,
    INT8_TARGETS,
    WEIGHT_BITS,
    Int8Layout,
    int8_float_nodes,
    int8_layout,
    to_int8_qdq,
)
from xvol_export.export.quiet import quiet_converters


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
    with quiet_converters():
        return float16.convert_float_to_float16(copy, keep_io_types=keep_io_types)

