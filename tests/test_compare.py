"""xvol_export.compare: Polygraphy-style tolerance checks and error statistics, on hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xvol_export.compare import DEFAULT_TOLERANCES, ERROR_STATS, ErrorStats, Tolerance, compare_arrays

# Every number below is exact in binary floating point, so the expected statistics are exact too.
#   abs error: [0.5, 0, 1, 0.5]      rel error: [0.5, 0, 0.25, 0.0625]
REF = np.array([1.0, 2.0, 4.0, 8.0])
CAND = np.array([1.5, 2.0, 3.0, 8.5])


def _cmp(ref=REF, cand=CAND, atol=0.0, rtol=0.0, stat="elemwise") -> ErrorStats:
    return compare_arrays(np.asarray(ref), np.asarray(cand), Tolerance(atol, rtol, stat))


# ------------------------------------------------------------------------------- statistics

def test_statistics_of_a_hand_computed_example():
    s = _cmp()
    assert s.shape == (4,)
    assert s.max_abs == 1.0
    assert s.mean_abs == 0.5
    assert s.median_abs == 0.5  # sorted [0, .5, .5, 1]
    assert s.max_rel == 0.5
    assert s.mean_rel == pytest.approx(0.8125 / 4, abs=0, rel=1e-15)
    assert s.median_rel == pytest.approx((0.0625 + 0.25) / 2, abs=0, rel=1e-15)
    # numpy's linear quantile on sorted [0, .5, .5, 1] at 0.99: .5 + 0.97 * .5
    assert s.p99_abs == pytest.approx(0.985, rel=1e-12)
    # ||cand - ref|| / ||ref|| = sqrt(.25 + 0 + 1 + .25) / sqrt(1 + 4 + 16 + 64)
    assert s.rel_l2 == pytest.approx(math.sqrt(1.5) / math.sqrt(85.0), rel=1e-12)
    # <ref, cand> = 1.5 + 4 + 12 + 68 = 85.5; ||cand||^2 = 2.25 + 4 + 9 + 72.25 = 87.5
    assert s.cosine == pytest.approx(85.5 / math.sqrt(85.0 * 87.5), rel=1e-12)
    assert s.top1_agreement is None  # not a [N, classes] array


def test_identical_arrays_have_zero_error_and_unit_cosine():
    x = np.linspace(-3, 3, 24).reshape(2, 3, 4)
    s = compare_arrays(x, x.copy(), Tolerance(0.0, 0.0))
    assert s.passed
    assert s.max_abs == s.max_rel == s.rel_l2 == 0.0
    assert s.cosine == pytest.approx(1.0, abs=1e-15)


def test_cosine_of_a_negated_output_is_minus_one():
    s = _cmp(cand=-REF)
    assert s.cosine == pytest.approx(-1.0, abs=1e-15)
    assert s.rel_l2 == pytest.approx(2.0)


def test_top1_agreement_on_n_by_classes():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0.0, 5.0, 1.0], [2.0, 1.0, 0.0]])
    cand = ref.copy()
    cand[2] = [6.0, 5.0, 1.0]  # argmax 1 -> 0
    s = compare_arrays(ref, cand, Tolerance(10.0, 10.0))
    assert s.top1_agreement == 0.75
    assert compare_arrays(ref, ref.copy()).top1_agreement == 1.0


@pytest.mark.parametrize("shape", [(6,), (6, 1), (2, 3, 4)])
def test_top1_agreement_only_for_n_by_classes(shape):
    x = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    assert compare_arrays(x, x).top1_agreement is None


def test_compares_in_float64_whatever_the_input_dtype():
    ref = np.array([1.0, 2.0], dtype=np.float16)
    cand = np.array([1.0, 2.001953125], dtype=np.float32)  # float16's next value after 2
    s = compare_arrays(ref, cand)
    assert s.max_abs == 0.001953125
    assert isinstance(s.max_abs, float)


# ---------------------------------------------------------------------- Polygraphy semantics

def test_elemwise_element_fails_only_if_it_exceeds_both():
    # Element 2 (abs 1, rel .25) exceeds atol=.5 but not rtol=.25; element 0 (abs .5, rel .5)
    # exceeds rtol but not atol: every element is within one of the two -> pass.
    assert _cmp(atol=0.5, rtol=0.25).passed
    # Now element 2 exceeds both.
    assert not _cmp(atol=0.5, rtol=0.2).passed
    assert not _cmp(atol=0.9, rtol=0.2).passed
    assert _cmp(atol=1.0, rtol=0.0).passed  # every abs error <= 1
    assert _cmp(atol=0.0, rtol=0.5).passed  # every rel error <= .5
    assert not _cmp(atol=0.0, rtol=0.0).passed


def test_elemwise_passes_where_max_fails():
    # abs [0.01, 1.0], rel [1.0, 0.01]: each element is within one tolerance, but the maxima of
    # both errors exceed both tolerances.
    ref, cand = np.array([0.01, 100.0]), np.array([0.02, 101.0])
    assert _cmp(ref, cand, atol=0.1, rtol=0.1, stat="elemwise").passed
    assert not _cmp(ref, cand, atol=0.1, rtol=0.1, stat="max").passed


@pytest.mark.parametrize(
    "stat, atol, rtol, passed",
    [
        # max: abs 1, rel .5
        ("max", 1.0, 0.0, True),
        ("max", 0.0, 0.5, True),
        ("max", 0.99, 0.49, False),
        ("max", 0.5, 0.25, False),
        # mean: abs .5, rel .203125
        ("mean", 0.5, 0.0, True),
        ("mean", 0.0, 0.203125, True),
        ("mean", 0.49, 0.21, True),
        ("mean", 0.49, 0.2, False),
        # median: abs .5, rel .15625
        ("median", 0.5, 0.0, True),
        ("median", 0.4, 0.15625, True),
        ("median", 0.4, 0.15, False),
        ("median", 0.0, 0.0, False),
    ],
)
def test_statistic_checks_fail_only_if_both_exceed(stat, atol, rtol, passed):
    s = _cmp(atol=atol, rtol=rtol, stat=stat)
    assert s.passed is passed
    assert s.check_error_stat == stat


# ------------------------------------------------------------------- minimum required tolerance

def test_minimum_required_tolerance_elemwise_is_max_abs_and_max_rel():
    s = _cmp()
    assert (s.required_atol, s.required_rtol) == (s.max_abs, s.max_rel) == (1.0, 0.5)
    # It is sufficient: either one alone passes...
    assert _cmp(atol=s.required_atol, rtol=0.0).passed
    assert _cmp(atol=0.0, rtol=s.required_rtol).passed
    # ...and each is necessary when used alone (OR, not AND: the two maxima come from different
    # elements, so both a little tighter together may still pass).
    assert not _cmp(atol=np.nextafter(s.required_atol, 0), rtol=0.0).passed
    assert not _cmp(atol=0.0, rtol=np.nextafter(s.required_rtol, 0)).passed
    line = s.min_required()
    assert line.startswith("elemwise error")
    assert "abs=1]" in line and "rel=0.5]" in line


@pytest.mark.parametrize("stat, expected", [("max", (1.0, 0.5)), ("mean", (0.5, 0.203125)),
                                            ("median", (0.5, 0.15625))])
def test_minimum_required_tolerance_follows_the_statistic(stat, expected):
    s = _cmp(stat=stat)
    assert (s.required_atol, s.required_rtol) == pytest.approx(expected, rel=1e-15)
    assert s.min_required().startswith(f"{stat} error")


# ----------------------------------------------------------------------- zeros, NaN, shapes

def test_zero_reference_values_do_not_crash():
    ref = np.array([0.0, 1.0, 0.0, -2.0])
    cand = np.array([1e-3, 1.0, 0.0, -2.0])
    with np.errstate(all="raise"):  # a division by zero would raise here
        s = compare_arrays(ref, cand, Tolerance(1e-2, 0.0))
    assert s.passed  # the 1e-3 error against a zero reference is within atol
    assert math.isfinite(s.max_rel) and s.max_rel > 1e6  # huge but finite: error / epsilon
    assert not compare_arrays(ref, cand, Tolerance(1e-4, 1e-4)).passed


def test_zero_reference_and_zero_candidate_pass_exactly():
    z = np.zeros((2, 3))
    with np.errstate(all="raise"):
        s = compare_arrays(z, z.copy(), Tolerance(0.0, 0.0))
    assert s.passed
    assert s.max_rel == 0.0 and s.rel_l2 == 0.0
    assert s.cosine == 1.0


def test_all_zero_reference_with_nonzero_candidate():
    with np.errstate(all="raise"):
        s = compare_arrays(np.zeros(3), np.array([0.0, 1.0, 0.0]), Tolerance(0.0, 0.0))
    assert not s.passed
    assert s.rel_l2 == math.inf
    assert s.cosine == 0.0


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # cosine of inf is nan
@pytest.mark.parametrize("stat", ERROR_STATS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_candidate_fails_whatever_the_tolerance(stat, bad):
    cand = np.arange(1.0, 101.0)
    ref = cand.copy()
    cand[37] = bad
    s = compare_arrays(ref, cand, Tolerance(1e30, 1e30, stat))
    assert not s.passed


@pytest.mark.parametrize("stat", ERROR_STATS)
def test_nan_reference_fails(stat):
    ref = np.arange(1.0, 101.0)
    cand = ref.copy()
    ref[5] = math.nan
    assert not compare_arrays(ref, cand, Tolerance(1e30, 1e30, stat)).passed


def test_shape_mismatch_raises_value_error():
    with pytest.raises(ValueError, match="different shapes"):
        compare_arrays(np.zeros((2, 10)), np.zeros((2, 11)))
    with pytest.raises(ValueError):
        compare_arrays(np.zeros((2, 10)), np.zeros((20,)))


def test_empty_arrays_compare_as_equal():
    s = compare_arrays(np.zeros((0,)), np.zeros((0,)), Tolerance(0.0, 0.0))
    assert s.passed and s.max_abs == 0.0


def test_to_dict_is_plain():
    d = _cmp(ref=np.ones((2, 2)), cand=np.ones((2, 2))).to_dict()
    assert d["shape"] == [2, 2]
    assert d["passed"] is True
    assert set(d) >= {"max_abs", "median_abs", "max_rel", "rel_l2", "cosine", "required_atol", "required_rtol"}


# ------------------------------------------------------------------------------------ Tolerance

def test_tolerance_defaults_are_fp32_elemwise():
    tol = Tolerance()
    assert (tol.atol, tol.rtol, tol.check_error_stat) == (1e-4, 1e-4, "elemwise")


@pytest.mark.parametrize("stat", ["elementwise", "p99", "", "MAX"])
def test_tolerance_rejects_unknown_stat(stat):
    with pytest.raises(ValueError, match="check_error_stat"):
        Tolerance(1e-3, 1e-3, stat)


@pytest.mark.parametrize("atol, rtol", [(-1e-9, 0.0), (0.0, -1.0), (-1.0, -1.0)])
def test_tolerance_rejects_negative_values(atol, rtol):
    with pytest.raises(ValueError, match=">= 0"):
        Tolerance(atol, rtol)


def test_tolerance_accepts_zero():
    assert Tolerance(0.0, 0.0).atol == 0.0


@pytest.mark.parametrize("precision, expected", [("fp32", (1e-4, 1e-4)), ("fp16", (2e-2, 2e-2)),
                                                 ("int8", (1e-1, 1e-1)), ("fp64", (1e-10, 1e-10))])
def test_for_precision_defaults(precision, expected):
    tol = Tolerance.for_precision(precision)
    assert (tol.atol, tol.rtol) == expected == DEFAULT_TOLERANCES[precision]
    assert tol.check_error_stat == ("median" if precision == "int8" else "elemwise")


def test_for_precision_defaults_loosen_with_lower_precision():
    atols = [Tolerance.for_precision(p).atol for p in ("fp64", "fp32", "fp16", "int8")]
    assert atols == sorted(atols) and len(set(atols)) == 4


def test_for_precision_overrides_each_value_separately_including_zero():
    tol = Tolerance.for_precision("fp16", atol=0.0)
    assert (tol.atol, tol.rtol) == (0.0, 2e-2)  # 0 is a value, not "use the default"
    tol = Tolerance.for_precision("fp16", rtol=0.5, check_error_stat="median")
    assert (tol.atol, tol.rtol, tol.check_error_stat) == (2e-2, 0.5, "median")
    with pytest.raises(ValueError):
        Tolerance.for_precision("fp32", atol=-1.0)
