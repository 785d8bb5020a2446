"""OpenVINO runs the graphs xvol exports: the same verdicts as ONNX Runtime against the float64 reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from xvol_export import env
from xvol_export.checkpoint import load_model
from xvol_export.errors import XvolError
from xvol_export.export import onnx_graph
from xvol_export.export.int8 import int8_layout, to_int8_qdq
from xvol_export.export.precision import to_fp16
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
    """OpenVINO's CPU default on bf16-capable processors: the fp32 gate sees it, and says by how much. Where oneDNN
    has no native bf16 (AVX2 alone, as `xvol doctor` says), OpenVINO keeps the IR in f32, says so, and passes."""
    _, reference, _, path = digits
    runner = OpenVinoRunner(path, inference_precision="bf16")
    report = verify(reference, runner, precision="fp32")
    if not env.native_bf16():
        assert runner.compiled_precision == "f32", env.cpu_isa()
        assert report.passed, report.failure_summary()
        return
    assert not report.passed and "x over" in report.failure_summary()
    assert report.checks[0].candidate.rel_l2 > 1e-4


def test_fp16_and_int8_graphs_run_on_openvino(digits, tmp_path):
    _, reference, graph, _ = digits
    calibration = np.load(SAMPLES / "digits_calib.npz")["input"][:64]
    int8 = to_int8_qdq(graph, calibration, "input", layout=int8_layout("openvino"))  # 7-bit weights without VNNI
    for precision, converted in (("fp16", to_fp16(graph)), ("int8", int8)):
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


# ------------------------------------------------------------------ inference precision: asked, read back, reported

HOLDOUT = SAMPLES / "digits_holdout.npz"


needs_bf16 = pytest.mark.skipif(not env.native_bf16(), reason=f"no native bf16 for oneDNN here ({env.cpu_isa()}): "
                                "OpenVINO computes an IR asked for bf16 in f32, which the tests of f32 cover")


def _cli(*args) -> tuple[int, str]:
    """``xvol ARGS`` in this process (in a module fixture, where capsys is not available)."""
    import contextlib
    import io

    from xvol_cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code, out.getvalue()


@pytest.fixture(scope="module")
def irs(tmp_path_factory):
    """`xvol export SAMPLE --format openvino` and `... --precision bf16` (default names), judged on the held-out
    digits: the folder and both JSON reports."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("ov_irs")
    sample = shutil.copy(SAMPLES / "digits_xvol_resnet_tiny.pth", folder / "digits.pth")
    reports = {}
    for precision in ("fp32", "bf16"):
        code, text = _cli("export", sample, "--format", "openvino", "--precision", precision, "--data", HOLDOUT,
                          "--json", folder / f"export.{precision}.json")
        assert code == 0, text
        reports[precision] = json.loads((folder / f"export.{precision}.json").read_text()), text
    return folder, reports


def test_export_fp32_ir_matches_the_training_form(irs):
    """The acceptance figures: rel L2 <= 1e-5 and 100 % top-1 agreement on the 360 held-out digits, on OpenVINO."""
    folder, reports = irs
    report, text = reports["fp32"]
    assert report["written"] and report["files"] == [str(folder / "digits.xml"), str(folder / "digits.bin")]
    assert (report["precision"], report["graph_precision"], report["inference_precision"]) == ("fp32",) * 3
    ir = report["ir_verification"]
    assert ir["passed"] and ir["precision"] == "fp32" and ir["inputs"]["real_data"]
    assert ir["output"]["rel_l2"] <= 1e-5 and ir["output"]["top1_agreement"] == 1.0
    assert ir["accuracy"]["count"] == 360 and ir["accuracy"]["candidate"] == ir["accuracy"]["reference"] > 0.95
    assert any("OpenVINO computed in fp32 (INFERENCE_PRECISION_HINT f32" in note for note in ir["notes"])
    assert "OpenVINO IR on OpenVINO, computed in fp32 (judged as fp32)" in text and "accuracy 99." in text


@needs_bf16
def test_export_bf16_ir_stays_fp32_and_is_judged_in_bf16(irs):
    import openvino as ov

    folder, reports = irs
    report, text = reports["bf16"]
    xml = folder / "digits.bf16.xml"  # the default name
    assert report["written"] and report["files"] == [str(xml), str(xml.with_suffix(".bin"))]
    assert (report["precision"], report["graph_precision"], report["inference_precision"]) == ("bf16", "fp32", "bf16")
    assert report["verification"]["precision"] == "fp32"  # the ONNX graph on ONNX Runtime: fp32
    ir = report["ir_verification"]
    assert ir["passed"] and ir["precision"] == "bf16" and ir["gate"]["baseline"] == "bf16"
    output, baseline = ir["output"], ir["outputs"][0]["baseline"]
    assert 1e-4 < output["rel_l2"] <= 4 * baseline["rel_l2"]  # really bf16, within the bf16 gate
    assert output["top1_agreement"] >= 0.99
    acc = ir["accuracy"]
    assert acc["count"] == 360 and acc["candidate"] >= acc["reference"] - 0.01 and "baseline" in acc
    assert "computed in bf16 (judged as bf16)" in text and "bf16 baseline" in text
    model = ov.Core().read_model(str(xml))
    assert model.get_rt_info(["xvol", "inference_precision"]).astype(str) == "bf16"
    assert model.get_rt_info(["xvol", "precision"]).astype(str) == "fp32"
    runner = OpenVinoRunner(xml)  # no explicit precision: the IR's recorded one
    assert runner.graph_precision == "fp32" and runner.inference_precision == "bf16" and runner.precision == "bf16"


