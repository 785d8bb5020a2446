"""Silence for the graph converters (onnxconverter-common, ONNX Runtime's quantizer): they print progress and
log advice that would land in the CLI's output."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings


@contextlib.contextmanager
def quiet_converters():
    """The converters print progress and log advice on the root logger; keep the CLI's stdout clean.

    A NullHandler stands in while the root logger has none, so ``logging.warning`` inside the
    quantizer cannot install a permanent stderr handler (``basicConfig``) behind the caller's back.
    """
    root = logging.getLogger()
    handler = logging.NullHandler() if not root.handlers else None
    if handler is not None:
        root.addHandler(handler)
    advice = _DropPreprocessingAdvice()
    root.addFilter(advice)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(advice)
        if handler is not None:
            root.removeHandler(handler)


class _DropPreprocessingAdvice(logging.Filter):
    """Drops quantize_static's 'consider pre-processing' warning (pre-processing was measured and skipped)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()
