"""How an int8 Q/DQ graph is laid out for the runtime that runs it: activations, weight bits, output Q/DQ."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from xvol_export.errors import XvolError
from xvol_export.naming import setting

# Quantized: inputs and weights of the ops that carry weights, as TensorRT's Q/DQ placement advice asks.
# Measured on the digits sample (``samples/``): also quantizing the PSSA aggregate's Add/Mul/ReduceSum/
# Softmax or the residual Adds left accuracy unchanged and doubled the logit error (rel. L2 0.009 -> 0.015).
INT8_OP_TYPES = ("Conv", "Gemm", "MatMul")
INT8_TARGETS = ("tensorrt", "onnxruntime", "openvino")
WEIGHT_BITS = ("auto", "8", "7")


def check_target(target: str, auto: bool = False) -> str:
    """``target`` if it is one of :data:`INT8_TARGETS` (or ``auto`` where ``auto`` is allowed; :class:`XvolError`
    otherwise)."""
    choices = ("auto", *INT8_TARGETS) if auto else INT8_TARGETS
    if target not in choices:
        raise XvolError(f"Unknown {setting('int8_target')} '{target}'. Choose one of: {', '.join(choices)}.")
    return target


def check_weight_bits(weight_bits: str | int) -> str:
    """``weight_bits`` as text if it is one of :data:`WEIGHT_BITS` (:class:`XvolError` otherwise)."""
    if str(weight_bits) not in WEIGHT_BITS:
        raise XvolError(f"Unknown {setting('int8_weight_bits')} '{weight_bits}'. "
                        f"Choose one of: {', '.join(WEIGHT_BITS)}.")
    return str(weight_bits)


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
    check_target(target)
    check_weight_bits(weight_bits)
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
