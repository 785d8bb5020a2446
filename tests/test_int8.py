"""INT8 calibration methods, per-layer sensitivity and float fallback, run for real in ONNX Runtime.

The trained digits sample (``samples/``) is folded and exported the way ``xvol export`` does it
(TorchScript, opset 17, one-hot shift convs in the aggregate, batch/height/width symbolic so a
variant runs in a few batches), calibrated on ``digits_calib.npz`` and judged on the 360 held-out
digits against the training form run in float64. Each calibration runs once per module.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from xvol_export import XvolError, fold, graph_info
from xvol_export.checkpoint import load_model
from xvol_export.export import onnx_graph
from xvol_export.export.int8 import (
    CALIBRATION_KEY,
    CALIBRATION_METHODS,
    FALLBACK_KEY,
    AccuracyBudget,
    evaluate,
    keep_in_float,
    layer_sensitivity,
    parse_budget,
    quantizable_layers,
    quantize_once,
    quantize_with_fallback,
    to_int8_qdq,
)
from xvol_export.fold.families.xvolution import onnx_options, shift_conv_names

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
QDQ = ("QuantizeLinear", "DequantizeLinear")
SENSITIVITY_IMAGES = 48  # sensitivity runs 2 + 2 x 24 variants: a subset of the held-out digits keeps it quick


@pytest.fixture(scope="module")
def digits():
    """Training-form model, its fp32 graph, calibration images, the 360 held-out images, labels, and the float64
    truth on the first ``SENSITIVITY_IMAGES`` (the training form in float64 takes ~40 ms an image here)."""
    model, _ = load_model(SAMPLES / "digits_xvol_resnet_tiny.pth")
    model.eval()
    deploy = fold(model, **onnx_options(batch=1))[0].eval()
    graph = onnx_graph.check_graph(onnx_graph.export_onnx(deploy, (1, 1, 32, 32), dynamic=True))
    calibration = np.load(SAMPLES / "digits_calib.npz")["input"].astype(np.float32)
    holdout = np.load(SAMPLES / "digits_holdout.npz")
    images, labels = holdout["input"].astype(np.float32), holdout["labels"]
    with torch.no_grad():
        truth = copy.deepcopy(model).double()(torch.from_numpy(images[:SENSITIVITY_IMAGES]).double()).numpy()
    return model, graph, calibration, images, labels, truth


@pytest.fixture(scope="module")
def bases(digits):
    """One calibration per method."""
    _, graph, calibration, *_ = digits
    return {method: quantize_once(graph, calibration, method=method) for method in CALIBRATION_METHODS}


@pytest.fixture(scope="module")
def fp32_accuracy(digits):
    _, graph, _, images, labels, _ = digits
    return (run(graph, images).argmax(1) == labels).mean()


@pytest.fixture(scope="module")
def sensitivity(digits, bases):
    _, graph, calibration, images, _, truth = digits
    n = SENSITIVITY_IMAGES
    return layer_sensitivity(graph, calibration, images[:n], truth[:n], base=bases["minmax"])


@pytest.fixture(scope="module")
def broken(digits):
    """Calibration images scaled by 1e-3: every activation range is ~1000x too small and saturates."""
    _, graph, calibration, images, _, truth = digits
    n = SENSITIVITY_IMAGES
    return layer_sensitivity(graph, calibration * 1e-3, images[:n], truth[:n])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i:i + 64]})[0] for i in range(0, len(x), 64)])


def qdq_count(model: onnx.ModelProto) -> int:
    return sum(node.op_type in QDQ for node in model.graph.node)


def activation_scales(model: onnx.ModelProto) -> np.ndarray:
    """The scale of every activation QuantizeLinear, in the order of the tensors they quantize."""
    inits = {init.name: init for init in model.graph.initializer}
    nodes = sorted((n.input[0], n.input[1]) for n in model.graph.node if n.op_type == "QuantizeLinear")
    return np.array([float(onnx.numpy_helper.to_array(inits[scale])) for _, scale in nodes])


# --- quantizable layers and calibration methods -------------------------------------------------------------


def test_quantizable_layers_are_the_weighted_ops_but_the_shift_convs_in_graph_order(digits, bases):
    graph = digits[1]
    layers = quantizable_layers(graph)
    shifts = set(shift_conv_names(graph))
    assert shifts and not shifts & set(layers)
    weighted = [n.name for n in graph.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert layers == [name for name in weighted if name not in shifts]
    assert len(layers) == 24 and layers[0] == "/conv1/Conv" and layers[-1] == "/fc/Gemm"
    # exactly these read a weight DequantizeLinear in the quantized graph
    quantized = bases["minmax"].quantized
    inits = {init.name for init in quantized.graph.initializer}
    weight_dq = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    assert [n.name for n in quantized.graph.node if set(n.input) & weight_dq] == layers


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_each_calibration_method_keeps_digit_accuracy_within_one_point(digits, bases, fp32_accuracy, method):
    _, graph, calibration, images, labels, _ = digits
    base = bases[method]
    onnx.checker.check_model(base.quantized, full_check=True)
    assert base.method == method and base.calibration_images == len(calibration) == 256
    assert qdq_count(base.quantized) > 2 * len(base.layers)
    int8_accuracy = (run(base.quantized, images).argmax(1) == labels).mean()
    assert fp32_accuracy > 0.99
    assert int8_accuracy >= fp32_accuracy - 0.01, (method, int8_accuracy, fp32_accuracy)


def test_the_methods_calibrate_differently(bases):
    scales = {method: activation_scales(base.quantized) for method, base in bases.items()}
    minmax = scales["minmax"]
    for method in ("percentile", "entropy"):  # they clip the extremes that minmax keeps
        assert scales[method].shape == minmax.shape
        assert (scales[method] <= minmax * (1 + 1e-6)).all(), method
        assert (scales[method] < minmax * 0.99).sum() >= 5, method
    assert not np.allclose(scales["percentile"], scales["entropy"])


# --- graph surgery against quantize_static ------------------------------------------------------------------


def test_float_variants_compute_what_quantize_static_with_nodes_to_exclude_computes(digits, bases):
    _, graph, calibration, images, *_ = digits
    base = bases["minmax"]
    layers = base.layers
    readers: dict[str, list[str]] = {}
    for node in graph.graph.node:
        if node.name in layers:
            readers.setdefault(node.input[0], []).append(node.name)
    shared = next(names[0] for names in readers.values() if len(names) > 1)  # its input feeds other layers too
    cases = {
        "first, shared input and classifier in float": [layers[0], shared, layers[-1]],
        "only one layer quantized": [name for name in layers if name != shared],
    }
    x = images[:64]
    for label, floats in cases.items():
        variant = base.variant(floats)
        onnx.checker.check_model(variant, full_check=True)
        reference = to_int8_qdq(graph, calibration, "input", nodes_to_exclude=floats)
        assert qdq_count(variant) == qdq_count(reference), label
        assert len(variant.graph.initializer) == len(reference.graph.initializer), label
        assert np.abs(run(variant, x) - run(reference, x)).max() <= 1e-6, label
        assert np.abs(run(variant, x) - run(base.quantized, x)).max() > 1e-4, label  # it did change something


def test_keep_in_float_rejects_unknown_layers_and_leaves_its_input_alone(digits, bases):
    base = bases["minmax"]
    before = base.quantized.SerializeToString()
    with pytest.raises(XvolError, match="Not quantizable.*quantizable_layers"):
        keep_in_float(base.quantized, digits[1], ["/layer2/layer2.0/conv1/Conv"])  # a shift conv
    keep_in_float(base.quantized, digits[1], base.layers[:3])
    assert base.quantized.SerializeToString() == before
    with pytest.raises(XvolError, match="'nope'.*quantizable_layers"):
        to_int8_qdq(digits[1], digits[2][:8], "input", nodes_to_exclude=["nope"])


# --- sensitivity --------------------------------------------------------------------------------------------


def test_sensitivity_covers_every_layer_and_all_float_is_the_fp32_graph(digits, bases, sensitivity):
    _, graph, _, images, _, truth = digits
    report, base = sensitivity, bases["minmax"]
    assert [item.name for item in report.layers] == quantizable_layers(graph)
    assert sorted(report.ranking) == sorted(base.layers)
    cosines = [report.layer(name).float_alone.cosine for name in report.ranking]
    assert cosines == sorted(cosines, reverse=True)
    assert {item.op_type for item in report.layers} == {"Conv", "Gemm"}

    n = SENSITIVITY_IMAGES
    all_float = base.variant(base.layers)
    onnx.checker.check_model(all_float, full_check=True)
    assert qdq_count(all_float) == 0
    assert np.abs(run(all_float, images[:n]) - run(graph, images[:n])).max() <= 1e-6
    assert report.all_float == evaluate(graph, images[:n], truth[:n])
    assert report.all_float.rel_l2 < 1e-6 < report.all_quantized.rel_l2 < 0.05
    for item in report.layers:  # one layer quantized errs less than all, one in float less than none in float
        assert item.quantized_alone.rel_l2 < report.all_quantized.rel_l2
        assert report.all_float.rel_l2 < item.float_alone.rel_l2
    assert sum(item.float_alone.cosine > report.all_quantized.cosine for item in report.layers) >= 12

    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["method"] == "minmax" and data["eval_images"] == n and len(data["layers"]) == 24
    assert report.variant_s > 0


def test_broken_calibration_collapses_and_fallback_keeps_layers_in_float(digits, broken):
    _, graph, calibration, images, _, truth = digits
    assert broken.all_quantized.top1_agreement < 0.5
    n = SENSITIVITY_IMAGES
    result = quantize_with_fallback(graph, calibration * 1e-3, images[:n], truth[:n], "top1=0.99", sensitivity=broken)
    onnx.checker.check_model(result.graph, full_check=True)
    assert result.before == broken.all_quantized
    assert evaluate(result.graph, images[:n], truth[:n]) == result.after
    names = [item["name"] for item in result.kept_float]
    assert names == broken.ranking[:len(names)]
    reason = re.compile(r"left in float: alone in float it (lifts|takes) top-1 agreement \d+\.\d\d% -> \d+\.\d\d%; "
                        r"with it( and the \d+ layers? kept before it)? in float the graph reaches \d+\.\d\d%$")
    assert all(reason.match(item["reason"]) for item in result.kept_float), result.kept_float[:2]
    if result.met:
        assert names and result.after.top1_agreement >= 0.99
        assert all(step["top1_agreement"] < 0.99 for step in result.steps[:-1])  # stopped at the first that met
    else:
        assert len(names) == len(broken.layers) and "No INT8 graph meets" in result.summary()
    meta = graph_info.read_metadata(result.graph)
    fallback, calibration_meta = json.loads(meta[FALLBACK_KEY]), json.loads(meta[CALIBRATION_KEY])
    assert fallback["budget"] == {"metric": "top1", "value": 0.99} and fallback["met"] == result.met
    assert fallback["kept_float"] == result.kept_float
    assert fallback["before"]["top1_agreement"] == broken.all_quantized.top1_agreement
    assert calibration_meta == {"method": "minmax", "images": 256}


def test_fallback_keeps_the_fewest_sensitive_layers_that_meet_a_budget(digits, bases, sensitivity):
    _, graph, calibration, images, _, truth = digits
    n = SENSITIVITY_IMAGES
    start = sensitivity.all_quantized.cosine
    target = 1 - (1 - start) / 3  # cut the cosine error to a third
    result = quantize_with_fallback(graph, calibration, images[:n], truth[:n], AccuracyBudget("cosine", target),
                                    sensitivity=sensitivity)
    assert result.met and result.after.cosine >= target > result.before.cosine == start
    assert 1 <= len(result.kept_float) < len(sensitivity.layers)
    assert [item["name"] for item in result.kept_float] == sensitivity.ranking[:len(result.kept_float)]
    assert all(step["cosine"] < target for step in result.steps[:-1])
    first = result.kept_float[0]["reason"]
    assert "alone in float it lifts cosine" in first and "with it in float the graph reaches" in first
    kept = {item["name"] for item in result.kept_float}
    producer = {out: n for n in result.graph.graph.node for out in n.output}
    for node in result.graph.graph.node:  # the kept layers read float weights, the others quantized ones
        if node.name in sensitivity.ranking:
            weight = producer.get(node.input[1])
            assert (weight is None) == (node.name in kept), node.name
    assert "met with" in result.summary()
    json.dumps(result.to_dict())


def test_fallback_needs_nothing_when_the_budget_is_met_and_reports_an_unreachable_one(digits, sensitivity):
    _, graph, calibration, images, _, truth = digits
    n = SENSITIVITY_IMAGES
    easy = quantize_with_fallback(graph, calibration, images[:n], truth[:n], "cosine=0.99", sensitivity=sensitivity)
    assert easy.met and easy.kept_float == [] and easy.after == easy.before
    assert qdq_count(easy.graph) == qdq_count(sensitivity.base.quantized)

    exact = quantize_with_fallback(graph, calibration, images[:n], truth[:n], "cosine=1.0", sensitivity=sensitivity)
    # Even the all-float graph misses it, so no layer is tried one by one: the figures say so at once.
    assert not exact.met and exact.kept_float == [] and exact.steps == []
    assert exact.after.cosine < 1.0 and exact.after == sensitivity.all_float  # even the fp32 graph is not exact
    summary = exact.summary()
    assert "No INT8 graph meets cosine >= 1.000000" in summary and "0.99999" in summary
    assert json.loads(graph_info.read_metadata(exact.graph)[FALLBACK_KEY])["met"] is False

    with pytest.raises(XvolError, match="entropy.*minmax"):
        quantize_with_fallback(graph, calibration, images[:n], truth[:n], "cosine=0.99", method="entropy",
                               sensitivity=sensitivity)


# --- budgets ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, metric, value", [
    ("cosine=0.99", "cosine", 0.99),
    ("top1=0.995", "top1", 0.995),
    ("top1=99.5%", "top1", 0.995),
    (" Top-1 = 100% ", "top1", 1.0),
    ("cosine=1", "cosine", 1.0),
])
def test_parse_budget(text, metric, value):
    budget = parse_budget(text)
    assert budget.metric == metric and math.isclose(budget.value, value)


@pytest.mark.parametrize("text, fragment", [
    ("cosine=nan", "not a finite number"),
    ("top1=inf", "not a finite number"),
    ("cosine=0", "out of range"),
    ("cosine=1.5", "out of range"),
    ("top1=99.5", "did you mean top1=99.5%"),
    ("top1=150%", "out of range"),
    ("cosine=99%", "fraction"),
    ("accuracy=0.9", "Unknown accuracy metric"),
    ("0.99", "METRIC=VALUE"),
    ("top1=high", "Cannot read the number"),
])
def test_bad_budgets_are_xvol_errors_that_name_the_fix(text, fragment):
    with pytest.raises(XvolError) as info:
        parse_budget(text)
    assert fragment in str(info.value)
    assert "cosine=0.99" in str(info.value)


@pytest.mark.parametrize("metric, value", [("top1", 0.0), ("cosine", -0.5), ("mse", 0.9), ("top1", float("nan"))])
def test_budget_dataclass_validates(metric, value):
    with pytest.raises(XvolError):
        AccuracyBudget(metric, value)
