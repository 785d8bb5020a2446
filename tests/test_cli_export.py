"""`xvol export` and `xvol verify` with ONNX on either side, run in-process: exit codes, the PASSED/FAILED
last line, --json reports, saved and reloaded inputs, and bad input refused without a traceback or a file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from xvol_export import create_model, graph_info, jobs
from xvol_export.checkpoint import save_checkpoint
from xvol_export.inputs import random_inputs
from xvol_export.jobs import ExportSettings, export_checkpoint
from xvol_export.verify.gates import tolerance_basis

from helpers import randomize_bn, run_cli


def listing(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (hidden temporaries included) with its content."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A tiny training checkpoint (3 input channels, random BN statistics) and its verified ONNX export."""
    folder = tmp_path_factory.mktemp("cli_export")
    torch.manual_seed(0)
    model = create_model("xvol_resnet_tiny", blocks_per_stage=1)
    randomize_bn(model, torch.Generator().manual_seed(5))
    model.eval()
    save_checkpoint(model, folder / "train.pth")
    result = export_checkpoint(folder / "train.pth", folder / "model.onnx", ExportSettings(seed=0))
    assert result.written
    return folder


@pytest.fixture
def work(tmp_path, shared, monkeypatch):
    """A fresh current folder holding train.pth and model.onnx."""
    for name in ("train.pth", "model.onnx"):
        shutil.copy(shared / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -------------------------------------------------------------------------------------------- export

def test_export_writes_graph_and_json_report(capsys, work):
    r = run_cli(capsys, "export", "train.pth", "-o", "out.onnx", "--json", "r.json", "--seed", "3")
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    assert "Traceback" not in r.text
    assert "wrote out.onnx" in r.out and "seed 3" in r.out
    assert sorted(os.listdir(work)) == ["model.onnx", "out.onnx", "r.json", "train.pth"]

    report = json.loads((work / "r.json").read_text())
    assert report["status"] == "PASSED" and report["command"] == "export"
    assert report["passed"] is True and report["written"] is True
    assert report["files"] == ["out.onnx"] and report["format"] == "onnx" and report["precision"] == "fp32"
    assert report["input_shape"] == [1, 3, 32, 32]
    assert report["simplifier"] == "onnxslim"
    assert report["fold_verification"]["passed"] is True
    verification = report["verification"]
    assert verification["passed"] is True
    assert verification["reference"] == "training form"
    assert verification["inputs"]["seed"] == 3
    assert 0 < verification["output"]["rel_l2"] < 1e-5
    assert 0 < verification["output"]["max_abs"] < 1e-4
    assert report["graph"]["batchnorm_nodes"] == 0
    assert report["graph"]["conv_nodes"] == report["graph"]["conv_modules"] > 0

    meta = graph_info.read_metadata(onnx.load("out.onnx"))
    assert json.loads(meta["xvol.verified"])["rel_l2"] == verification["output"]["rel_l2"]
    assert meta == report["metadata"]


def test_export_failing_check_exits_1_and_writes_only_the_report(capsys, work):
    before = listing(work)
    r = run_cli(capsys, "export", "train.pth", "-o", "out.onnx", "--atol", "0", "--rtol", "0", "--seed", "2",
                "--json", "r.json")
    assert r.code == 1, r.text
    assert r.last_line == "FAILED"
    assert "Traceback" not in r.text
    assert "ONNX" in r.message and "abs=" in r.message
    assert not (work / "out.onnx").exists()
    assert set(listing(work)) == set(before) | {"r.json"}
    report = json.loads((work / "r.json").read_text())
    assert report["status"] == "FAILED" and report["written"] is False and report["files"] == []


def test_export_force_overwrites(capsys, work):
    (work / "out.onnx").write_bytes(b"an older graph")
    r = run_cli(capsys, "export", "train.pth", "-o", "out.onnx", "--seed", "1", "--force")
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    assert onnx.load("out.onnx").graph.node
    assert sorted(os.listdir(work)) == ["model.onnx", "out.onnx", "train.pth"]


# -------------------------------------------------------------------------------------------- verify

@pytest.mark.parametrize("order", [("train.pth", "model.onnx"), ("model.onnx", "train.pth")],
                         ids=["checkpoint-vs-onnx", "onnx-vs-checkpoint"])
def test_verify_with_onnx_on_either_side(capsys, work, order):
    r = run_cli(capsys, "verify", *order, "--seed", "1", "--json", "v.json")
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    assert "seed 1" in r.out and "minimum required tolerance" in r.out
    report = json.loads((work / "v.json").read_text())
    assert report["status"] == "PASSED" and report["command"] == "verify"
    assert (report["reference"], report["candidate"]) == order
    assert report["inputs"]["seed"] == 1 and report["inputs"]["shape"] == [2, 3, 32, 32]
    assert 0 < report["output"]["rel_l2"] < 1e-5
    assert report["output"]["top1_agreement"] == 1.0
    assert report["blocks"] == []  # per-block checks need two PyTorch models


def test_a_checkpoint_reference_runs_in_float64_and_a_graph_reference_as_it_is(capsys, work):
    reports = []
    for order in (("train.pth", "model.onnx"), ("model.onnx", "train.pth")):
        r = run_cli(capsys, "verify", *order, "--seed", "4", "--json", f"{order[0]}.json")
        assert r.code == 0, r.text
        reports.append(json.loads((work / f"{order[0]}.json").read_text()))
    checkpoint_first, graph_first = reports
    assert checkpoint_first["float64_reference"] is True and checkpoint_first["outputs"][0]["baseline"] is not None
    assert graph_first["float64_reference"] is False and graph_first["outputs"][0]["baseline"] is None
    assert "no float64 reference" in " ".join(graph_first["notes"])
    # The graph is at fp32 rounding: no farther from float64 than the fp32 training form is (within the gate's 4x).
    assert 0 < checkpoint_first["outputs"][0]["ratio_rel_l2"] < 4


def test_saved_inputs_reproduce_the_same_numbers(capsys, work):
    r = run_cli(capsys, "verify", "train.pth", "model.onnx", "--seed", "5", "--save-inputs", "in.npz",
                "--save-outputs", "out.npz", "--json", "a.json")
    assert r.code == 0, r.text
    saved = np.load(work / "in.npz")
    assert saved.files == ["input"]
    np.testing.assert_array_equal(saved["input"], random_inputs((2, 3, 32, 32), 5).numpy())

    r = run_cli(capsys, "verify", "train.pth", "model.onnx", "--load-inputs", "in.npz", "--save-outputs",
                "out2.npz", "--json", "b.json")
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    a, b = (json.loads((work / name).read_text()) for name in ("a.json", "b.json"))
    assert b["inputs"]["source"] == "in.npz" and b["inputs"]["seed"] is None
    assert a["output"] == b["output"]  # every statistic, to the last bit
    first, second = np.load(work / "out.npz"), np.load(work / "out2.npz")
    assert sorted(first.files) == sorted(second.files) == ["candidate", "reference"]
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])
        assert first[key].shape == (2, 10)


