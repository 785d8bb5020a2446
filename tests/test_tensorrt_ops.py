"""xvol_export.tensorrt.ops: onnx-tensorrt's operator table as data, checked on the CPU.

Every graph the project exports passes; hand-made graphs with what the table refuses (an unsupported or
custom operator, a refused attribute value, a type, a run-time input that must be constant) are refused
with the node, the operator and the reason named."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import xvol_export
from xvol_export import graph_info
from xvol_export.errors import XvolError
from xvol_export.export import onnx_graph
from xvol_export.jobs import ExportSettings, Int8Options, export_checkpoint
from xvol_export.tensorrt.ops import (
    TENSORRT_OPS_SOURCE,
    Incompatibility,
    check_tensorrt_compatible,
    tensorrt_incompatibilities,
)

from helpers import run_cli

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
CHECKPOINT = SAMPLES / "digits_xvol_resnet_tiny.pth"
CALIB = SAMPLES / "digits_calib.npz"
TABLE = json.loads(resources.files("xvol_export.tensorrt").joinpath("ops.json").read_text("utf-8"))
OPS = TABLE["operators"]
EXPORTS = [(precision, dynamic) for precision in ("fp32", "fp16", "int8") for dynamic in (False, True)]


# ------------------------------------------------------------------------------------------ helpers

def model_of(nodes, inputs, outputs, initializers=(), opset: int = 17, **kwargs) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(initializers))
    kwargs.setdefault("opset_imports", [helper.make_opsetid("", opset)])
    return helper.make_model(graph, **kwargs)


def tensor(name: str, dtype=TensorProto.FLOAT, shape=(1, 3, 8, 8)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def const(name: str, values, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def refusal(model: onnx.ModelProto, label: str = "model.onnx") -> str:
    """The message check_tensorrt_compatible raises, asserting it is an XvolError with exit code 2."""
    with pytest.raises(XvolError) as info:
        check_tensorrt_compatible(model, label)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert message.startswith(f"{label}: TensorRT would refuse this graph: ")
    assert "Export with another opset / precision, or replace the operator." in message
    return message


def only(model: onnx.ModelProto) -> Incompatibility:
    found = tensorrt_incompatibilities(model)
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------------- what the project exports

pytestmark = pytest.mark.usefixtures("one_thread")  # small convs: one thread is faster


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """``exports[(precision, dynamic)]``: the digits sample exported on first use (random inputs, fast; int8
    calibrated on the first 32 calibration images, the same Q/DQ graph as with all 256 in a third of the time)."""
    folder = tmp_path_factory.mktemp("trt")
    calib = folder / "calib32.npz"
    with np.load(CALIB) as full:
        np.savez(calib, input=full["input"][:32])

    class Exports(dict):
        def __missing__(self, key):
            precision, dynamic = key
            out = folder / f"digits.{precision}.{'dynamic' if dynamic else 'static'}.onnx"
            result = export_checkpoint(CHECKPOINT, out,  # int8: the layout made for TensorRT
                ExportSettings(precision=precision, dynamic=dynamic, seed=0,
                               calib=calib if precision == "int8" else None, int8=Int8Options(target="tensorrt")))
            assert result.passed and result.written, result.failure_summary()
            self[key] = onnx.load(str(out))
            return self[key]

    return Exports()


@pytest.mark.parametrize("precision, dynamic", EXPORTS, ids=[f"{p}-{'dynamic' if d else 'static'}" for p, d in EXPORTS])
def test_every_sample_export_passes(exports, precision, dynamic):
    graph = exports[precision, dynamic]
    assert tensorrt_incompatibilities(graph) == []
    assert check_tensorrt_compatible(graph, "digits.onnx") is None
    ops = graph_info.op_counts(graph)
    if precision == "int8":  # the Q/DQ graph really is quantized, per channel on the weights
        assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
        assert any(a.name == "axis" for n in graph.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute)
    if dynamic:
        assert isinstance(graph_info.input_dims(graph)[0], str)


def test_an_int8_graph_laid_out_for_onnx_runtime_is_flagged_for_tensorrt(tmp_path):
    """u8 activations (zero points not 0) are ONNX Runtime's fast form and TensorRT's refusal: the export says so,
    and --format engine would take the TensorRT layout instead."""
    with np.load(CALIB) as full:
        np.savez(tmp_path / "calib.npz", input=full["input"][:32])
    result = export_checkpoint(CHECKPOINT, tmp_path / "d.int8.onnx",
                               ExportSettings(precision="int8", seed=0, calib=tmp_path / "calib.npz"))
    assert result.passed and result.int8["layout"]["target"] == "onnxruntime"
    assert result.int8["layout"]["activations"] == "u8" and result.int8["layout"]["quantize_outputs"]
    assert not result.tensorrt_compatibility["compatible"]
    assert any("TensorRT would refuse this graph" in note for note in result.notes)
    assert ExportSettings().int8.layout("engine").target == "tensorrt"


def test_sample_int8_graph_with_a_nonzero_zero_point_is_refused(exports):
    graph = onnx.ModelProto()
    graph.CopyFrom(exports["int8", False])
    quant = next(n for n in graph.graph.node if n.op_type == "QuantizeLinear")
    zero = next(i for i in graph.graph.initializer if i.name == quant.input[2])
    zero.CopyFrom(const(zero.name, np.full(tuple(zero.dims), 3), np.int8))  # asymmetric: TensorRT is symmetric only
    users = {n.name for n in graph.graph.node if len(n.input) > 2 and n.input[2] == zero.name}
    found = tensorrt_incompatibilities(graph)
    assert {p.node for p in found} == users and quant.name in users
    assert all("is not zero ([3])" in p.reason for p in found)
    assert f"node '{quant.name}' (QuantizeLinear)" in refusal(graph, "digits.int8.onnx")


@pytest.fixture(scope="module")
def tiny_deploy():
    torch.manual_seed(0)
    model = xvol_export.create_model("xvol_resnet_tiny", blocks_per_stage=1).eval()
    deploy, report = xvol_export.fold(model)
    assert report.blocks
    return deploy


@pytest.mark.parametrize("exporter, opset, dynamic", [("torchscript", 17, True), ("torchscript", 20, False),
                                                      ("dynamo", 18, False)])  # dynamo: static is the cheaper
def test_tiny_xvolution_passes_with_both_exporters(tiny_deploy, exporter, opset, dynamic):
    graph = onnx_graph.export_onnx(tiny_deploy, (2, 3, 32, 32), opset=opset, dynamic=dynamic, exporter=exporter)
    assert graph_info.op_counts(graph)["Softmax"] == 1  # the X-volution attention is in the graph
    assert tensorrt_incompatibilities(graph) == []


def test_ops_of_exported_graphs_are_listed_as_supported(exports):
    used = set()
    for key in EXPORTS:
        used |= {n.op_type for n in exports[key].graph.node if n.domain in ("", "ai.onnx")}
    assert {"Conv", "Softmax", "QuantizeLinear", "DequantizeLinear", "Cast", "Pad", "Slice"} <= used
    refused = {op for op in used if not OPS.get(op, {}).get("supported")}
    assert not refused, refused


# --------------------------------------------------------------------------------- what is refused

def test_unsupported_and_custom_operators_are_named():
    assert not OPS["Unique"]["supported"]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Unique", ["r"], ["u"], name="dedupe", sorted=1),
             helper.make_node("FancyActivation", ["r"], ["y"], name="fancy", domain="com.example")]
    model = model_of(nodes, [tensor("x")], [tensor("y"), tensor("u", shape=(None,))],
                     opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    found = tensorrt_incompatibilities(model)
    assert [(p.node, p.op_type) for p in found] == [("dedupe", "Unique"), ("fancy", "FancyActivation")]
    assert "Unique is not supported by onnx-tensorrt 10." in found[0].reason
    assert "com.example::FancyActivation" in found[1].reason and "plugin" in found[1].reason
    message = refusal(model, "digits.onnx")
    assert "2 nodes" in message
    for word in ("node 'dedupe' (Unique)", "node 'fancy' (FancyActivation)", TENSORRT_OPS_SOURCE):
        assert word in message, word


def test_inspect_says_which_graph_tensorrt_would_refuse(tmp_path, capsys):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Unique", ["r"], ["u"], name="dedupe", sorted=1)]
    refused = tmp_path / "unique.onnx"
    onnx.save(model_of(nodes, [tensor("x")], [tensor("u", shape=(None,))]), refused)
    r = run_cli(capsys, "inspect", refused, "--json", tmp_path / "r.json")
    assert r.code == 1 and "would refuse 1 node(s)" in r.out and "dedupe (Unique)" in r.out, r.text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "FAILED" and not report["tensorrt_compatibility"]["compatible"]
    taken = tmp_path / "relu.onnx"
    onnx.save(model_of(nodes[:1], [tensor("x")], [tensor("r")]), taken)
    r = run_cli(capsys, "inspect", taken)
    assert r.code == 0 and "takes every node" in r.out and "inputs: x" in r.out, r.text


def test_operator_missing_from_the_table_is_refused():
    model = model_of([helper.make_node("Swish", ["x"], ["y"], name="swish")], [tensor("x")], [tensor("y")], opset=24)
    assert "Swish" not in OPS
    problem = only(model)
    assert problem.node == "swish" and "Swish is not in onnx-tensorrt" in problem.reason


def test_unnamed_node_is_named_by_type_and_position():
    model = model_of([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Det", ["r"], ["y"])],
                     [tensor("x", shape=(2, 3, 3))], [tensor("y", shape=(2,))])
    assert only(model).node == "Det#1"


SCALES = const("scales", [1, 1, 2, 2], np.float32)


@pytest.mark.parametrize("op, attrs, extra, shape, attribute, value", [
    ("Resize", {"mode": "cubic"}, ["", "scales"], (1, 3, 8, 8), "mode", "'cubic'"),
    ("Resize", {"coordinate_transformation_mode": "tf_crop_and_resize"}, ["", "scales"], (1, 3, 8, 8),
     "coordinate_transformation_mode", "'tf_crop_and_resize'"),
    ("Resize", {"antialias": 1, "mode": "linear"}, ["", "scales"], (1, 3, 8, 8), "antialias", "1"),
    ("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 2]}, [], (1, 3, 8, 8), "dilations", "[2, 2]"),
    ("AveragePool", {"kernel_shape": [3]}, [], (1, 3, 8), "kernel_shape", "[3]"),
    ("TopK", {"sorted": 0}, ["k"], (1, 8), "sorted", "0"),
])
def test_refused_attribute_value_names_the_attribute(op, attrs, extra, shape, attribute, value):
    initializers = [SCALES] * ("scales" in extra) + [const("k", [3])] * ("k" in extra)
    node = helper.make_node(op, ["x", *extra], ["y"], name="the_node", **attrs)
    outputs = [tensor("y", shape=(None,) * len(shape))] + [tensor("i", TensorProto.INT64, (1, 3))] * (op == "TopK")
    if op == "TopK":
        node.output.append("i")
    model = model_of([node], [tensor("x", shape=shape)], outputs, initializers)
    problem = only(model)
    assert (problem.node, problem.op_type) == ("the_node", op)
    assert f"attribute {attribute}={value} is refused" in problem.reason
    message = refusal(model)
    assert f"node 'the_node' ({op}): attribute {attribute}" in message


def test_if_branches_must_not_share_output_names():
    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Relu", ["x"], ["out"])], name, [], [tensor("out")])

    nodes = [helper.make_node("If", ["c"], ["y"], name="choose", then_branch=branch("a"), else_branch=branch("b"))]
    model = model_of(nodes, [tensor("x"), tensor("c", TensorProto.BOOL, ())], [tensor("y")])
    problem = only(model)
    assert problem.node == "choose" and "named out" in problem.reason and "different names" in problem.reason


def test_allowed_attribute_values_pass():
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="linear",
                              coordinate_transformation_mode="pytorch_half_pixel"),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], dilations=[1, 1], strides=[2, 2])]
    model = model_of(nodes, [tensor("x")], [tensor("y", shape=(1, 3, 8, 8))], [SCALES])
    assert tensorrt_incompatibilities(model) == []


def test_nodes_inside_if_and_loop_bodies_are_checked():
    then_graph = helper.make_graph([helper.make_node("Bernoulli", ["x"], ["t"], name="inner_bernoulli")], "then",
                                   [], [tensor("t")])
    else_graph = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [tensor("e")])
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                              helper.make_node("Resize", ["x", "", "scales"], ["scan"], name="inner_resize",
                                               mode="cubic")],
                             "body", [tensor("i", TensorProto.INT64, ()), tensor("cond_in", TensorProto.BOOL, ())],
                             [tensor("cond_out", TensorProto.BOOL, ()), tensor("scan", shape=(None,) * 4)])
    nodes = [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph),
             helper.make_node("Loop", ["n", ""], ["z"], name="loop", body=body)]
    model = model_of(nodes, [tensor("x"), tensor("c", TensorProto.BOOL, ())],
                     [tensor("y"), tensor("z", shape=(None,) * 5)],
                     [const("n", 2), SCALES])
    found = {(p.node, p.op_type) for p in tensorrt_incompatibilities(model)}
    assert found == {("branch/then_branch/inner_bernoulli", "Bernoulli"), ("loop/body/inner_resize", "Resize")}


def test_local_function_body_is_checked_not_refused_as_custom():
    def model_with(body_op: str) -> onnx.ModelProto:
        function = helper.make_function("local", "Act", ["a"], ["b"], [helper.make_node(body_op, ["a"], ["b"])],
                                        [helper.make_opsetid("", 17)])
        node = helper.make_node("Act", ["x"], ["y"], name="act", domain="local")
        return model_of([node], [tensor("x")], [tensor("y")], functions=[function],
                        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])

    assert tensorrt_incompatibilities(model_with("Relu")) == []
    problem = only(model_with("MaxUnpool"))
    assert (problem.node, problem.op_type) == ("act/MaxUnpool#0", "MaxUnpool")


def test_types_tensorrt_does_not_take():
    # INT16 is no TensorRT type at all; DOUBLE is cast down to FLOAT where FP32 is taken, but And takes BOOL only
    nodes = [helper.make_node("Add", ["a", "a"], ["s"], name="add16"),
             helper.make_node("Cast", ["d"], ["b"], name="to_bool", to=TensorProto.BOOL),
             helper.make_node("Cast", ["d"], ["i8"], name="to_int8", to=TensorProto.INT8),
             helper.make_node("And", ["d", "d"], ["y"], name="and64")]
    model = model_of(nodes, [tensor("a", TensorProto.INT16), tensor("d", TensorProto.DOUBLE)],
                     [tensor("s", TensorProto.INT16), tensor("b", TensorProto.BOOL), tensor("i8", TensorProto.INT8),
                      tensor("y", TensorProto.BOOL)])
    found = {p.node: p.reason for p in tensorrt_incompatibilities(model)}
    assert set(found) == {"add16", "to_int8", "and64"}  # a DOUBLE input to Cast is taken (as FLOAT)
    assert "INT16, a type TensorRT does not take" in found["add16"]
    assert "to=INT8" in found["to_int8"]
    assert "DOUBLE; And takes BOOL" in found["and64"]


def test_asymmetric_uint8_qdq_is_refused_symmetric_int8_passes():
    def qdq(zero_dtype, zero) -> onnx.ModelProto:
        nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="quant"),
                 helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="dequant")]
        return model_of(nodes, [tensor("x")], [tensor("y")],
                        [const("scale", 0.02, np.float32), const("zero", zero, zero_dtype)])

    assert tensorrt_incompatibilities(qdq(np.int8, 0)) == []
    found = tensorrt_incompatibilities(qdq(np.uint8, 128))
    reasons = " | ".join(p.reason for p in found)
    assert {p.node for p in found} == {"quant", "dequant"}
    for word in ("y_zero_point must be 0", "x_zero_point must be zero", "UINT8 only as a network input or output",
                 "DequantizeLinear takes INT8"):
        assert word in reasons, word


def test_inputs_that_must_be_constant():
    def reduce_model(axes_from_input: bool) -> onnx.ModelProto:
        nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="reduce", keepdims=1)]
        inputs = [tensor("x"), tensor("axes", TensorProto.INT64, (1,))] if axes_from_input else [tensor("x")]
        initializers = [] if axes_from_input else [const("axes", [1])]
        return model_of(nodes, inputs, [tensor("y", shape=(None,) * 4)], initializers)

    assert tensorrt_incompatibilities(reduce_model(False)) == []
    problem = only(reduce_model(True))
    assert "input 1 ('axes') is computed at run time" in problem.reason and "initializer" in problem.reason
    # Unsqueeze axes need only be resolvable to a constant when the engine is built: a static Shape is
    nodes = [helper.make_node("Shape", ["x"], ["shape"], start=1, end=2),
             helper.make_node("Sub", ["shape", "one"], ["axis"]),
             helper.make_node("Unsqueeze", ["x", "axis"], ["y"], name="unsqueeze")]
    static = model_of(nodes, [tensor("x")], [tensor("y", shape=(None,) * 5)], [const("one", [1])])
    assert tensorrt_incompatibilities(static) == []
    dynamic = model_of(nodes, [tensor("x", shape=("n", "c", 8, 8))], [tensor("y", shape=(None,) * 5)],
                       [const("one", [1])])
    assert only(dynamic).node == "unsqueeze"


def test_opset_outside_the_documented_range():
    model = model_of([helper.make_node("Relu", ["x"], ["y"])], [tensor("x")], [tensor("y")], opset=25)
    problem = only(model)
    assert problem.op_type == "opset_import" and "opset 25" in problem.reason and "9 to 24" in problem.reason


def test_message_lists_ten_and_counts_the_rest():
    nodes = [helper.make_node("Unique", ["x"], [f"u{i}"], name=f"unique_{i}") for i in range(13)]
    model = model_of(nodes, [tensor("x")], [tensor(f"u{i}", shape=(None,)) for i in range(13)])
    message = refusal(model)
    assert "13 nodes" in message and "node 'unique_9'" in message and "unique_10" not in message
    assert "; and 3 more." in message


# ------------------------------------------------------------------------------------- the table

def test_table_source_and_shape():
    source = TABLE["source"]
    assert source["project"] == "onnx/onnx-tensorrt" and source["file"] == "docs/operators.md"
    assert TENSORRT_OPS_SOURCE == f"onnx-tensorrt {source['version']}" and source["version"].startswith("10.")
    assert source["read_on"] and source["released"]
    assert TABLE["opset"] == [9, 24]
    assert len(OPS) >= 190 and sum(op["supported"] for op in OPS.values()) >= 150
    for name in ("Unique", "MaxUnpool", "ConvInteger", "QLinearConv", "SequenceAt", "DynamicQuantizeLinear"):
        assert not OPS[name]["supported"], name
    for name in ("Conv", "ConvTranspose", "Resize", "QuantizeLinear", "DequantizeLinear", "Softmax", "Attention"):
        assert OPS[name]["supported"], name


def test_table_entries_match_the_onnx_schemas():
    """Names, types, rule attributes and input positions exist: a typo in the data would fail here."""
    legacy = {"ImageScaler", "ParametricSoftplus", "ScaledTanh"}  # experimental ops the doc still lists
    kinds = {"attr", "input", "output", "check", "refused_attrs"}
    for name, op in OPS.items():
        assert set(op) <= {"supported", "types", "types_of", "note", "rules"}, name
        assert ("types" in op) == op["supported"], name
        assert set(op.get("types", [])) <= set(TABLE["data_types"]), name
        if name in legacy:
            continue
        schema = onnx.defs.get_schema(name)
        for rule in op.get("rules", []):
            assert rule["doc"] and len(kinds & set(rule)) == 1, (name, rule)
            for attr in [rule.get("attr")] + rule.get("refused_attrs", []):
                assert attr is None or attr in schema.attributes, (name, attr)
            if "input" in rule:
                assert rule["input"] < len(schema.inputs) or schema.inputs[-1].option == 2, (name, rule)
            if "output" in rule:
                assert rule["output"] < len(schema.outputs), (name, rule)
