"""ONNX Runtime runner: one InferenceSession, with the providers it really uses checked."""

from __future__ import annotations

import os
import re
import time

import numpy as np

from xvol_export.errors import XvolError
from xvol_export.runners.base import InputSpec, Runner, Timing

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
           "tensor(double)": np.dtype(np.float64)}


def _ort_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's own exception types (they derive from Exception alone, not from RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException", "InvalidProtobuf",
             "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    return tuple(t for t in (getattr(state, n, None) for n in names) if isinstance(t, type))


def _reason(err: BaseException, limit: int = 300) -> str:
    """ONNX Runtime's message without its error-code prefix and C++ source locations, on one line; for an invalid
    node, its last sentence (which says what is wrong)."""
    text = " ".join(str(err).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"/\S+\.(?:cc|h|cpp):\d+ (?:[\w:~]+\((?:[^()]|\([^()]*\))*\)(?: const)? )?", " ", text)
    text = " ".join(text.split())
    if ", Error " in text:  # "In Node, (...) : (...) -> (...) , Error No Op registered for X ..."
        text = text[: text.index(":") + 1] + " " + text.rsplit(", Error ", 1)[1]
    text = text or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file (or serialized model bytes) in ONNX Runtime.

    ``providers`` are requested in order, each a name or ``(name, options)`` such as
    ``("CUDAExecutionProvider", {"device_id": 1})``; a requested provider that the session does not end up
    using is an error, not a silent fallback to the CPU. ``threads`` sets intra-op threads
    (``None``: ONNX Runtime's default); ``allow_spinning=False`` makes idle threads sleep, which
    matters when another runtime shares the cores.
    """

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        name: str = "onnxruntime",
        providers: tuple[str | tuple[str, dict], ...] = ("CPUExecutionProvider",),
        threads: int | None = None,
        graph_optimization_level: str = "all",
        allow_spinning: bool = True,
    ):
        if graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(f"graph_optimization_level must be one of {GRAPH_OPTIMIZATION_LEVELS}")
        self.model = model if isinstance(model, bytes) else os.fspath(model)
        self.name = name
        self.providers = tuple(providers)
        self.threads = threads
        self.graph_optimization_level = graph_optimization_level
        self.allow_spinning = allow_spinning
        self.session = None

    @property
    def precision(self) -> str:
        """fp32, fp16 or int8: what the graph computes in (see ``graph_info.graph_precision``)."""
        import onnx

        from xvol_export.graph_info import graph_precision

        if isinstance(self.model, bytes):
            return graph_precision(onnx.load_from_string(self.model))
        return graph_precision(onnx.load(self.model, load_external_data=False))

    def activate(self) -> None:
        if self.session is not None:
            return
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in self.provider_names if p not in available]
        if missing:
            raise XvolError(
                f"ONNX Runtime here has no {', '.join(missing)} (available: {', '.join(available)}). Install the "
                "onnxruntime build for that device (e.g. onnxruntime-gpu for CUDA) or choose another device."
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization_level]
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        if not self.allow_spinning:  # idle threads sleep instead of busy-waiting for the next call
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(self.model, sess_options=options, providers=list(self.providers))
        except _ort_errors() as err:
            raise XvolError(
                f"{self.name}: ONNX Runtime {ort.__version__} cannot load this graph ({type(err).__name__}: "
                f"{_reason(err)}). Check that it is a complete ONNX file of operators and an IR version this ONNX "
                "Runtime supports (a graph from a newer ONNX needs a newer onnxruntime; custom operators need their "
                "library), or export it again."
            ) from None
        self._check_input_types(session)
        unused = [p for p in self.provider_names if p not in session.get_providers()]
        if unused:
            raise XvolError(
                f"ONNX Runtime did not use {', '.join(unused)} for {self.name} (it runs on "
                f"{', '.join(session.get_providers())}). Check the device's driver and libraries; xvol does not "
                "fall back silently."
            )
        self.session = session

    def _check_input_types(self, session) -> None:
        """xvol feeds images: a graph whose inputs are not floating point (int64 ids, bool masks) is refused here,
        by name, instead of by ONNX Runtime at the first call."""
        wrong = [f"'{i.name}' is {i.type}" for i in session.get_inputs() if i.type not in _DTYPES]
        if wrong:
            raise XvolError(
                f"{self.name}: input {', '.join(wrong)}, but xvol feeds images as floating point (float, float16 or "
                "double inputs). Give a graph of an image model with floating-point inputs (xvol export writes "
                "float32 inputs)."
            )

    def _run(self, names: list[str], feed: dict[str, np.ndarray]) -> list:
        try:
            return self.session.run(names, feed)
        except _ort_errors() as err:
            raise XvolError(
                f"{self.name}: ONNX Runtime failed running this graph ({type(err).__name__}: {_reason(err)}). The "
                "graph does not compute on these inputs (shapes or values it does not accept); check the input "
                "shape it expects, or export it again."
            ) from None

    def _check_shapes(self, feed: dict[str, np.ndarray]) -> None:
        """A graph with fixed dims refuses other shapes: say so instead of passing on ONNX Runtime's error."""
        for spec in self.session.get_inputs():
            given = feed[spec.name].shape
            fixed = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
            if len(given) != len(fixed) or any(f is not None and f != g for f, g in zip(fixed, given, strict=True)):
                wanted = "x".join(str(d) if d else "?" for d in fixed)
                raise XvolError(
                    f"{self.name}: input '{spec.name}' has the fixed shape {wanted}, but the inputs are "
                    f"{'x'.join(map(str, given))}. Use inputs of that shape, or export the graph with --dynamic."
                )

    def bind(self, feed: dict[str, np.ndarray]) -> None:
        self.activate()
        dtype = self.input_dtype()
        self._bound = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in feed.items()}
        self._check_shapes(self._bound)
        self._output_names = [o.name for o in self.session.get_outputs()]

    def timed_call(self) -> Timing:
        start = time.perf_counter()
        self._run(self._output_names, self._bound)
        return Timing(1e3 * (time.perf_counter() - start))

    @property
    def provider_names(self) -> list[str]:
        return [p if isinstance(p, str) else p[0] for p in self.providers]

    def deactivate(self) -> None:
        self.session = None

    def used_providers(self) -> list[str]:
        self.activate()
        return list(self.session.get_providers())

    @property
    def is_active(self) -> bool:
        return self.session is not None

    def input_metadata(self) -> dict[str, InputSpec]:
        self.activate()
        return {i.name: InputSpec(_DTYPES.get(i.type, np.dtype(np.float32)),
                                  tuple(d if isinstance(d, int) and d > 0 else None for d in i.shape))
                for i in self.session.get_inputs()}

    def input_dtype(self) -> np.dtype:
        """The numpy dtype of the first input (float32, or float16 for a graph with fp16 inputs)."""
        return next(iter(self.input_metadata().values())).dtype

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.activate()
        dtype = self.input_dtype()
        feed = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in feed.items()}
        self._check_shapes(feed)
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self._run(names, feed), strict=True))
