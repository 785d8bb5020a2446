"""OpenVINO runs the graphs xvol exports: the same verdicts as ONNX Runtime against the float64 reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from xvol_export.checkpoint import load_model
from xvol_export.errors import XvolError
from xvol_export.export import onnx_graph
from xvol_export.export.precision import to_fp16, to_int8_qdq
from xvol_export.inputs import load_npz
from xvol_export.runners import InputSpec, OnnxRuntimeRunner, OpenVinoRunner
from xvol_export.verify import Reference, verify

pytest.importorskip("openvino", reason="needs OpenVINO (pip install 'xvol[openvino]')")

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits sample's training form, its float64 reference on 96 held-out digits, and its fp32 graph."""
    from xvol_export import fold

    model, _ = load_model(SAMPLES / "digits_xvol_resnet_tiny.pth")
    held = load_npz(SAMPLES / "digits_holdout.npz")
    held.inputs, held.labels = held.inputs[:96], held.labels[:96]
    deploy, _ = fold(model)
    graph = onnx_graph.check_graph(onnx_graph.export_onnx(deploy, (1, 1, 32, 32), dynamic=True))
    path = tmp_path_factory.mktemp("ov") / "digits.onnx"
    onnx.save(graph, path)
    return model, Reference(model, held, "training form", per_block=False), graph, path


def test_fp32_graph_on_openvino_passes_the_fp32_gate_like_onnx_runtime(digits):
    _, reference, _, path = digits
    reports = {name: verify(reference, runner) for name, runner in
               (("openvino", OpenVinoRunner(path)), ("onnxruntime", OnnxRuntimeRunner(path)))}
    for name, report in reports.items():
        assert report.passed, (name, report.failure_summary())
        assert report.precision == "fp32" and report.checks[0].ratio < 2
    assert reports["openvino"].accuracy["candidate"] == reports["onnxruntime"].accuracy["candidate"]


def test_openvino_in_bf16_is_caught_by_the_fp32_gate(digits):
    """OpenVINO's CPU default on bf16-capable processors: the fp32 gate sees it, and says by how much."""
    _, reference, _, path = digits
    report = verify(reference, OpenVinoRunner(path, inference_precision="bf16"), precision="fp32")
    assert not report.passed and "x over" in report.failure_summary()
    assert report.checks[0].candidate.rel_l2 > 1e-4


def test_fp16_and_int8_graphs_run_on_openvino(digits, tmp_path):
    _, reference, graph, _ = digits
    calibration = np.load(SAMPLES / "digits_calib.npz")["input"][:64]
    for precision, converted in (("fp16", to_fp16(graph)), ("int8", to_int8_qdq(graph, calibration, "input"))):
        path = tmp_path / f"digits.{precision}.onnx"
        onnx.save(converted, path)
        report = verify(reference, OpenVinoRunner(path))
        assert report.precision == precision
        assert report.passed, (precision, report.failure_summary())
        assert report.accuracy["candidate"] >= report.accuracy["reference"] - 0.02


def test_runner_contract_shapes_and_devices(digits, tmp_path):
    _, _, graph, path = digits
    runner = OpenVinoRunner(path)
    assert not runner.is_active
    with runner:
        assert runner.is_active and runner.input_names() == ["input"]
        assert runner.input_metadata() == {"input": InputSpec(np.dtype(np.float32), (None, 1, None, None))}
        assert runner.fixed_batch() is None
        out = runner.infer({"input": np.zeros((2, 1, 40, 24), np.float32)})
        assert list(out) == ["output"] and out["output"].shape == (2, 10)
    assert not runner.is_active
    static = tmp_path / "static.onnx"
    onnx.save(onnx_graph.check_graph(onnx_graph.export_onnx(digits[0].eval(), (1, 1, 32, 32))), static)
    with pytest.raises(XvolError, match=r"fixed|shape 1x1x32x32"):
        OpenVinoRunner(static).infer({"input": np.zeros((1, 1, 30, 30), np.float32)})
    with pytest.raises(XvolError, match="no device 'NOPE'"):
        OpenVinoRunner(path, device="NOPE").activate()
    with pytest.raises(XvolError, match="inference precision"):
        OpenVinoRunner(path, inference_precision="int4")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_every_runner_keeps_the_contract(digits, backend):
    """activate/deactivate with is_active, input metadata with dynamic dimensions as None, outputs by name."""
    from xvol_export.runners import TorchRunner

    model, _, _, path = digits
    runner = {"torch": lambda: TorchRunner(model), "onnxruntime": lambda: OnnxRuntimeRunner(path),
              "openvino": lambda: OpenVinoRunner(path)}[backend]()
    assert not runner.is_active
    with runner:
        assert runner.is_active
        (name, spec), = runner.input_metadata().items()
        assert name == "input" and spec.dtype == np.float32 and spec.shape[:2] == (None, 1)
        out = runner.infer({"input": np.zeros((3, 1, 32, 32), np.float32)})
        assert list(out) == ["output"] and out["output"].shape == (3, 10)
    assert not runner.is_active