def _small_npz(folder: Path) -> None:
    np.savez(folder / "small.npz", input=np.zeros((2, 3, 24, 24), np.float32))


@pytest.mark.parametrize("extra", [["--input-shape", "2x3x24x24"], ["--data", "small.npz"]],
                         ids=["input-shape", "data"])
def test_verify_static_onnx_at_another_size_is_a_user_error(capsys, work, extra):
    _small_npz(work)
    before = listing(work)
    r = run_cli(capsys, "verify", "train.pth", "model.onnx", *extra, "--json", "v.json")
    assert "internal error" not in r.text, r.message
    assert r.code == 2, r.text
    assert r.last_line == "FAILED"
    assert "32" in r.message and "24" in r.message
    assert listing(work) == before


def test_verify_engine_needs_tensorrt(capsys, work):
    (work / "model.engine").write_bytes(b"not really a TensorRT plan")
    before = listing(work)
    r = run_cli(capsys, "verify", "train.pth", "model.engine", "--json", "v.json")
    assert r.code == 2, r.text
    assert r.last_line == "FAILED"
    assert "Traceback" not in r.text and "internal error" not in r.text
    assert "model.engine" in r.message and "TensorRT is not installed" in r.message
    assert "xvol doctor" in r.message
    assert listing(work) == before


# ------------------------------------------------------------------------------------------ bad input

def _nothing(folder: Path) -> None:
    pass


def _gray_calib(folder: Path) -> None:
    np.savez(folder / "gray.npz", input=np.zeros((4, 1, 32, 32), np.float32))


def _existing_output(folder: Path) -> None:
    (folder / "out.onnx").write_bytes(b"keep me")


OUT = ["-o", "out.onnx", "--json", "report.json", "--seed", "1"]

