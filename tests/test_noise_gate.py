"""The noise-aware gate: honest folds and graphs pass on every seed and shape, faults fail, each part both ways.

Its parts: the baselines a limit is made of (the training form, the deploy form with its own rounded weights,
the rounding model of other runtimes), the fold's float64 exactness, and the structural check of the BatchNorms a
fold leaves. Golden files are in ``test_golden.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from xvol_export import jobs
from xvol_export.checkpoint import LoadOptions, load_model
from xvol_export.compare import compare_arrays
from xvol_export.fold import apply_plan, fold, fold_both
from xvol_export.inputs import InputData, InputShape, prepare_inputs
from xvol_export.jobs import ExportSettings, FoldSettings
from xvol_export.testing import randomize_batchnorm
from xvol_export.verify import DEFAULT_GATES, Reference, verify, verify_fold
from xvol_export.verify.gates import UNIT_ROUNDOFF, gate_conditions
from xvol_export.verify.noise import rounding_model

from helpers import run_cli
from user_models import preact_net, two_head_net

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "digits_xvol_resnet_tiny.pth"


@pytest.fixture(scope="module")
def digits():
    return load_model(SAMPLE)[0]


# ------------------------------------------------------------------------------------------- the sample's fold

@pytest.mark.parametrize("shape", [None, (4, 1, 8, 8)], ids=["default-inputs", "4x1x8x8"])
def test_the_samples_exact_fold_passes_on_every_seed(digits, shape):
    """It failed 1 seed in 20 at the default inputs and 18 in 20 at 4x1x8x8 when one run of the training form
    was the noise level; every seed passes now, with room to spare."""
    settings = FoldSettings()
    worst = 0.0
    for seed in range(20):
        data, _ = prepare_inputs(digits.input_size, "sample", None, InputShape(shape) if shape else None, seed)
        _, _, report = jobs.fold.fold_verified(digits, Reference(digits, data, "training form"), settings, seed)
        assert report.passed, (seed, report.failure_summary())
        worst = max(worst, *(c.value / c.limit for check in report.checks + [b.isolated for b in report.blocks]
                             for c in check.conditions if c.limit > 0))
        assert report.fold_exactness and all(c.candidate.rel_l2 < 1e-12 for c in report.fold_exactness)
    assert worst < 0.5  # the fp32 deploy form is its own baseline: 1/4 of the limit, whatever the seed


# ------------------------------------------------------------------------------------------- gate_conditions

def _stats(truth, relative, seed):
    noise = np.random.default_rng(seed).standard_normal(truth.shape)
    return compare_arrays(truth, truth * (1 + relative * noise), None)


def test_the_limit_is_made_of_the_largest_baseline_and_says_so():
    truth = np.random.default_rng(0).standard_normal((8, 10)) + 3
    u = UNIT_ROUNDOFF["fp32"]
    lucky, other = _stats(truth, 0.2 * u, 1), _stats(truth, 2 * u, 2)
    candidate = _stats(truth, 5 * u, 3)  # 25x the lucky baseline, 2.5x the other
    gate = DEFAULT_GATES["fp32"]
    alone, _ = gate_conditions(gate, candidate, {"fp32 training form": lucky}, real_data=False)
    assert not all(c.passed for c in alone)  # one lucky baseline would fail an honest candidate
    both, _ = gate_conditions(gate, candidate, {"fp32 training form": lucky, "fp32 deploy form": other},
                              real_data=False)
    assert all(c.passed for c in both)
    rel = next(c for c in both if c.figure == "rel L2")
    assert rel.limit == pytest.approx(4 * other.rel_l2) and "fp32 deploy form" in rel.note
    wrong = _stats(truth, 200 * u, 4)  # a real fault: 100x the largest baseline
    failed, _ = gate_conditions(gate, wrong, {"fp32 training form": lucky, "fp32 deploy form": other},
                                real_data=False)
    assert not all(c.passed for c in failed) and "x over" in next(c for c in failed if not c.passed).describe()


def test_a_non_finite_baseline_is_left_out_and_none_finite_falls_back():
    truth = np.ones((4, 10))
    finite, broken = _stats(truth, 1e-7, 1), compare_arrays(truth, np.full_like(truth, np.inf), None)
    gate = DEFAULT_GATES["fp32"]
    conditions, notes = gate_conditions(gate, _stats(truth, 2e-7, 2), {"a": broken, "b": finite}, real_data=False)
    assert all(c.passed for c in conditions) and not notes
    conditions, notes = gate_conditions(gate, _stats(truth, 2e-7, 2), {"a": broken}, real_data=False)
    assert notes and "no fp32 baseline is finite" in notes[0]


# ------------------------------------------------------------------------------------------- the rounding model

def test_the_rounding_model_perturbs_sums_by_their_terms_and_reductions_by_their_count():
    x = torch.rand(2, 4, 16, 16, dtype=torch.float64) + 1  # positive: a mean's terms do not cancel
    linear = nn.Linear(4, 3).double()
    with torch.no_grad():
        linear.bias.fill_(1e3)  # a bias far larger than the products: rounding W x is what the model adds
        features = x.mean((2, 3))
        plain = linear(features)
        with rounding_model(1e-6, seed=0):
            mean, out = x.mean((2, 3)), linear(features)
        with rounding_model(1e-6, seed=0):
            again = x.mean((2, 3))
        after = x.mean((2, 3))
    assert torch.equal(mean, again)  # a fixed seed: the same verdict every time
    relative = ((mean - features) / features).abs()
    assert torch.allclose(relative, torch.full_like(relative, 1e-6 * 16), rtol=1e-6)  # u sqrt(256), each
    products = (plain - linear.bias).abs()
    assert torch.allclose((out - plain).abs(), 1e-6 * products, rtol=1e-6)  # u |W x|, not u |y| (1e-3)
    assert torch.equal(after, features)  # nothing is left behind


def test_the_rounding_model_lets_a_runtime_that_sums_in_order_pass(tmp_path):
    """A mean of 256 values summed one after another in fp32 (as OpenVINO's CPU plugin does) is several unit
    roundoffs off: the measured baselines alone would fail it, the rounding model takes it."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    torch.manual_seed(0)
    data = InputData(torch.randn(2, 3, 16, 16), None, "random", synthetic=True)
    reference = Reference(model, data, "training form", per_block=False)

    class InOrder(nn.Module):
        def forward(self, x):
            y = torch.relu(model[0](x)).flatten(2)
            total = torch.zeros(y.shape[:2], dtype=torch.float32)
            for k in range(y.shape[2]):
                total = total + y[:, :, k]
            return model[4](total / y.shape[2])

    report = verify(reference, InOrder(), "sums in order")
    assert report.passed, report.failure_summary()
    used = {label for label in report.checks[0].baselines}
    assert "fp32 rounding model" in used


# ------------------------------------------------------------------------------------------- the fold in float64

def test_a_fold_off_by_less_than_its_rounding_fails_in_float64_and_an_exact_one_passes(digits):
    data, _ = prepare_inputs(digits.input_size, "sample", None, None, 3)
    reference = Reference(digits, data, "training form")
    deploy, deploy64, _ = fold_both(digits, input_shape=(1, 1, 32, 32), dtype="fp32")
    assert verify_fold(reference, deploy, deploy64).passed
    wrong64 = copy.deepcopy(deploy64)
    with torch.no_grad():
        wrong64.layer1[0].conv1.weight.mul_(1 + 1e-6)  # far below what fp32 rounding shows end to end
    report = verify_fold(reference, copy.deepcopy(wrong64).float(), wrong64)
    assert not report.passed
    assert all(c.passed for c in report.checks)  # the fp32 comparison alone cannot see it
    assert any("float64 fold" in c.name and not c.passed for c in report.fold_exactness)
    assert "float64 fold" in report.failure_summary() and "x over" in report.failure_summary()


# ------------------------------------------------------------------------------------------- BatchNorms a fold leaves

def test_consecutive_batchnorms_compose_into_one_layer_on_either_side():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    randomize_batchnorm(model, 1, negative_gamma=0.25).eval()
    deploy, report = fold(model, input_shape=(1, 3, 8, 8), dtype="fp64")
    assert report.remaining_batchnorms == []
    assert [(f["kind"], f["layer"], f["norm"]) for f in report.fused] == [
        ("conv_bn", "0", "1"), ("conv_bn", "0", "2"), ("bn_conv", "7", "6"), ("bn_conv", "7", "5"),
        ("bn_conv", "7", "4")]
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert float((deploy(x) - model.double()(x)).norm() / model(x).norm()) < 1e-13
    skeleton = apply_plan(copy.deepcopy(model), deploy.xvol_fold_plan)
    skeleton.load_state_dict(deploy.state_dict())  # the plan rebuilds the deploy form, as a checkpoint does
    with torch.no_grad():
        assert torch.equal(skeleton(x), deploy(x))


def test_a_batchnorm_chain_that_meets_no_layer_stays_whole():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.ReLU())
    randomize_batchnorm(model, 2).eval()
    _, report = fold(model, input_shape=(1, 3, 8, 8))
    assert report.remaining_batchnorms == ["2", "3"] and not report.fused


