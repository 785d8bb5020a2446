"""TensorRT for real: engines built from the sample's graphs, judged against the training form, timed. These need
TensorRT, Polygraphy and an NVIDIA GPU, and skip, naming what is missing, everywhere else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xvol_export.errors import XvolError
from xvol_export.jobs import (
    BenchSettings,
    ExportSettings,
    VerifySettings,
    bench_artifacts,
    export_checkpoint,
    verify_artifacts,
)
from xvol_export.tensorrt.environment import engine_build_missing
from xvol_export.tensorrt.sidecar import sidecar_path

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SAMPLE = SAMPLES / "digits_xvol_resnet_tiny.pth"
HOLDOUT = SAMPLES / "digits_holdout.npz"
CALIB = SAMPLES / "digits_calib.npz"

MISSING = engine_build_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"needs TensorRT, Polygraphy and a GPU: {MISSING}")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    built = {}
    for precision in ("fp32", "fp16", "int8"):
        result = export_checkpoint(SAMPLE, folder / f"digits.{precision}.engine",
            ExportSettings(format="engine", precision=precision, calib=CALIB if precision == "int8" else None,
                           data=HOLDOUT))
        built[precision] = result
    return built


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engines_are_built_checked_and_judged_against_the_training_form(engines, precision):
    result = engines[precision]
    assert result.passed, result.failure_summary()
    engine = Path(result.output)
    assert [Path(f).name for f in result.files] == [f"digits.{precision}.onnx", engine.name, f"{engine.name}.json",
                                                    f"{engine.name}.layers.json"]
    assert result.engine["layer_check"]["passed"] and result.engine["layer_check"]["checked"] > 5
    assert result.engine_verification.precision == precision
    sidecar = json.loads(sidecar_path(engine).read_text())
    assert sidecar["precision"] == precision and sidecar["onnx_file"] == f"digits.{precision}.onnx"


def test_verify_and_bench_an_engine(engines, tmp_path):
    engine = Path(engines["fp16"].output)
    report = verify_artifacts(SAMPLE, engine, VerifySettings(data=HOLDOUT))
    assert report.passed and report.precision == "fp16"
    bench = bench_artifacts([engine], BenchSettings(device="cuda", batches=(1,), iterations=20, cuda_graph=True))
    case = bench.cases[0]
    assert case.device is not None and set(case.transfers) == {"h2d", "d2h"}


def test_a_sidecar_from_another_tensorrt_is_refused_and_a_damaged_engine_named(engines, tmp_path):
    engine = Path(engines["fp32"].output)
    copy = tmp_path / "other.engine"
    copy.write_bytes(engine.read_bytes())
    sidecar = json.loads(sidecar_path(engine).read_text())
    sidecar_path(copy).write_text(json.dumps({**sidecar, "tensorrt": "10.0.0"}))
    with pytest.raises(XvolError, match="built with TensorRT 10.0.0"):
        verify_artifacts(SAMPLE, copy, VerifySettings(data=HOLDOUT))
    sidecar_path(copy).unlink()  # no sidecar: it runs, and the report says what could not be checked
    report = verify_artifacts(SAMPLE, copy, VerifySettings(data=HOLDOUT))
    assert report.passed and any("no sidecar (other.engine.json)" in note for note in report.notes)
    copy.write_bytes(b"damaged")
    with pytest.raises(XvolError, match="could not read this engine"):
        verify_artifacts(SAMPLE, copy, VerifySettings(data=HOLDOUT))
