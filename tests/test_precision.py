"""FP16 and INT8 Q/DQ forms of an exported graph, run for real in ONNX Runtime on the CPU.

Everything uses the trained digits sample (``samples/``: xvol_resnet_tiny, 1 x 32 x 32 inputs),
folded and exported once per module the way the exporter does it (TorchScript, opset 17, dynamic
batch/height/width). Tolerances, from what fp16 and int8 can do on these logits (|logit| <= 21):

* fp16: unit roundoff 2**-11 = 4.9e-4; the measured relative L2 error of the logits is 4.3e-4
  over ~20 layers (max abs 0.011 on 360 images). Bound: 5e-3, ten times that, still far below
  what any real fp16 bug (a wrong cast, a clamped weight, an overflow) produces.
* int8: the measured relative L2 error is 0.009 (median abs 0.03); bound 0.05. Top-1 flips
  only where fp32's own top-2 margin is tiny (1 of 360 held-out images, margin 0.016).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from xvol_export import XvolError, XVolution, fold
from xvol_export.checkpoint import load_model
from xvol_export.export.int8 import to_int8_qdq
from xvol_export.export.precision import to_fp16
from xvol_export.fold.families.xvolution import onnx_options, shift_conv_names

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
FP16_REL_L2 = 5e-3
INT8_REL_L2 = 5e-2
CALIB, EVAL = slice(0, 64), slice(64, 128)  # calibration images are never the ones judged


@pytest.fixture(scope="module")
def sample():
    """The trained training-form model, its folded ONNX graph (in the form ``xvol export`` writes at batch 1:
    one-hot shift convs in the aggregate) and 128 held-out images."""
    model, _ = load_model(SAMPLES / "digits_xvol_resnet_tiny.pth")
    model.eval()
    deploy = fold(model, **onnx_options(batch=1))[0].eval()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(deploy, (torch.zeros(2, 1, 32, 32),), path, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}})
        graph = onnx.load(path)
    images = np.load(SAMPLES / "digits_holdout.npz")["input"][:128].astype(np.float32)
    return model, graph, images


@pytest.fixture(scope="module")
def fp16_graph(sample):
    return to_fp16(sample[1])


@pytest.fixture(scope="module")
def int8_graph(sample):
    _, graph, images = sample
    return to_int8_qdq(graph, images[CALIB], "input")


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def reference(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()


def rel_l2(candidate: np.ndarray, ref: np.ndarray) -> float:
    candidate, ref = candidate.astype(np.float64), ref.astype(np.float64)
    return float(np.linalg.norm(candidate - ref) / np.linalg.norm(ref))


def elem_type(value_info: onnx.ValueInfoProto) -> int:
    return value_info.type.tensor_type.elem_type


def io_dims(model: onnx.ModelProto) -> list:
    return [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


# --- fp16 ---------------------------------------------------------------------------------------------------


def test_fp16_graph_has_float32_io_float16_weights_and_passes_checker(sample, fp16_graph):
    onnx.checker.check_model(fp16_graph, full_check=True)
    assert [elem_type(v) for v in (*fp16_graph.graph.input, *fp16_graph.graph.output)] == [onnx.TensorProto.FLOAT] * 2
    types = [init.data_type for init in fp16_graph.graph.initializer]
    assert types.count(onnx.TensorProto.FLOAT16) >= 20  # every conv weight and bias, and the classifier
    assert onnx.TensorProto.FLOAT not in types
    assert all(elem_type(i) == onnx.TensorProto.FLOAT for i in sample[1].graph.input)  # the input graph is untouched
    assert all(init.data_type == onnx.TensorProto.FLOAT for init in sample[1].graph.initializer)


def test_fp16_is_close_to_the_fp32_training_form(sample, fp16_graph):
    model, _, images = sample
    out, ref = run(fp16_graph, images[EVAL]), reference(model, images[EVAL])
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert rel_l2(out, ref) < FP16_REL_L2
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_fp16_without_keep_io_types_has_float16_io(sample):
    model, graph, images = sample
    graph16 = to_fp16(graph, keep_io_types=False)
    onnx.checker.check_model(graph16, full_check=True)
    assert [elem_type(v) for v in (*graph16.graph.input, *graph16.graph.output)] == [onnx.TensorProto.FLOAT16] * 2
    x = images[:8].astype(np.float16)
    out = run(graph16, x)
    assert out.dtype == np.float16
    assert rel_l2(out, reference(model, x)) < FP16_REL_L2  # the reference sees the same fp16-rounded input


# --- int8 ---------------------------------------------------------------------------------------------------


def test_int8_graph_is_symmetric_qdq_with_per_channel_conv_weights(sample, int8_graph):
    onnx.checker.check_model(int8_graph, full_check=True)
    nodes = int8_graph.graph.node
    inits = {init.name: numpy_helper.to_array(init) for init in int8_graph.graph.initializer}
    quantize = [n for n in nodes if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in nodes if n.op_type == "DequantizeLinear"]
    assert quantize and dequantize
    for node in quantize + dequantize:  # symmetric: every zero point is an int8 zero
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    for node in quantize:  # activations: one scale per tensor
        assert inits[node.input[1]].size == 1

    producer = {out: n for n in nodes for out in n.output}
    shift_convs = set(shift_conv_names(sample[1]))
    blocks = sum(isinstance(m, XVolution) and m.attention for m in sample[0].modules())
    assert blocks and len(shift_convs) == 2 * blocks  # per block, k and v are shifted by one-hot convs
    convs = [n for n in nodes if n.op_type == "Conv" and n.name not in shift_convs]
    assert len(convs) + len(shift_convs) == sum(n.op_type == "Conv" for n in sample[1].graph.node)
    for conv in (n for n in nodes if n.name in shift_convs):  # pixel copies stay float: k and v unquantized
        assert producer[conv.input[0]].op_type not in ("QuantizeLinear", "DequantizeLinear")
        assert conv.input[1] in inits or producer[conv.input[1]].op_type == "Constant"
    for conv in convs:
        data, weight = producer[conv.input[0]], producer[conv.input[1]]
        assert data.op_type == "DequantizeLinear" and producer[data.input[0]].op_type == "QuantizeLinear"
        assert weight.op_type == "DequantizeLinear"
        q_weight, scale = inits[weight.input[0]], inits[weight.input[1]]
        axis = next(a.i for a in weight.attribute if a.name == "axis")
        assert q_weight.dtype == np.int8 and axis == 0
        assert scale.shape == (q_weight.shape[0],)  # one scale per output channel
        if len(conv.input) > 2 and conv.input[2]:
            assert inits[conv.input[2]].dtype == np.float32  # biases stay float, as TensorRT takes them
        assert conv.output[0] not in {n.input[0] for n in quantize}  # outputs are left for TensorRT to fuse
    assert {elem_type(v) for v in (*int8_graph.graph.input, *int8_graph.graph.output)} == {onnx.TensorProto.FLOAT}
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in sample[1].graph.node)


def test_int8_predictions_agree_with_the_fp32_training_form(sample, int8_graph):
    model, _, images = sample
    out, ref = run(int8_graph, images[EVAL]), reference(model, images[EVAL])
    assert out.shape == ref.shape
    assert rel_l2(out, ref) < INT8_REL_L2
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_int8_histogram_calibration_with_a_short_last_batch_is_quiet_and_leaves_no_files(
        sample, tmp_path, monkeypatch, capsys):
    model, graph, images = sample
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    handlers = list(logging.getLogger().handlers)
    # 10 images in batches of 4: ONNX Runtime's histogram calibration fails on a short last batch unaided.
    quantized = to_int8_qdq(graph, images[:10], "input", calibrate_method="percentile", batch_size=4,
                            per_channel=False)
    assert list(scratch.iterdir()) == []
    assert capsys.readouterr().out == ""
    assert logging.getLogger().handlers == handlers
    weight_dq = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear"
                 and n.input[0] in {i.name for i in quantized.graph.initializer}]
    assert weight_dq and all(  # per-tensor weights when asked
        numpy_helper.to_array(next(i for i in quantized.graph.initializer if i.name == n.input[1])).size == 1
        for n in weight_dq)
    assert rel_l2(run(quantized, images[EVAL]), reference(model, images[EVAL])) < INT8_REL_L2


def test_int8_with_a_fixed_batch_input_feeds_whole_batches(sample):
    _, graph, images = sample
    fixed = onnx.ModelProto()
    fixed.CopyFrom(graph)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4  # batch 4, spatial dims still symbolic
    quantized = to_int8_qdq(fixed, images[:6], "input", batch_size=16)  # 6 images -> two batches of 4
    assert run(quantized, images[:4]).shape == (4, 10)


# --- both: dynamic dims -------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_dynamic_batch_and_spatial_dims_survive(sample, fp16_graph, int8_graph, precision):
    model, _, images = sample
    converted = {"fp16": fp16_graph, "int8": int8_graph}[precision]
    assert io_dims(converted) == ["batch", 1, "height", "width"]
    bound = {"fp16": FP16_REL_L2, "int8": INT8_REL_L2}[precision]
    for batch, size in [(1, 32), (3, 32), (2, 24), (5, 40)]:
        x = F.interpolate(torch.from_numpy(images[EVAL][:batch]), size=(size, size), mode="bilinear",
                          align_corners=False).numpy()
        out, ref = run(converted, x), reference(model, x)
        assert out.shape == (batch, 10)
        assert rel_l2(out, ref) < bound, (batch, size)


# --- bad calibration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, kwargs, expected", [
    (lambda x: np.repeat(x[:4], 3, axis=1), {}, ["(4, 3, 32, 32)", "3 channel(s)", "takes 1", "N x 1 x H x W"]),
    (lambda x: x[:4, 0], {}, ["3-D", "(4, 32, 32)", "images[:, None]"]),
    (lambda x: x[:0], {}, ["empty", "(0, 1, 32, 32)"]),
    (lambda x: (x[:4] * 100).astype(np.int64), {}, ["floating point", "int64"]),
    (lambda x: np.where(np.arange(4)[:, None, None, None] == 1, np.nan, x[:4]), {}, ["NaN"]),
    (lambda x: x[:4], {"input_name": "images"}, ["no input named 'images'", "'input'"]),
    (lambda x: x[:4], {"calibrate_method": "mse"}, ["'mse'", "minmax, percentile, entropy"]),
    (lambda x: x[:4], {"batch_size": 0}, ["batch size", "positive"]),
], ids=["channels", "3d", "empty", "integer", "nan", "input-name", "method", "batch-size"])
def test_bad_calibration_is_an_xvol_error(sample, make, kwargs, expected):
    _, graph, images = sample
    kwargs = {"input_name": "input", **kwargs}
    with pytest.raises(XvolError) as info:
        to_int8_qdq(graph, make(images), kwargs.pop("input_name"), **kwargs)
    for fragment in expected:
        assert fragment in str(info.value)


def test_int8_of_an_fp16_graph_is_an_xvol_error(sample):
    # keep_io_types=True keeps a float32 input, so build the all-fp16 form for this check.
    graph16 = to_fp16(sample[1], keep_io_types=False)
    with pytest.raises(XvolError, match="FLOAT16.*fp32 graph"):
        to_int8_qdq(graph16, sample[2][:4], "input")