@pytest.fixture(scope="module")
def preact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preact")
    torch.manual_seed(0)
    model = randomize_batchnorm(preact_net(), 0, negative_gamma=0.25).eval()
    path = folder / "preact.pth"
    torch.save(model.state_dict(), path)
    return folder, path


def test_a_pre_activation_network_exports_with_the_batchnorms_its_fold_leaves(preact, capsys):
    folder, path = preact
    result = run_cli(capsys, "export", path, "--model", "user_models:preact_net", "-o", folder / "p.onnx",
                     "--seed", "0", "--json", folder / "p.json")
    assert result.code == 0, result.text
    import json

    graph = json.loads((folder / "p.json").read_text())["graph"]
    placed = {b["name"]: b for b in graph["batchnorms"]}
    assert sorted(placed) == ["blocks.0.bn1", "blocks.1.bn1", "final_bn"]  # head_bn1 composed into head_conv
    assert all(b["in_graph"] == "BatchNormalization" and b["reason"] for b in placed.values())
    assert graph["batchnorm_nodes"] == 3 and not graph["unexpected_batchnorms"]
    assert "final_bn left by the fold, kept as a BatchNormalization node: it follows the function add" in " ".join(
        result.out.split())


def test_a_batchnorm_the_fold_did_not_leave_is_a_structural_failure_not_a_verification_failure(preact):
    folder, path = preact
    settings = ExportSettings(seed=0, load=LoadOptions(model="user_models:preact_net"))
    prepared = jobs.export.prepare_export(path, settings)
    # a BatchNorm the fold did not leave (an identity: the function, and so verification, are unchanged)
    extra = nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        extra.running_var.fill_(1 - extra.eps)
    prepared.deploy.head_conv = nn.Sequential(extra, prepared.deploy.head_conv)
    result = jobs.export.export_prepared(prepared, folder / "broken.onnx", settings)
    assert result.verification.passed and not result.passed and not result.written
    assert any("BatchNormalization node(s) the fold did not leave" in f and "head_conv.0" in f
               for f in result.failures), result.failures
    assert result.notes[-1] == "the structural check failed: nothing written"
    assert not (folder / "broken.onnx").exists()


def test_a_two_output_user_model_exports_and_every_output_is_judged(tmp_path, capsys):
    torch.manual_seed(1)
    model = randomize_batchnorm(two_head_net(), 1, negative_gamma=0.25).eval()
    path = tmp_path / "two.pth"
    torch.save(model.state_dict(), path)
    result = run_cli(capsys, "export", path, "--model", "user_models:two_head_net", "-o", tmp_path / "two.onnx",
                     "--seed", "2")
    assert result.code == 0, result.text
    assert "output0" in result.out and "output1" in result.out


def test_an_exact_fold_of_a_saved_preact_checkpoint_passes_through_the_fold_job(preact):
    folder, path = preact
    result = jobs.fold_checkpoint(path, folder / "p.deploy.pth", FoldSettings(
        seed=5, load=LoadOptions(model="user_models:preact_net")))
    assert result.passed and result.written, result.failure_summary()
    assert len(result.fold.remaining_batchnorms) == 3
    deploy, _ = LoadOptions(model="user_models:preact_net").load(folder / "p.deploy.pth")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in deploy.modules()) == 3
