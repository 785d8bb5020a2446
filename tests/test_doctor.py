"""`xvol doctor`: what this machine can do, feature by feature, judged against what is really installed here
(no library is mocked; the only stand-ins are a fake ``nvidia-smi`` and a broken ``tensorrt`` package, to
show the doctor survives them)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from xvol_export import doctor
from xvol_export.doctor import TENSORRT_INSTALL, machine_report

from helpers import run_cli

FEATURES = [
    "fold", "verify", "export --format onnx", "export --simplifier onnxslim", "export --simplifier onnxsim",
    "export --exporter dynamo", "export --format openvino", "export --format engine", "bench --device cuda",
    "bench --cuda-graph", "bench --backend onnxruntime --device cuda", "bench --backend openvino",
    "bench --backend tensorrt",
]
ENGINE_FEATURES = ("export --format engine", "bench --backend tensorrt")
CUDA_FEATURES = ("bench --device cuda", "bench --cuda-graph", "bench --backend onnxruntime --device cuda")


def _real_tensorrt() -> bool:
    """NVIDIA's TensorRT imports here (type stubs alone leave an empty ``tensorrt`` namespace package)."""
    try:
        trt = importlib.import_module("tensorrt")
    except Exception:  # noqa: BLE001
        return False
    return getattr(trt, "__file__", None) is not None and hasattr(trt, "Builder")


GPU = torch.cuda.is_available()
SLEEP = shutil.which("sleep")
REAL_TENSORRT = _real_tensorrt()


@pytest.fixture(scope="module")
def report():
    return machine_report()


def _features(report: dict) -> dict[str, dict]:
    return {row["feature"]: row for row in report["features"]}


# ------------------------------------------------------------------------------------- the report

def test_report_keeps_its_keys_and_adds_the_new_sections(report):
    for key in ("xvol_version", "python", "platform", "cpu", "packages", "cuda", "onnxruntime", "openvino",
                "tensorrt", "architectures", "gpu", "polygraphy", "features"):
        assert key in report, key
    json.dumps(report)  # JSON-safe as it is
    assert report["packages"]["torch"] == importlib.metadata.version("torch")
    assert set(report["cuda"]) == {"available", "devices", "torch_cuda"}
    assert report["cuda"]["available"] is report["gpu"]["available"] is GPU
    gpu = report["gpu"]
    assert gpu["torch"] == torch.__version__ and gpu["torch_cuda"] == torch.version.cuda
    assert gpu["device_count"] == len(gpu["devices"]) == (torch.cuda.device_count() if GPU else 0)
    for device in gpu["devices"]:
        major, minor = torch.cuda.get_device_capability(device["index"])
        assert device["compute_capability"] == f"{major}.{minor}"
        assert device["name"] == torch.cuda.get_device_name(device["index"]) and device["memory_gib"] > 0
    trt = report["tensorrt"]
    assert trt["available"] is REAL_TENSORRT and isinstance(trt["can_build"], bool)
    assert (trt["reason"] is None) is trt["can_build"]
    assert isinstance(trt["distributions"], dict)


def test_every_feature_has_a_row_with_works_and_a_reason_exactly_when_it_does_not(report):
    assert [row["feature"] for row in report["features"]] == FEATURES
    for row in report["features"]:
        assert set(row) == {"feature", "works", "needs", "reason"}
        assert isinstance(row["works"], bool) and isinstance(row["needs"], str) and row["needs"]
        if row["works"]:
            assert row["reason"] is None, row
        else:
            assert isinstance(row["reason"], str) and len(row["reason"]) > 20, row


def test_the_core_features_work_here_and_the_optional_ones_follow_what_is_installed(report):
    rows = _features(report)
    for feature in ("fold", "verify", "export --format onnx", "export --simplifier onnxslim"):
        assert rows[feature]["works"] is True, rows[feature]
    installed = {m: importlib.util.find_spec(m) is not None for m in ("onnxsim", "onnxscript")}
    assert rows["export --simplifier onnxsim"]["works"] is installed["onnxsim"]
    assert rows["export --exporter dynamo"]["works"] is installed["onnxscript"]
    if not installed["onnxscript"]:
        assert "pip install 'xvol[dynamo]'" in rows["export --exporter dynamo"]["reason"]


