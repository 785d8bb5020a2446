"""INT8 for an exported graph, behind one :func:`quantize`: its options (:class:`Int8Options`, checked once),
the calibration set, the Q/DQ layout of each target runtime, per-layer sensitivity, and float fallback to an
accuracy budget. Each step has its module; the names a caller needs are here."""

from xvol_export.export.int8.calibration import check_calibration, load_calibration
from xvol_export.export.int8.fallback import FallbackResult, quantize_with_fallback
from xvol_export.export.int8.figures import Figures, evaluate
from xvol_export.export.int8.layout import (
    INT8_OP_TYPES,
    INT8_TARGETS,
    WEIGHT_BITS,
    Int8Layout,
    check_target,
    check_weight_bits,
    int8_layout,
)
from xvol_export.export.int8.options import (
    CALIBRATION_METHODS,
    METRICS,
    TARGET_OF_FORMAT,
    AccuracyBudget,
    Int8Options,
    check_method,
    parse_budget,
)
from xvol_export.export.int8.qdq import int8_float_nodes, named_nodes, to_int8_qdq
from xvol_export.export.int8.quantize import Quantized, quantize
from xvol_export.export.int8.sensitivity import LayerSensitivity, SensitivityReport, layer_sensitivity
from xvol_export.export.int8.variants import QuantizedBase, keep_in_float, quantizable_layers, quantize_once
from xvol_export.metadata_keys import INT8_CALIBRATION as CALIBRATION_KEY
from xvol_export.metadata_keys import INT8_FALLBACK as FALLBACK_KEY
from xvol_export.metadata_keys import INT8_LAYOUT as INT8_LAYOUT_KEY

__all__ = [
    "AccuracyBudget", "CALIBRATION_KEY", "CALIBRATION_METHODS", "FALLBACK_KEY", "FallbackResult", "Figures",
    "INT8_LAYOUT_KEY", "INT8_OP_TYPES", "INT8_TARGETS", "Int8Layout", "Int8Options", "LayerSensitivity", "METRICS",
    "Quantized", "QuantizedBase", "SensitivityReport", "TARGET_OF_FORMAT", "WEIGHT_BITS", "check_calibration",
    "check_method", "check_target", "check_weight_bits", "evaluate", "int8_float_nodes", "int8_layout",
    "keep_in_float", "layer_sensitivity", "load_calibration", "named_nodes", "parse_budget", "quantizable_layers",
    "quantize", "quantize_once", "quantize_with_fallback", "to_int8_qdq",
]
