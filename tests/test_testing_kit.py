"""xvol_export.testing: BatchNorm calibration from real inputs, the input-dependence figure and the
degeneracy check; and the committed photo crops they are used with."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from photo_data import PHOTO_CROPS, photo_crops, write_npz
from torch import nn

from xvol_export import create_model
from xvol_export.inputs import load_npz
from xvol_export.testing import (
    DEGENERATE_BELOW,
    calibrate_batchnorm,
    check_not_degenerate,
    input_dependence,
    randomize_batchnorm,
    realistic_batchnorm,
)

ROOT = Path(__file__).resolve().parent.parent


def conv_bn_model(generator: torch.Generator) -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5, momentum=0.3),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=generator))
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.5)
                m.running_mean.fill_(3.0)  # stale statistics that calibration must replace
                m.running_var.fill_(7.0)
    return model


def hand_statistics(model: nn.Sequential, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The average over batches of each BN's batch mean and unbiased batch variance, in float64, with
    each BN normalizing by its batch statistics (train mode) on the way to the next."""
    conv1, bn1, _, conv2, _ = (m.double() if isinstance(m, nn.Conv2d) else m for m in model)
    per_batch = [[], []]
    for x in batches:
        h1 = conv1(x.double())
        m1, v1 = h1.mean((0, 2, 3)), h1.var((0, 2, 3), unbiased=True)
        vb = h1.var((0, 2, 3), unbiased=False)
        a = torch.relu((h1 - m1[:, None, None]) / torch.sqrt(vb + bn1.eps)[:, None, None]
                       * bn1.weight.double()[:, None, None] + bn1.bias.double()[:, None, None])
        h2 = conv2(a)
        per_batch[0].append((m1, v1))
        per_batch[1].append((h2.mean((0, 2, 3)), h2.var((0, 2, 3), unbiased=True)))
    return [(torch.stack([m for m, _ in s]).mean(0), torch.stack([v for _, v in s]).mean(0)) for s in per_batch]


def test_calibrate_batchnorm_sets_training_statistics_and_restores_the_rest(generator):
    model = conv_bn_model(generator)
    model.train()
    model[4].eval()  # mixed flags must come back as they were
    flags = {name: m.training for name, m in model.named_modules()}
    convs = {k: v.clone() for k, v in model.state_dict().items() if not k.split(".")[1].startswith("running")
             and "num_batches" not in k}
    x = torch.randn(10, 3, 8, 8, generator=generator) * 2 + 0.5

    out = calibrate_batchnorm(model, x.numpy(), batch_size=4)  # numpy input; 3 batches of 4, 3, 3

    assert out is model
    expected = hand_statistics(model, list(torch.tensor_split(x, 3)))
    for bn, (mean, var) in zip((model[1], model[4]), expected, strict=True):
        torch.testing.assert_close(bn.running_mean.double(), mean, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), var, atol=1e-6, rtol=1e-6)
        assert int(bn.num_batches_tracked) == 3
    assert (model[1].momentum, model[4].momentum) == (0.1, 0.3)
    assert {name: m.training for name, m in model.named_modules()} == flags
    now = model.state_dict()
    for key, value in convs.items():  # conv weights and biases, BN gamma and beta: bit-exact
        assert torch.equal(now[key], value), key


def test_calibrate_batchnorm_single_batch_is_the_batch_statistics(generator):
    model = conv_bn_model(generator).eval()
    x = torch.randn(6, 3, 5, 5, generator=generator)
    calibrate_batchnorm(model, x)  # 6 <= 32: one batch
    (mean, var), _ = hand_statistics(model, [x])
    torch.testing.assert_close(model[1].running_mean.double(), mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model[1].running_var.double(), var, atol=1e-6, rtol=1e-6)
    assert not any(m.training for m in model.modules())


def test_realistic_batchnorm_seeds_affine_parameters_and_calibrates(generator):
    a = realistic_batchnorm(conv_bn_model(torch.Generator().manual_seed(1)), photo_crops("calib")[:8, :, :16, :16])
    b = realistic_batchnorm(conv_bn_model(torch.Generator().manual_seed(1)), photo_crops("calib")[:8, :, :16, :16])
    c = realistic_batchnorm(conv_bn_model(torch.Generator().manual_seed(1)), photo_crops("calib")[:8, :, :16, :16],
                            seed=1)
    for bn_a, bn_b, bn_c in zip(a[1::3], b[1::3], c[1::3], strict=True):
        bn_a.requires_grad_(False)
        assert 0.5 <= float(bn_a.weight.min()) and float(bn_a.weight.max()) <= 1.5
        assert -0.5 <= float(bn_a.bias.min()) and float(bn_a.bias.max()) <= 0.5
        assert torch.equal(bn_a.weight, bn_b.weight) and torch.equal(bn_a.bias, bn_b.bias)
        assert not torch.equal(bn_a.weight, bn_c.weight)
    # the statistics are those of the data, computed after the new gamma and beta are in place
    expected = hand_statistics(a, [torch.from_numpy(photo_crops("calib")[:8, :, :16, :16])])
    for bn, (mean, var) in zip((a[1], a[4]), expected, strict=True):
        torch.testing.assert_close(bn.running_mean.double(), mean, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), var, atol=1e-6, rtol=1e-6)


class IgnoresInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.linspace(-3, 5, 10))

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.mean()


def test_input_dependence_known_values():
    assert input_dependence(IgnoresInput()(torch.randn(4, 3, 8, 8))) < 1e-12
    assert input_dependence(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(1.0)
    a = 0.25
    assert input_dependence(torch.tensor([[1 + a, 2.0], [1 - a, 2.0]])) == pytest.approx(a / (5 + a * a) ** 0.5)
    assert input_dependence(np.zeros((3, 4))) == 0.0
    with pytest.raises(ValueError, match="at least two"):
        input_dependence(torch.ones(1, 10))


def test_check_not_degenerate_reports_the_figure():
    y = torch.tensor([[10.0, 0.0], [10.0, 0.5]])  # dependence 0.025
    with pytest.raises(ValueError, match=r"tiny head is degenerate: input dependence 0\.025 < 0\.1"):
        check_not_degenerate(y, label="tiny head")
    assert check_not_degenerate(y, minimum=0.02) == pytest.approx(input_dependence(y))


def logits(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x))


def test_calibrated_small_resnet_depends_on_its_input():
    torch.manual_seed(0)
    model = realistic_batchnorm(create_model("xvol_resnet_tiny"), photo_crops("calib")[:32])
    holdout = photo_crops("holdout")[:32]
    calibrated = input_dependence(logits(model, holdout))
    randomize_batchnorm(model, seed=0)
    random = input_dependence(logits(model, holdout))
    assert calibrated > 0.25, calibrated  # measured 0.38 (random statistics: 0.039)
    assert random < DEGENERATE_BELOW < calibrated


def test_check_not_degenerate_refuses_resnet50_with_random_statistics():
    torch.manual_seed(0)
    model = create_model("xvol_resnet50")
    holdout = photo_crops("holdout")[:16]  # 16 crops and 32 for calibration keep this test to a few seconds
    random = logits(randomize_batchnorm(model, seed=0), holdout)
    with pytest.raises(ValueError, match=r"resnet-50 is degenerate: input dependence 0\.0\d+ < 0\.1") as info:
        check_not_degenerate(random, label="resnet-50")
    assert "realistic_batchnorm" in str(info.value)
    assert random.argmax(1).unique().numel() == 1  # every crop gets the same class
    realistic = logits(realistic_batchnorm(model, photo_crops("calib")[:32]), holdout)
    assert check_not_degenerate(realistic, label="resnet-50") > 0.3  # measured 0.47
    assert realistic.argmax(1).unique().numel() > 1


def test_photo_crops_file_and_npz_for_the_cli(tmp_path):
    assert PHOTO_CROPS.stat().st_size < 1_300_000
    calib, holdout = photo_crops("calib"), photo_crops("holdout")
    assert calib.shape == holdout.shape == (64, 3, 64, 64) and calib.dtype == np.float32
    assert abs(float(calib.mean())) < 1.0 and 0.5 < float(calib.std()) < 1.5  # ImageNet-normalized
    assert not np.array_equal(calib, holdout)
    photo_crops("calib")[0] = 0  # callers get copies
    assert np.array_equal(photo_crops("calib"), calib)
    with pytest.raises(ValueError, match="split"):
        photo_crops("train")
    data = load_npz(write_npz(tmp_path, "holdout", count=8))
    assert data.labels is None and torch.equal(data.inputs, torch.from_numpy(holdout[:8]))


def test_committed_crops_match_the_script():
    pytest.importorskip("sklearn")
    pytest.importorskip("PIL")
    spec = importlib.util.spec_from_file_location("make_photo_crops", ROOT / "samples" / "make_photo_crops.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with np.load(PHOTO_CROPS) as data:
        for split in ("calib", "holdout"):
            made = script.photo_crops_uint8(64, 6, split).astype(int)
            assert np.abs(made - data[f"{split}_uint8"][:6].astype(int)).max() <= 1, split  # rounding ties at most
            np.testing.assert_allclose(script.photo_crops(64, 6, split), photo_crops(split)[:6], atol=0.02)
        np.testing.assert_array_equal(data["mean"], script.MEAN)
    with pytest.raises(ValueError, match="split"):
        script.photo_crops_uint8(64, 1, "train")
