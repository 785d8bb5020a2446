"""Acceptance on the real digits sample: every precision against the training form on the held-out set."""

from __future__ import annotations

from pathlib import Path

import pytest

from xvol_export.api import export_checkpoint

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
CHECKPOINT = SAMPLES / "digits_xvol_resnet_tiny.pth"
HOLDOUT = SAMPLES / "digits_holdout.npz"
CALIB = SAMPLES / "digits_calib.npz"  # training images: calibration never sees the held-out set


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample")
    return {
        precision: export_checkpoint(CHECKPOINT, folder / f"digits.{precision}.onnx", precision=precision,
                                     calib=CALIB if precision == "int8" else None, data=HOLDOUT)
        for precision in ("fp32", "fp16", "int8")
    }


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
