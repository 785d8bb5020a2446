"""How an engine gets the precision its graph asks for, on TensorRT 10 and on TensorRT 11.

The precision lives in the ONNX graph (fp32 weights, an fp16 graph, or Q/DQ int8). A strongly typed
network makes TensorRT follow those types exactly: optional on TensorRT 10, the only kind on 11,
which dropped the FP16/INT8/BF16 builder flags. Builder flags remain for one case, on TensorRT 10
only: an fp32 graph whose user lets TensorRT autotune layers in fp16. TF32 (an fp32 math mode, not
a type) is a builder flag on both and off unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from xvol_export.errors import XvolError

GRAPH_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class PrecisionPlan:
    """The network kind and builder flags (``trt.BuilderFlag`` names) for a graph of ``graph_precision``;
    ``float_layers`` are the precisions its float (not Q/DQ) compute layers may run in."""

    graph_precision: str
    tensorrt_major: int
    strongly_typed: bool
    flags: tuple[str, ...]
    float_layers: tuple[str, ...]

    def describe(self) -> str:
        kind = "strongly typed" if self.strongly_typed else "weakly typed"
        flags = f", builder flags {'+'.join(self.flags)}" if self.flags else ""
        return f"{self.graph_precision} graph, {kind} network on TensorRT {self.tensorrt_major}{flags}"

    def to_dict(self) -> dict:
        return {"graph_precision": self.graph_precision, "tensorrt_major": self.tensorrt_major,
                "strongly_typed": self.strongly_typed, "flags": list(self.flags),
                "float_layers": list(self.float_layers)}


def tensorrt_major(version: str) -> int:
    """``"10.13.0.35"`` -> 10; :class:`XvolError` for a version xvol cannot read."""
    head = version.split(".")[0]
    if not head.isdigit():
        raise XvolError(f"Cannot read the TensorRT version '{version}'.")
    return int(head)


def precision_plan(graph_precision: str, tensorrt_version: str, tf32: bool = False,
                   fp16_tactics: bool = False) -> PrecisionPlan:
    """The plan for building a ``graph_precision`` graph with TensorRT ``tensorrt_version``.

    ``tf32`` lets fp32 layers use TF32 math; ``fp16_tactics`` lets TensorRT 10 run an fp32 graph's layers
    in fp16 where faster (a weakly typed network with the FP16 flag). :class:`XvolError` refuses what
    the version cannot do: TensorRT before 10, and fp16 autotuning on TensorRT 11 or of a graph
    that is not fp32 (its precision is already in the graph).
    """
    if graph_precision not in GRAPH_PRECISIONS:
        raise XvolError(f"Unknown graph precision '{graph_precision}': TensorRT engines are built from fp32, fp16 "
                        "or Q/DQ int8 graphs (xvol export --precision).")
    major = tensorrt_major(tensorrt_version)
    if major < 10:
        raise XvolError(f"TensorRT {tensorrt_version} is too old: xvol builds engines with TensorRT 10 or later "
                        "(named tensors and strongly typed networks). pip install 'xvol[tensorrt]'.")
    base = ("TF32",) if tf32 else ()
    float_type = "fp16" if graph_precision == "fp16" else "fp32"
    if not fp16_tactics:
        return PrecisionPlan(graph_precision, major, True, base, (float_type,))
    if major >= 11:
        raise XvolError(f"TensorRT {tensorrt_version} takes precision from the graph only (TensorRT 11 removed the "
                        "FP16 builder flag): export an fp16 graph (xvol export --precision fp16) instead of "
                        "--fp16-tactics.")
    if graph_precision != "fp32":
        raise XvolError(f"--fp16-tactics applies to fp32 graphs; this graph is {graph_precision}, and its "
                        "precision comes from the graph itself.")
    return PrecisionPlan(graph_precision, major, False, (*base, "FP16"), ("fp32", "fp16"))
