"""Comparing two outputs: error statistics and Polygraphy-style tolerance checks.

The default verdicts are scale-free and precision-aware (:mod:`xvol_export.verify.gates`); the
:class:`Tolerance` here is Polygraphy's ``--atol/--rtol/--check-error-stat``, which rules when a
user gives it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from xvol_export.errors import XvolError

ERROR_STATS = ("elemwise", "max", "mean", "median")
# Default (atol, rtol) per precision of the candidate.
DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-4), "fp64": (1e-10, 1e-10), "fp16": (2e-2, 2e-2), "int8": (1e-1, 1e-1)}
# int8 errors are spread over every element: judge the typical error, not the worst one.
DEFAULT_ERROR_STAT = {"fp32": "elemwise", "fp64": "elemwise", "fp16": "elemwise", "int8": "median"}
_EPSILON = np.finfo(np.float64).eps  # added to zero reference values, as Polygraphy does


@dataclass(frozen=True)
class Tolerance:
    """Fails where the chosen statistic exceeds BOTH ``atol`` (absolute) and ``rtol`` (relative).

    ``elemwise`` checks every element (an element passes if it is within ``atol`` or ``rtol``);
    ``max``, ``mean``, ``median`` check that statistic of the absolute and relative errors.
    """

    atol: float = DEFAULT_TOLERANCES["fp32"][0]
    rtol: float = DEFAULT_TOLERANCES["fp32"][1]
    check_error_stat: str = "elemwise"

    def __post_init__(self):
        if self.check_error_stat not in ERROR_STATS:
            raise ValueError(f"check_error_stat must be one of {ERROR_STATS}, got {self.check_error_stat!r}")
        if not (np.isfinite(self.atol) and np.isfinite(self.rtol)) or self.atol < 0 or self.rtol < 0:
            raise ValueError("tolerances must be finite and >= 0")

    def describe(self) -> str:
        return f"atol={self.atol:g}, rtol={self.rtol:g}, {self.check_error_stat}"

    def to_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "check_error_stat": self.check_error_stat}

    @classmethod
    def for_precision(cls, precision: str = "fp32", atol: float | None = None, rtol: float | None = None,
                      check_error_stat: str | None = None) -> "Tolerance":
        """The precision's defaults, overridden where a value is given (0 is a value)."""
        default_atol, default_rtol = DEFAULT_TOLERANCES[precision]
        return cls(default_atol if atol is None else atol, default_rtol if rtol is None else rtol,
                   check_error_stat or DEFAULT_ERROR_STAT[precision])


def parse_tolerance(precision: str = "fp32", atol: float | None = None, rtol: float | None = None,
                    check_error_stat: str | None = None) -> Tolerance:
    """:meth:`Tolerance.for_precision` for values a user typed: bad ones are an ``XvolError``."""
    if precision not in DEFAULT_TOLERANCES:
        raise XvolError(f"Unknown precision '{precision}'. Choose one of: {', '.join(DEFAULT_TOLERANCES)}.")
    if check_error_stat is not None and check_error_stat not in ERROR_STATS:
        raise XvolError(f"Unknown --check-error-stat '{check_error_stat}'. Choose one of: {', '.join(ERROR_STATS)}.")
    for name, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and not (np.isfinite(value) and value >= 0):  # NaN would switch the check off
            raise XvolError(f"{name} must be a finite number, zero or positive, got {value}.")
    return Tolerance.for_precision(precision, atol, rtol, check_error_stat)


@dataclass
class ErrorStats:
    """Errors of ``candidate`` against ``reference``; ``passed`` is the verdict under a tolerance (None: none given).

    ``rms`` is the reference's root mean square; ``max_error_rms`` the largest absolute error in units of it.
    """

    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    median_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    median_rel: float
    rel_l2: float
    cosine: float
    passed: bool | None
    check_error_stat: str
    required_atol: float
    required_rtol: float
    top1_agreement: float | None = None
    rms: float = 0.0
    max_error_rms: float = 0.0
    finite: bool = True

    def min_required(self) -> str:
        """Polygraphy's 'minimum required tolerance' line."""
        return f"{self.check_error_stat} error | [abs={self.required_atol:.5g}] OR [rel={self.required_rtol:.5g}]"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