@needs_bf16
def test_verify_and_bench_on_the_irs_say_what_ran(irs, capsys):
    import json

    import jsonschema

    from xvol_export.bench import SCHEMA_PATH

    from helpers import run_cli

    folder, _ = irs
    sample = folder / "digits.pth"
    figures = {}
    for name in ("digits.xml", "digits.bf16.xml"):
        r = run_cli(capsys, "verify", sample, folder / name, "--data", HOLDOUT, "--json", folder / f"{name}.v.json")
        assert r.code == 0, r.text
        figures[name] = json.loads((folder / f"{name}.v.json").read_text())
    fp32, bf16 = figures["digits.xml"], figures["digits.bf16.xml"]
    assert fp32["precision"] == "fp32" and fp32["output"]["rel_l2"] <= 1e-5 and fp32["output"]["top1_agreement"] == 1
    assert bf16["precision"] == "bf16" and "default bf16 gate" in bf16["judged_by"] and bf16["passed"]
    assert bf16["output"]["rel_l2"] > 1e-4 and bf16["accuracy"]["count"] == 360
    assert any("computed in bf16" in n and "as the IR's rt_info records" in n for n in bf16["notes"])

    bench = folder / "bench.json"
    r = run_cli(capsys, "bench", folder / "digits.xml", folder / "digits.bf16.xml", "--iterations", "3", "--warmup",
                "1", "--json", bench)
    assert r.code == 0, r.text
    payload = json.loads(bench.read_text())
    jsonschema.validate(payload, json.loads(SCHEMA_PATH.read_text()), cls=jsonschema.Draft202012Validator)
    assert [(c["artifact"], c["precision"]) for c in payload["cases"]] == [("digits.xml", "fp32"),
                                                                          ("digits.bf16.xml", "bf16")]
    assert "prec" in r.out and "bf16" in r.out
    # an explicit precision rules over the IR's recorded one
    r = run_cli(capsys, "bench", folder / "digits.bf16.xml", "--precision", "fp32", "--iterations", "2",
                "--json", folder / "bench32.json", "--force")
    assert r.code == 0, r.text
    assert json.loads((folder / "bench32.json").read_text())["cases"][0]["precision"] == "fp32"


def test_export_bf16_is_an_openvino_precision_only(tmp_path, capsys):
    from helpers import run_cli

    r = run_cli(capsys, "export", SAMPLES / "digits_xvol_resnet_tiny.pth", "--precision", "bf16", "-o",
                tmp_path / "d.onnx")
    assert r.code == 2 and "--format openvino" in r.message and "--precision fp16" in r.message
    assert "Traceback" not in r.text and list(tmp_path.iterdir()) == []


@needs_bf16
def test_runner_reports_the_precision_read_back_from_the_compiled_model(digits):
    _, _, _, path = digits
    default = OpenVinoRunner(path)
    assert default.inference_precision == "f32" and default.compiled_precision is None
    with default:
        assert default.compiled_precision == "f32" and default.precision == "fp32"
    bf16 = OpenVinoRunner(path, inference_precision="bf16")
    assert bf16.precision == "bf16"  # asked for, before compiling
    with bf16:
        assert bf16.compiled_precision == "bf16"
    assert bf16.precision == "bf16" and "computed in bf16" in bf16.precision_note()  # kept after deactivate
    f16 = OpenVinoRunner(path, inference_precision="f16")
    with f16:
        pass
    # the plugin may not have f16 here (x86 without AMX-FP16 computes bf16): what ran is what is reported
    assert f16.precision == {"f16": "fp16", "bf16": "bf16", "f32": "fp32"}[f16.compiled_precision]
    if f16.compiled_precision != "f16":
        assert f"the CPU plugin runs {f16.compiled_precision}" in f16.precision_note()


@needs_bf16
def test_a_bf16_run_is_judged_and_reported_as_bf16(digits):
    _, reference, _, path = digits
    report = verify(reference, OpenVinoRunner(path, inference_precision="bf16"))
    assert report.passed, report.failure_summary()
    assert report.precision == "bf16" and report.to_dict()["precision"] == "bf16"
    assert report.gate.baseline == "bf16" and report.checks[0].candidate.rel_l2 > 1e-4
    assert any("OpenVINO computed in bf16" in note for note in report.to_dict()["notes"])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_openvino_backend_maps_precisions_to_hints(digits, precision):
    from xvol_export.backends import BACKENDS, RunnerOptions

    _, _, _, path = digits
    runner = BACKENDS["openvino"].make(path, None, "ov", RunnerOptions(precision=precision))
    assert runner.inference_precision == {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[precision]


def test_other_backends_take_only_their_artifacts_own_precision(digits):
    from xvol_export.backends import BACKENDS, RunnerOptions

    model, _, _, path = digits
    for precision in (None, "fp32"):
        assert BACKENDS["onnxruntime"].make(path, None, "ort", RunnerOptions(precision=precision))
        assert BACKENDS["torch"].make(path, model.eval(), "pt", RunnerOptions(precision=precision))
    with pytest.raises(XvolError, match=r"--precision bf16 applies to the openvino backend; onnxruntime runs the "
                                        r"graph's own precision, fp32 \(export --precision fp16 for an fp16 graph\)"):
        BACKENDS["onnxruntime"].make(path, None, "ort", RunnerOptions(precision="bf16"))
    with pytest.raises(XvolError, match=r"torch runs the checkpoint's own precision, fp32 \(xvol fold --dtype fp16"):
        BACKENDS["torch"].make(path, model.eval(), "pt", RunnerOptions(precision="fp16"))
    for backend in ("openvino", "onnxruntime", "torch"):
        with pytest.raises(XvolError, match=r"Unknown --precision 'f32'. Choose one of: fp32, bf16, fp16"):
            BACKENDS[backend].make(path, model.eval(), "x", RunnerOptions(precision="f32"))