BAD_INPUT = [
    pytest.param(_nothing, ["--format", "tflite", *OUT], ["Unknown format 'tflite'", "Choose one of", "onnx"],
                 id="unknown-format"),
    pytest.param(_nothing, ["--format", "engine", *OUT], ["TensorRT is not installed", "NVIDIA GPU",
                                                          "--format onnx"], id="engine-without-tensorrt"),
    pytest.param(_nothing, ["--opset", "13", *OUT], ["Opset 13", "torchscript", "17 to 20", "17 or newer",
                                                     "Choose --opset between 17 and 20"], id="opset-13"),
    pytest.param(_nothing, ["--opset", "99", *OUT], ["Opset 99", "17 to 20", "Choose --opset"], id="opset-99"),
    pytest.param(_nothing, ["--exporter", "dynamo", "--opset", "17", *OUT], ["Opset 17", "dynamo", "18 to 23"],
                 id="dynamo-opset-17"),
    pytest.param(_nothing, ["--exporter", "jit", *OUT], ["Unknown exporter 'jit'", "torchscript, dynamo"],
                 id="unknown-exporter"),
    pytest.param(_nothing, ["--precision", "int8", *OUT], ["--precision int8", "calibration", "--calib"],
                 id="int8-without-calib"),
    pytest.param(_nothing, ["--precision", "int8", "--calib", "gray.npz", "--int8-fallback", *OUT],
                 ["--int8-fallback", "--data", "random inputs cannot judge"], id="fallback-without-data"),
    pytest.param(_nothing, ["--precision", "fp16", "--int8-sensitivity", *OUT], ["--precision int8"],
                 id="sensitivity-without-int8"),
    pytest.param(_nothing, ["--precision", "int8", "--calib-method", "kl", *OUT],
                 ["--calib-method 'kl'", "minmax", "entropy", "percentile"], id="unknown-calib-method"),
    pytest.param(_nothing, ["--precision", "int8", "--int8-fallback", "--accuracy-budget", "cosine=nan", *OUT],
                 ["cosine=nan"], id="nan-budget"),
    pytest.param(_gray_calib, ["--precision", "int8", "--calib", "gray.npz", *OUT],
                 ["gray.npz", "(4, 1, 32, 32)", "3 channel", "N x 3 x H x W"], id="calib-wrong-channels"),
    pytest.param(_nothing, ["--precision", "fp8", *OUT], ["Unknown precision 'fp8'", "fp32, fp16, int8"],
                 id="unknown-precision"),
    pytest.param(_nothing, ["--imgsz", "big", *OUT], ["--imgsz 'big'", "224,320"], id="malformed-imgsz"),
    pytest.param(_nothing, ["--imgsz", "32,32,32", *OUT], ["--imgsz '32,32,32'"], id="imgsz-three-sizes"),
    pytest.param(_nothing, ["--batch", "0", *OUT], ["--batch", "at least 1"], id="batch-0"),
    pytest.param(_nothing, ["--simplifier", "onnxoptimizer", *OUT], ["onnxoptimizer", "onnxslim, onnxsim"],
                 id="unknown-simplifier"),
    pytest.param(_nothing, ["-o", "nodir/out.onnx", "--json", "report.json"],
                 ["nodir", "does not exist", "Create it first"], id="output-folder-missing"),
    pytest.param(_existing_output, OUT, ["out.onnx", "already exists", "--force"], id="output-exists"),
]


@pytest.mark.parametrize("setup, argv, words", BAD_INPUT)
def test_bad_export_input_exits_2_without_traceback_or_file(capsys, work, setup, argv, words):
    setup(work)
    before = listing(work)
    r = run_cli(capsys, "export", "train.pth", *argv)
    assert r.code == 2, r.text
    assert r.last_line == "FAILED"
    assert "Traceback" not in r.text
    assert "internal error" not in r.text
    for word in words:
        assert word in r.message, (word, r.message)
    assert listing(work) == before  # no output, no report, no temporary file; nothing changed


# ------------------------------------------------------------------------------ what the commands delegate

def test_inspect_artifact_takes_a_graph_or_a_checkpoint(shared):
    graph = jobs.inspect_artifact(shared / "model.onnx")
    assert isinstance(graph, jobs.GraphReport) and graph.to_dict() == jobs.inspect_graph(shared / "model.onnx")
    assert graph.passed and graph.failure_summary() == ""
    assert isinstance(jobs.inspect_artifact(shared / "train.pth"), jobs.InspectReport)


def test_a_user_tolerance_for_bf16_starts_from_the_fp32_graphs():
    """bf16 is OpenVINO's inference precision on an fp32 graph: --atol/--rtol complete from fp32's defaults."""
    assert tolerance_basis("bf16") == "fp32"
    assert [tolerance_basis(p) for p in ("fp32", "fp16", "int8")] == ["fp32", "fp16", "int8"]
