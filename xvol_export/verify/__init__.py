"""Verification: run the reference once (float64 and same-precision baselines), then judge candidates.

``Reference`` (:mod:`.run`) holds the reference outputs of one input set; :func:`verify` (:mod:`.core`) runs
one candidate and judges it (:mod:`.report`) with the default gate of its precision (:mod:`.gates`) or a
user's Polygraphy tolerance. What runs models needs PyTorch and is imported on first use; judging stored
outputs (:mod:`.report`, :mod:`.gates`, :mod:`.outputs`) does not.
"""

from __future__ import annotations

import importlib

from xvol_export.verify.gates import DEFAULT_GATES, PRECISIONS, Condition, Gate, default_gate
from xvol_export.verify.outputs import Baseline, Outputs, run_batches
from xvol_export.verify.report import BlockCheck, Check, VerifyReport, fold_exactness, judge

_LAZY = {
    "Reference": "xvol_export.verify.run",
    "eval_copy": "xvol_export.verify.run",
    "model_precision": "xvol_export.verify.run",
    "candidate_precision": "xvol_export.verify.core",
    "verify": "xvol_export.verify.core",
    "verify_fold": "xvol_export.verify.core",
    "verify_models": "xvol_export.verify.core",
    "verify_runners": "xvol_export.verify.core",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xvol_export.verify' has no attribute {name!r}")


__all__ = [
    "Baseline", "BlockCheck", "Check", "Condition", "DEFAULT_GATES", "Gate", "Outputs", "PRECISIONS", "Reference",
    "VerifyReport", "candidate_precision", "default_gate", "eval_copy", "fold_exactness", "judge",
    "model_precision", "run_batches", "verify", "verify_fold", "verify_models", "verify_runners",
]