def compare_arrays(reference: np.ndarray, candidate: np.ndarray,
                   tolerance: Tolerance | None = Tolerance(), *, quantiles: bool = True) -> ErrorStats:
    """Compare in float64; NaN or Inf in the candidate fails. Top-1 agreement for ``[N, classes]`` outputs.

    ``tolerance=None`` computes the statistics only (``passed`` is None). ``quantiles=False`` leaves the
    medians and the 99th percentile out (NaN), which cost most on large arrays and no gate reads.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"cannot compare outputs of different shapes {ref.shape} and {cand.shape}")
    with np.errstate(invalid="ignore", over="ignore"):  # Inf/NaN in a candidate fails; no warnings needed
        return _compare(ref, cand, tolerance, quantiles)


def _compare(ref: np.ndarray, cand: np.ndarray, tolerance: Tolerance | None, quantiles: bool) -> ErrorStats:
    absdiff = np.abs(cand - ref)
    denominator = np.abs(ref)
    denominator[denominator == 0] = _EPSILON
    reldiff = absdiff / denominator
    if absdiff.size == 0:
        absdiff = reldiff = np.zeros(1)
    stat = tolerance.check_error_stat if tolerance is not None else "elemwise"
    stats = {
        "max": (float(absdiff.max()), float(reldiff.max())),
        "mean": (float(absdiff.mean()), float(reldiff.mean())),
        "median": ((float(np.median(absdiff)), float(np.median(reldiff))) if quantiles or stat == "median"
                   else (float("nan"), float("nan"))),
    }
    stats["elemwise"] = stats["max"]
    if tolerance is None:
        failed = False
    elif stat == "elemwise":
        mismatch = ((absdiff > tolerance.atol) | np.isnan(absdiff)) & ((reldiff > tolerance.rtol) | np.isnan(reldiff))
        failed = bool(mismatch.any())
    else:
        abs_err, rel_err = stats[stat]
        failed = not (abs_err <= tolerance.atol or rel_err <= tolerance.rtol)
    rel_l2, cosine = _rel_l2_and_cosine(ref, cand)
    top1 = None
    if ref.ndim == 2 and ref.shape[0] > 0 and ref.shape[1] > 1:
        top1 = float((ref.argmax(1) == cand.argmax(1)).mean())
    finite = bool(np.isfinite(cand).all())
    rms = float(np.sqrt(np.mean(np.square(ref)))) if ref.size else 0.0
    max_error_rms = stats["max"][0] / rms if rms > 0 else (0.0 if stats["max"][0] == 0 else float("inf"))
    return ErrorStats(
        shape=tuple(ref.shape),
        max_abs=stats["max"][0],
        mean_abs=stats["mean"][0],
        median_abs=stats["median"][0],
        p99_abs=float(np.quantile(absdiff, 0.99)) if quantiles else float("nan"),
        max_rel=stats["max"][1],
        mean_rel=stats["mean"][1],
        median_rel=stats["median"][1],
        rel_l2=rel_l2,
        cosine=cosine,
        passed=None if tolerance is None else not failed and finite,
        check_error_stat=stat,
        required_atol=stats[stat][0],
        required_rtol=stats[stat][1],
        top1_agreement=top1,
        rms=rms,
        max_error_rms=float(max_error_rms) if finite else float("inf"),
        finite=finite,
    )


def _rel_l2_and_cosine(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    ref_norm = float(np.linalg.norm(ref))
    cand_norm = float(np.linalg.norm(cand))
    diff_norm = float(np.linalg.norm(cand - ref)) if ref.size else 0.0
    rel_l2 = diff_norm / ref_norm if ref_norm > 0 else (0.0 if diff_norm == 0 else float("inf"))
    if ref_norm > 0 and cand_norm > 0:
        cosine = float(np.vdot(ref, cand) / (ref_norm * cand_norm))
    else:
        cosine = float(ref_norm == cand_norm)
    return rel_l2, cosine
