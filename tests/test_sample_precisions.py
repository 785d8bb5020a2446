"""Acceptance on the real digits sample: every precision against the training form on the held-out set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from xvol_export import graph_info
from xvol_export.export.int8 import parse_budget
from xvol_export.jobs import ExportSettings, export_checkpoint
from xvol_export.jobs.export import Int8Options
from xvol_export.tensorrt.layers import expected_precisions

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
CHECKPOINT = SAMPLES / "digits_xvol_resnet_tiny.pth"
HOLDOUT = SAMPLES / "digits_holdout.npz"
CALIB = SAMPLES / "digits_calib.npz"  # training images: calibration never sees the held-out set


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """``exports[key]``: the sample exported on first use ("fp32", "fp16", "int8", "int8-entropy", ...), so that
    each xdist worker makes only the graphs its tests read."""
    folder = tmp_path_factory.mktemp("sample")

    class Exports(dict):
        def __missing__(self, key):
            precision, _, method = key.partition("-")
            self[key] = export_checkpoint(CHECKPOINT, folder / f"digits.{key}.onnx",
                ExportSettings(precision=precision, calib=CALIB if precision == "int8" else None, data=HOLDOUT,
                               int8=Int8Options(method=method or "minmax")))
            return self[key]

    return Exports()


def test_fp32_graph_agrees_on_every_held_out_digit(exports):
    result = exports["fp32"]
    assert result.passed and result.written
    assert result.verification.output.top1_agreement == 1.0
    assert result.verification.output.rel_l2 <= 1e-5


def test_fp16_graph_agrees_on_at_least_99_5_percent(exports):
    result = exports["fp16"]
    assert result.passed and result.written
    assert result.verification.output.top1_agreement >= 0.995
    assert result.to_dict()["verification"]["output"]["top1_agreement"] >= 0.995  # what the JSON reports


def test_int8_accuracy_is_within_one_point_of_fp32(exports):
    fp32, int8 = exports["fp32"].verification.accuracy, exports["int8"].verification.accuracy
    assert exports["int8"].passed and exports["int8"].written
    assert fp32["count"] == int8["count"] == 360
    assert int8["candidate"] >= fp32["candidate"] - 0.01
    graph_ops = exports["int8"].graph["ops"]
    assert graph_ops.get("QuantizeLinear", 0) > 0 and graph_ops.get("DequantizeLinear", 0) > 0


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_int8_with_every_calibration_method_keeps_the_accuracy(exports, method):
    result = exports["int8" if method == "minmax" else f"int8-{method}"]
    assert result.passed and result.written, result.failure_summary()
    assert result.int8["method"] == method and result.int8["calibration_images"] == 256
    accuracy = result.verification.accuracy
    assert accuracy["count"] == 360 and accuracy["candidate"] >= accuracy["reference"] - 0.01
    assert set(accuracy) >= {"reference", "baseline", "candidate"}  # every form's accuracy in the report
    assert result.verification.output.cosine >= 0.99
    assert graph_info.read_metadata(onnx.load(result.output))["xvol.int8_calibration"] == \
        f'{{"method": "{method}", "images": 256}}'


def test_int8_fallback_meets_its_budget_and_records_why(tmp_path):
    out = tmp_path / "digits.int8.onnx"
    budget = parse_budget("cosine=0.99999")
    result = export_checkpoint(CHECKPOINT, out,
        ExportSettings(precision="int8", calib=CALIB, data=HOLDOUT, int8=Int8Options(sensitivity=True, budget=budget)))
    assert result.passed and result.written, result.failure_summary()
    sensitivity, fallback = result.int8["sensitivity"], result.int8["fallback"]
    assert len(sensitivity["ranking"]) == len(sensitivity["layers"]) > 10
    assert fallback["met"] and fallback["after"]["cosine"] >= 0.99999 > fallback["before"]["cosine"]
    kept = [layer["name"] for layer in fallback["kept_float"]]
    assert kept and kept == sensitivity["ranking"][:len(kept)]  # most sensitive first
    stored = json.loads(graph_info.read_metadata(onnx.load(out))["xvol.int8_fallback"])
    assert [layer["name"] for layer in stored["kept_float"]] == kept and all(k["reason"] for k in stored["kept_float"])
    expected = expected_precisions(onnx.load(out))  # what a TensorRT engine's layers are held to
    assert {expected[name] for name in kept} == {"fp32"} and "int8" in expected.values()
    assert result.verification.accuracy["count"] == 360


def test_int8_budget_that_cannot_be_met_fails_with_the_figures(tmp_path):
    held = np.load(HOLDOUT)
    data = tmp_path / "some_digits.npz"
    np.savez(data, input=held["input"][:60], labels=held["labels"][:60])
    result = export_checkpoint(CHECKPOINT, tmp_path / "never.onnx",
        ExportSettings(precision="int8", calib=CALIB, data=data, int8=Int8Options(budget=parse_budget("cosine=1.0"))))
    assert not result.passed and not result.written
    assert "No INT8 graph meets cosine >= 1.000000" in result.failure_summary()
    assert "with every quantizable layer in float" in result.failure_summary()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_expects_every_compute_node_at_the_graphs_precision(exports, precision):
    """What the engine's layer check will hold each Conv and Gemm of the sample's graphs to."""
    graph = onnx.load(exports[precision].output)
    expected = expected_precisions(graph)
    compute = [n for n in graph.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(expected) == len(compute) > 5
    if precision != "int8":
        assert set(expected.values()) == {precision}, expected
        return
    # int8: every node with quantized weights in int8; the pixel-shift convs (fixed one-hot kernels) stay float
    producers = {out: node.op_type for node in graph.graph.node for out in node.output}
    quantized = {n.name for n in compute if producers.get(n.input[1]) == "DequantizeLinear"}
    assert {name for name, p in expected.items() if p == "int8"} == quantized
    assert {p for name, p in expected.items() if name not in quantized} == {"fp32"}

