"""Verdicts on real models and real data, asserted both ways: what must FAIL fails, what must PASS passes.

Models get BatchNorm statistics the way training sets them (train-mode passes over photo crops), so
their outputs depend on the input; every check runs against the training form in float64.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from photo_data import photo_crops, write_npz

from xvol_export import create_model, fold, jobs
from xvol_export.checkpoint import DTYPES, load_model, save_checkpoint
from xvol_export.inputs import InputData
from xvol_export.jobs import ExportSettings, FoldSettings
from xvol_export.testing import realistic_batchnorm
from xvol_export.verify import Reference, verify

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "digits_xvol_resnet_tiny.pth"
HOLDOUT = ROOT / "samples" / "digits_holdout.npz"
CALIB = ROOT / "samples" / "digits_calib.npz"


def photo_model(scale: float = 1.0, name: str = "xvol_resnet18", **config) -> torch.nn.Module:
    """A ResNet with X-volution in stages 2 and 3 and BatchNorm statistics from photo crops.

    ``scale`` scales its activations: the inputs it is calibrated on (so the stem's activations are
    ``scale`` times larger) and its classifier (so are the logits).
    """
    config = {"stages": (2, 3), **config}
    model = create_model(name, **config)
    realistic_batchnorm(model, torch.from_numpy(photo_crops("calib")) * scale, seed=1)
    with torch.no_grad():
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
    return model.eval()


def photo_data(scale: float = 1.0, count: int = 16) -> InputData:
    return InputData(torch.from_numpy(photo_crops("holdout")[:count]) * scale, None, "photo crops (held out)")


@pytest.fixture(scope="module")
def scaled():
    """For each activation scale: the training form, its reference outputs and its exact fold."""
    out = {}
    for scale in (1e-3, 1e3):
        model = photo_model(scale)
        out[scale] = (model, Reference(model, photo_data(scale), "training form"), fold(model)[0])
    return out


# ------------------------------------------------------------------------------------------- fp32

@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_exact_fold_passes_whatever_the_activation_scale(scaled, scale):
    model, reference, deploy = scaled[scale]
    report = verify(reference, deploy, "deploy form")
    assert report.passed, report.failure_summary()
    check = report.checks[0]
    assert check.candidate.rms > (1e2 if scale > 1 else 0)  # the logits really are that large
    assert check.ratio < 2  # no error beyond fp32 rounding
    assert all(b.isolated.passed and b.isolated.ratio < 2 for b in report.blocks)


@pytest.mark.parametrize("scale", [1e-3, 1e3])
@pytest.mark.parametrize("where", ["layer1.0.conv1", "layer3.0.conv1"], ids=["plain-conv", "xvolution-block"])
def test_one_kernel_perturbed_by_1e_4_fails_whatever_the_activation_scale(scaled, scale, where):
    model, reference, deploy = scaled[scale]
    perturbed = copy.deepcopy(deploy)
    kernel = next(perturbed.get_submodule(where).parameters())
    with torch.no_grad():
        kernel.mul_(1 + 1e-4)
    report = verify(reference, perturbed, "perturbed deploy form")
    assert not report.passed
    assert report.checks[0].ratio > 4 or not all(b.isolated.passed for b in report.blocks)
    assert "x over" in report.failure_summary()  # says by how much
    if where == "layer3.0.conv1":  # the block's own check names it
        assert [b.name for b in report.blocks if not b.isolated.passed] == ["layer3.0.conv1"]


def test_dynamic_fp32_graph_passes_at_an_odd_second_shape(tmp_path):
    path = tmp_path / "photo.pth"
    save_checkpoint(photo_model(), path)
    result = jobs.export_checkpoint(path, tmp_path / "photo.onnx",
        ExportSettings(dynamic=True, imgsz=(45, 39), batch=1, seed=3))
    assert result.passed, result.failure_summary()
    other = result.dynamic_check
    assert other.input_shape == (3, 3, 57, 58) and other.float64 and other.passed
    assert other.checks[0].ratio < 2
    # The same graph against a reference of another model (its own kernels perturbed) fails at that shape.
    broken = photo_model()
    with torch.no_grad():
        broken.layer1[0].conv1.weight.mul_(1 + 1e-4)
    reference = Reference(broken, InputData(torch.randn(3, 3, 57, 58, generator=torch.Generator().manual_seed(4)),
                                            None, "random", synthetic=True), per_block=False)
    from xvol_export.runners import OnnxRuntimeRunner

    assert not verify(reference, OnnxRuntimeRunner(tmp_path / "photo.onnx")).passed


# ------------------------------------------------------------------------------------------- fp16

def test_fp16_graph_of_xvol_resnet50_passes_on_photo_crops(tmp_path):
    model = photo_model(name="xvol_resnet50", stages=(3,))
    crops = photo_crops("holdout")[:32]
    with torch.inference_mode():
        logits = copy.deepcopy(model).double()(torch.from_numpy(crops).double()).numpy()
    top2 = np.sort(logits, axis=1)[:, -2:]
    # No near-ties: a flip needs the two top logits' fp16 errors to differ by more than their margin, and this
    # graph's largest logit error is 0.14 of the logits' RMS (at 0.05, one crop in twelve flipped on some runs).
    clear = (top2[:, 1] - top2[:, 0]) > 0.3 * np.sqrt(np.mean(logits**2))
    assert clear.sum() >= 4
    data = tmp_path / "clear.npz"
    np.savez(data, input=crops[clear][:12])
    path = tmp_path / "r50.pth"
    save_checkpoint(model, path)
    result = jobs.export_checkpoint(path, tmp_path / "r50.fp16.onnx",
        ExportSettings(precision="fp16", imgsz=(64, 64), data=data))
    assert result.passed, result.failure_summary()
    check = result.verification.checks[0]
    assert check.candidate.top1_agreement == 1.0
    assert check.candidate.rel_l2 > 1e-3  # fp16 error, far above any fp32 gate
    assert check.ratio < 2 and result.verification.gate.baseline == "fp16"


def test_fp16_graph_with_an_overflowing_layer_fails_and_its_fp32_graph_passes(tmp_path):
    model = photo_model()
    block = model.layer1[0]
    with torch.no_grad():  # the same function, with bn1's outputs 1e5 times larger: past fp16's 65504
        block.bn1.weight.mul_(1e5)
        block.bn1.bias.mul_(1e5)
        block.conv2.weight.div_(1e5)
    path = tmp_path / "overflow.pth"
    save_checkpoint(model, path)
    data = write_npz(tmp_path, "holdout", 8)
    fp32 = jobs.export_checkpoint(path, tmp_path / "o.onnx", ExportSettings(imgsz=(64, 64), data=data))
    assert fp32.passed, fp32.failure_summary()
    fp16 = jobs.export_checkpoint(path, tmp_path / "o16.onnx",
        ExportSettings(precision="fp16", imgsz=(64, 64), data=data))
    assert not fp16.passed and not fp16.written
    report = fp16.verification
    baselines = report.checks[0].baselines
    assert not baselines["fp16 training form"].finite and not baselines["fp16 deploy form"].finite  # they overflow too
    assert baselines["fp16 rounding model"].finite  # a model of rounding, not of range: it still sets the limit
    assert "rel L2" in fp16.failure_summary() and "x over" in fp16.failure_summary()
    assert not (tmp_path / "o16.onnx").exists()


# ------------------------------------------------------------------------------------------- int8

def test_int8_with_broken_calibration_fails_and_with_good_calibration_passes(tmp_path):
    images = np.load(CALIB)["input"][:64]
    broken = tmp_path / "broken_calib.npz"
    np.savez(broken, input=images * 1e-3)  # ranges 1000x too small: every activation saturates
    good = tmp_path / "good_calib.npz"
    np.savez(good, input=images)
    results = {
        label: jobs.export_checkpoint(SAMPLE, tmp_path / f"{label}.onnx",
                                      ExportSettings(precision="int8", calib=calib, data=HOLDOUT))
        for label, calib in (("broken", broken), ("good", good))
    }
    bad = results["broken"].verification
    assert not results["broken"].passed and not results["broken"].written
    assert bad.output.top1_agreement < 0.5
    assert "top-1 agreement" in bad.failure_summary() and "accuracy drop" in bad.failure_summary()
    ok = results["good"]
    assert ok.passed and ok.written, ok.failure_summary()
    assert ok.verification.output.top1_agreement >= 0.97 and ok.verification.output.cosine >= 0.99


def test_int8_on_random_inputs_is_not_judged_and_says_so(tmp_path):
    result = jobs.export_checkpoint(SAMPLE, tmp_path / "r.onnx", ExportSettings(precision="int8", calib=CALIB, seed=0))
    assert result.passed
    report = result.to_dict()["verification"]
    assert report["inputs"]["real_data"] is False
    assert [c["figure"] for c in report["outputs"][0]["conditions"]] == ["non-finite outputs"]
    assert any("random inputs cannot judge" in n for n in report["notes"])


# ------------------------------------------------------------------------------- checkpoint dtypes

@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp64"])
def test_checkpoints_of_every_float_dtype_fold_and_export(tmp_path, dtype):
    model, _ = load_model(SAMPLE)
    source = tmp_path / f"digits.{dtype}.pth"
    save_checkpoint(model, source, dtype=dtype)
    data = tmp_path / "digits.npz"
    held = np.load(HOLDOUT)
    np.savez(data, input=held["input"][:48], labels=held["labels"][:48])  # fp16 convs are slow on CPUs

    folded = jobs.fold_checkpoint(source, tmp_path / "deploy.pth", FoldSettings(data=data))
    assert folded.passed and folded.written, folded.verification.failure_summary()
    report = folded.verification
    assert report.precision == dtype and report.float64
    assert report.gate.baseline == (None if dtype == "fp64" else dtype)
    deploy, ckpt = load_model(tmp_path / "deploy.pth")
    assert ckpt.dtype == dtype and next(deploy.parameters()).dtype == DTYPES[dtype]
    if dtype == "fp64":
        assert report.output.rel_l2 < 1e-12

    exported = jobs.export_checkpoint(source, tmp_path / "digits.onnx", ExportSettings(data=data))
    assert exported.passed and exported.written, exported.failure_summary()
    assert exported.verification.precision == "fp32" and exported.verification.accuracy["candidate"] >= 0.97


# ---------------------------------------------------------------------------------- every output

class TwoHeads(torch.nn.Module):
    """A backbone with two heads: outputs are compared by name, every one of them."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.classes, self.boxes = torch.nn.Linear(8, 5), torch.nn.Linear(8, 4)

    def forward(self, x):
        features = self.body(x)
        return {"classes": self.classes(features), "boxes": self.boxes(features)}


def test_every_output_is_judged_by_name_and_a_broken_second_head_fails():
    model = TwoHeads()
    realistic_batchnorm(model, torch.from_numpy(photo_crops("calib")))
    model.eval()
    reference = Reference(model, photo_data(), "two heads")
    deploy, _ = fold(model)
    report = verify(reference, deploy)
    assert report.passed and [c.name for c in report.checks] == ["classes", "boxes"]
    broken = copy.deepcopy(deploy)
    with torch.no_grad():
        broken.boxes.weight.mul_(1 + 1e-3)
    report = verify(reference, broken)
    assert not report.passed
    assert [c.name for c in report.checks if not c.passed] == ["boxes"]
    assert report.failure_summary().startswith("output 'boxes'")
