"""The backend registry: every backend says what it opens and why it cannot run; one graph on several backends."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from xvol_export.artifacts import artifact_kind, open_artifact
from xvol_export.backends import BACKENDS, DEFAULT_BACKEND, KIND_NAMES, backends_for, get_backend
from xvol_export.bench import SCHEMA_PATH
from xvol_export.checkpoint import load_model
from xvol_export.errors import XvolError
from xvol_export.jobs import ExportSettings, export_checkpoint

from helpers import run_cli

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "digits_xvol_resnet_tiny.pth"
FAST = ("--iterations", "3", "--warmup", "1")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The digits sample, its fp32 ONNX graph and the same graph as OpenVINO IR."""
    folder = tmp_path_factory.mktemp("backends")
    assert export_checkpoint(SAMPLE, folder / "digits.onnx", ExportSettings(seed=0)).written
    ir = None
    try:
        import openvino as ov
    except ImportError:
        pass
    else:
        model = ov.convert_model(str(folder / "digits.onnx"))
        ov.save_model(model, str(folder / "digits.xml"), compress_to_fp16=False)
        ov.save_model(model, str(folder / "digits.f16.xml"))  # OpenVINO's default: weights stored in fp16
        ir = folder / "digits.xml"
    return folder, ir


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_says_what_it_opens_and_what_it_needs(name):
    backend = BACKENDS[name]
    assert backend.kinds and set(backend.kinds) <= set(KIND_NAMES) and backend.title and backend.devices
    reason = backend.unavailable()
    if reason is not None:  # not installed here: the reason names it and says how to get it
        assert backend.title in reason and "not installed" in reason and "xvol doctor" in reason
    assert get_backend(name) is backend


def test_every_artifact_kind_has_a_default_backend():
    assert set(DEFAULT_BACKEND) == set(KIND_NAMES)
    for kind, backend in DEFAULT_BACKEND.items():
        assert kind in backend.kinds
    assert {kind: b.name for kind, b in DEFAULT_BACKEND.items()} == {
        "checkpoint": "torch", "onnx": "onnxruntime", "openvino": "openvino", "engine": "tensorrt"}


def test_a_backend_that_does_not_open_a_kind_is_refused_naming_those_that_do():
    with pytest.raises(XvolError, match="a checkpoint runs on the torch backend, not openvino"):
        backends_for("m.pth", "checkpoint", ("openvino",))
    with pytest.raises(XvolError, match="Unknown backend 'tvm'"):
        backends_for("m.onnx", "onnx", ("tvm",))


def test_an_engine_without_tensorrt_says_why(tmp_path):
    if BACKENDS["tensorrt"].unavailable() is None:
        pytest.skip("TensorRT is installed here")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not a plan")
    with pytest.raises(XvolError, match="TensorRT is not installed.*NVIDIA GPU") as err:
        open_artifact(engine)
    assert "m.engine" in str(err.value) and "xvol[tensorrt]" in str(err.value)


def test_one_graph_on_onnxruntime_and_openvino_interleaved_in_one_table(graphs, capsys, tmp_path):
    pytest.importorskip("openvino", reason="needs OpenVINO (pip install 'xvol[openvino]')")
    folder, _ = graphs
    report_path = tmp_path / "b.json"
    r = run_cli(capsys, "bench", folder / "digits.onnx", "--backend", "onnxruntime,openvino", *FAST,
                "--json", report_path)
    assert r.code == 0, r.text
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    cases = report["cases"]
    assert [(c["artifact"], c["backend"]) for c in cases] == [("digits.onnx [onnxruntime]", "onnxruntime"),
                                                               ("digits.onnx [openvino]", "openvino")]
    assert cases[0]["ratio_to_first"] == 1.0 and cases[1]["ratio_to_first"] > 0
    assert "digits.onnx [openvino]" in r.out


def test_openvino_ir_is_an_artifact_that_verify_judges(graphs, capsys, tmp_path):
    folder, ir = graphs
    if ir is None:
        pytest.skip("needs OpenVINO (pip install 'xvol[openvino]')")
    assert artifact_kind(ir) == "openvino"
    assert open_artifact(ir).input_size == (1, 32, 32)
    r = run_cli(capsys, "verify", SAMPLE, ir, "--data", SAMPLE.parent / "digits_holdout.npz",
                "--json", tmp_path / "v.json")
    assert r.code == 0, r.text
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["float64_reference"] and report["precision"] == "fp32" and report["accuracy"]["count"] == 360
    assert report["outputs"][0]["ratio_rel_l2"] < 4


def test_an_ir_with_fp16_weights_is_judged_as_fp16(graphs, tmp_path):
    """OpenVINO's save_model stores weights in fp16 unless told otherwise: the fp32 gate would fail it (700x
    over); it is recognised as fp16 and judged against the training form in fp16."""
    folder, ir = graphs
    if ir is None:
        pytest.skip("needs OpenVINO (pip install 'xvol[openvino]')")
    from xvol_export.inputs import load_npz
    from xvol_export.verify import Reference, verify

    model, _ = load_model(SAMPLE)
    held = load_npz(SAMPLE.parent / "digits_holdout.npz")
    held.inputs, held.labels = held.inputs[:48], held.labels[:48]  # fp16 baselines are slow on CPUs
    reference = Reference(model, held, "training form", per_block=False)
    runner = open_artifact(folder / "digits.f16.xml").runner
    assert runner.precision == "fp16" and open_artifact(ir).runner.precision == "fp32"
    assert verify(reference, runner).passed
    as_fp32 = verify(reference, open_artifact(folder / "digits.f16.xml").runner, precision="fp32")
    assert not as_fp32.passed and "x over" in as_fp32.failure_summary()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_export_to_openvino_ir_is_judged_on_openvino_before_it_is_written(tmp_path, precision):
    pytest.importorskip("openvino", reason="needs OpenVINO (pip install 'xvol[openvino]')")
    import openvino as ov

    from xvol_export.runners import OpenVinoRunner

    held = SAMPLE.parent / "digits_holdout.npz"
    out = tmp_path / f"digits.{precision}.xml"
    result = export_checkpoint(SAMPLE, out,
        ExportSettings(format="openvino", precision=precision, data=held,
                       calib=SAMPLE.parent / "digits_calib.npz" if precision == "int8" else None))
    assert result.passed and result.written, result.failure_summary()
    assert result.files == [str(out), str(out.with_suffix(".bin"))]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.with_suffix(".bin").name, out.name]  # nothing else
    ir = result.ir_verification
    assert ir.precision == precision and ir.accuracy["count"] == 360 and ir.passed
    assert OpenVinoRunner(out).precision == precision  # fp32 weights stay fp32 (OpenVINO's default is fp16)
    model = ov.Core().read_model(str(out))
    assert model.get_rt_info(["xvol", "precision"]).astype(str) == precision


def test_export_to_openvino_writes_nothing_when_a_check_fails(tmp_path):
    pytest.importorskip("openvino", reason="needs OpenVINO (pip install 'xvol[openvino]')")
    from xvol_export.compare import Tolerance

    out = tmp_path / "digits.xml"
    result = export_checkpoint(SAMPLE, out, ExportSettings(format="openvino", seed=0, tolerance=Tolerance(0.0, 0.0)))
    assert not result.passed and not result.written
    assert list(tmp_path.iterdir()) == []  # no IR, no staging folder