def test_openvino_features_work_and_its_devices_and_cpu_precision_are_reported(report):
    pytest.importorskip("openvino", reason="needs OpenVINO (pip install 'xvol[openvino]')")
    import openvino as ov

    openvino = report["openvino"]
    assert openvino["available"] is True and openvino["version"] == ov.__version__
    assert openvino["available_devices"] == openvino["devices"] == list(ov.Core().available_devices)
    assert "CPU" in openvino["available_devices"]
    assert openvino["cpu_default_inference_precision"] in ("f32", "bf16", "f16")
    rows = _features(report)
    for feature in ("export --format openvino", "bench --backend openvino"):
        assert rows[feature] == {"feature": feature, "works": True, "needs": "openvino", "reason": None}


def test_polygraphy_and_onnxruntime_are_reported_as_installed(report):
    polygraphy = report["polygraphy"]
    if importlib.util.find_spec("polygraphy") is None:
        assert polygraphy["available"] is False and "pip install polygraphy" in polygraphy["reason"]
    else:
        assert polygraphy == {"available": True, "version": importlib.import_module("polygraphy").__version__,
                              "reason": None}
    import onnxruntime

    assert report["onnxruntime"] == {"available": True, "version": onnxruntime.__version__,
                                     "providers": onnxruntime.get_available_providers()}


# ------------------------------------------------------------------- this machine: no GPU, no TensorRT

@pytest.mark.skipif(GPU, reason="PyTorch sees a CUDA GPU here")
def test_without_a_gpu_it_says_so_plainly_with_the_reason(report):
    gpu = report["gpu"]
    assert gpu["available"] is False and gpu["devices"] == [] and gpu["device_count"] == 0
    if torch.version.cuda is None:
        assert f"PyTorch {torch.__version__} is a CPU-only build" in gpu["reason"]
        assert "install a CUDA build of PyTorch" in gpu["reason"]
    else:
        assert "sees no CUDA device" in gpu["reason"]
    if shutil.which("nvidia-smi") is None:
        assert gpu["driver_version"] is None and "nvidia-smi is not on PATH" in gpu["driver_reason"]
    rows = _features(report)
    for feature in CUDA_FEATURES:
        assert rows[feature]["works"] is False and "no CUDA GPU" in rows[feature]["reason"], rows[feature]


@pytest.mark.skipif(GPU or REAL_TENSORRT, reason="this machine has a GPU or TensorRT")
def test_engine_features_do_not_work_and_say_what_is_missing_and_how_to_install_it(report):
    trt = report["tensorrt"]
    assert trt["available"] is False and trt["version"] is None and trt["can_build"] is False
    for words in ("TensorRT is not installed", TENSORRT_INSTALL, "pip install 'xvol[tensorrt]'", "no CUDA GPU"):
        assert words in trt["reason"], words
    rows = _features(report)
    for feature in ENGINE_FEATURES:
        row = rows[feature]
        assert row["works"] is False
        for words in ("TensorRT is not installed", TENSORRT_INSTALL, "no CUDA GPU"):
            assert words in row["reason"], (feature, words)


