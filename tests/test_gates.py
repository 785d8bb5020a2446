"""Each default gate asserted both ways, and at scales far apart: what must FAIL fails, what must PASS passes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from xvol_export import fold
from xvol_export.checkpoint import load_model
from xvol_export.compare import compare_arrays
from xvol_export.inputs import load_npz
from xvol_export.verify import DEFAULT_GATES, Reference, verify
from xvol_export.verify.gates import gate_conditions

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _judge(precision, truth, baseline, candidate, real_data=True):
    baselines = None if baseline is None else {"training form": compare_arrays(truth, baseline, None)}
    conditions, notes = gate_conditions(DEFAULT_GATES[precision], compare_arrays(truth, candidate, None), baselines,
                                        real_data=real_data)
    return all(c.passed for c in conditions), conditions, notes


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_ratio_gates_pass_rounding_and_fail_a_real_change_at_any_scale(scale):
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((64, 10)) * scale
    for precision, unit in (("fp32", 2.0**-24), ("fp16", 2.0**-11), ("bf16", 2.0**-8)):
        def rounded(seed, size=unit):
            return truth * (1 + size * np.random.default_rng(seed).standard_normal(truth.shape))
        baseline = rounded(1)
        assert _judge(precision, truth, baseline, rounded(2))[0], (precision, scale)  # rounding of the same size
        passed, conditions, _ = _judge(precision, truth, baseline, rounded(3, 20 * unit))  # 20x the rounding
        assert not passed and any(c.figure == "rel L2" and not c.passed for c in conditions), (precision, scale)


def test_fixed_fp64_bounds_pass_fp64_rounding_and_fail_fp32_rounding():
    truth = np.random.default_rng(0).standard_normal((16, 10)) * 1e4
    assert _judge("fp64", truth, None, truth * (1 + 1e-15))[0]
    assert not _judge("fp64", truth, None, truth.astype(np.float32).astype(np.float64) * (1 + 1e-7))[0]


def test_without_a_float64_reference_fixed_bounds_judge_and_say_so():
    truth = np.random.default_rng(0).standard_normal((16, 10))
    passed, _, notes = _judge("fp32", truth, None, truth * (1 + 1e-7))
    assert passed and notes == ["no float64 reference: judged on fixed bounds, 100x fp32 rounding"]
    assert not _judge("fp32", truth, None, truth * (1 + 1e-3))[0]


def test_int8_on_random_inputs_checks_finiteness_only():
    truth = np.random.default_rng(0).standard_normal((16, 10))
    wrong = -truth  # cosine -1: not judged on random inputs, but a NaN still fails
    passed, conditions, notes = _judge("int8", truth, truth, wrong, real_data=False)
    assert passed and [c.figure for c in conditions] == ["non-finite outputs"] and "cannot judge" in notes[0]
    assert not _judge("int8", truth, truth, wrong, real_data=True)[0]
    assert not _judge("int8", truth, truth, np.full_like(truth, np.nan), real_data=False)[0]


@pytest.fixture(scope="module")
def digits():
    model, _ = load_model(SAMPLES / "digits_xvol_resnet_tiny.pth")
    data = load_npz(SAMPLES / "digits_holdout.npz")
    data.inputs, data.labels = data.inputs[:48], data.labels[:48]  # fp16 convs are slow on CPUs
    return model, data


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_half_and_double_folds_pass_and_a_rounded_or_perturbed_one_fails(digits, dtype):
    model, data = digits
    source = copy.deepcopy(model).to(dtype)
    reference = Reference(source, data, "training form", per_block=False)
    assert verify(reference, fold(source)[0]).passed  # folded in float64, cast once
    if dtype == torch.float64:
        wrong = fold(model)[0].to(dtype)  # folded in fp32, then widened: fp32 rounding in an fp64 model
    else:
        wrong = fold(source)[0]
        with torch.no_grad():
            wrong.layer2[0].conv1.conv.weight.mul_(1 + 1e-2)
    report = verify(reference, wrong)
    assert not report.passed and "x over" in report.failure_summary()