@pytest.mark.skipif(REAL_TENSORRT, reason="TensorRT is installed here: the stubs' namespace package cannot stand in")
def test_type_stubs_are_not_taken_for_tensorrt(tmp_path, monkeypatch):
    """tensorrt-stubs leaves an importable, empty 'tensorrt' namespace package (a find_spec check says yes): laid
    out here as the stubs' wheel installs it (a folder of .pyi files and its dist-info), on the import path."""
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("class Builder: ...\n")
    info = tmp_path / "tensorrt_stubs-10.13.0.35.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tensorrt-stubs\nVersion: 10.13.0.35.1\n")
    (info / "RECORD").write_text("tensorrt/__init__.pyi,,\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    importlib.invalidate_caches()
    try:
        trt = machine_report()["tensorrt"]
    finally:
        sys.modules.pop("tensorrt", None)
    assert trt["available"] is False
    assert "empty namespace package" in trt["reason"] and "type stubs are not TensorRT" in trt["reason"]
    assert "tensorrt-stubs 10.13.0.35.1" in trt["reason"]
    stubs = {name: version for name, version in trt["distributions"].items() if "stubs" in name.lower()}
    assert stubs and all(f"{name} {version}" in trt["reason"] for name, version in stubs.items())


def test_a_broken_tensorrt_install_is_reported_not_raised(tmp_path, monkeypatch):
    package = tmp_path / "tensorrt"
    package.mkdir()
    (package / "__init__.py").write_text(
        'raise OSError("libnvinfer.so.10: cannot open shared object file: No such file or directory")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    importlib.invalidate_caches()
    report = machine_report()
    sys.modules.pop("tensorrt", None)
    trt = report["tensorrt"]
    assert trt["available"] is False and trt["can_build"] is False
    assert "TensorRT is installed but does not import (OSError: libnvinfer.so.10" in trt["reason"]
    assert TENSORRT_INSTALL in trt["reason"]
    rows = _features(report)
    assert all(not rows[f]["works"] and "OSError: libnvinfer.so.10" in rows[f]["reason"] for f in ENGINE_FEATURES)


# ------------------------------------------------------------------------------------ nvidia-smi

def _fake_nvidia_smi(folder: Path, body: str, monkeypatch) -> None:
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{body}\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))


def test_driver_version_from_nvidia_smi(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, 'echo "$@" > args; printf "550.54.15\\n550.54.15\\n"', monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert doctor._nvidia_driver() == ("550.54.15", None)  # one line per GPU, said once
    assert (tmp_path / "args").read_text().split() == ["--query-gpu=driver_version", "--format=csv,noheader"]


@pytest.mark.skipif(shutil.which("sleep") is None, reason="needs sleep(1)")
def test_a_missing_failing_or_hanging_nvidia_smi_is_tolerated(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    version, reason = doctor._nvidia_driver()
    assert version is None and "nvidia-smi is not on PATH" in reason
    _fake_nvidia_smi(tmp_path, "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                               "driver\" >&2; exit 9", monkeypatch)
    version, reason = doctor._nvidia_driver()
    assert version is None and "exit 9" in reason and "couldn't communicate with the NVIDIA driver" in reason
    _fake_nvidia_smi(tmp_path, f"exec {SLEEP} 5", monkeypatch)
    monkeypatch.setattr(doctor, "_NVIDIA_SMI_TIMEOUT_S", 0.3)
    start = time.perf_counter()
    version, reason = doctor._nvidia_driver()
    assert version is None and "did not answer within 0.3 s" in reason
    assert time.perf_counter() - start < 3


# ------------------------------------------------------------------------------------ the command

def test_doctor_prints_versions_gpu_and_a_features_table_and_writes_json(capsys, tmp_path, monkeypatch, report):
    monkeypatch.chdir(tmp_path)
    r = run_cli(capsys, "doctor", "--json", "out.json")
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["command"] == "doctor" and written["status"] == "PASSED"
    assert [(row["feature"], row["works"]) for row in written["features"]] == \
        [(row["feature"], row["works"]) for row in report["features"]]
    assert written["tensorrt"]["can_build"] is report["tensorrt"]["can_build"]
    assert written["gpu"]["available"] is GPU
    for words in (f"torch {torch.__version__}", "GPU:", "ONNX Runtime:", "OpenVINO:", "TensorRT", "Polygraphy:",
                  "What works here"):
        assert words in r.out, words
    lines = r.out.splitlines()
    assert max(len(line) for line in lines) <= 120
    for row in report["features"]:  # one table row per feature, with its mark
        line = next(line for line in lines if line.startswith(f"│ {row['feature']} "))
        assert ("✓" if row["works"] else "✗") in line, line
    if not report["tensorrt"]["can_build"]:
        assert "'xvol[tensorrt]'" in r.out  # brackets printed, not taken for Rich markup


def test_doctor_is_fast(report):
    start = time.perf_counter()
    machine_report()
    assert time.perf_counter() - start < 5
