"""OpenVINO runner: an ONNX graph or an OpenVINO IR (``.xml`` with its ``.bin``) compiled for a device."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xvol_export.env import native_bf16
from xvol_export.errors import XvolError
from xvol_export.metadata_keys import INFERENCE_PRECISION, rt_info_path
from xvol_export.runners.base import InputSpec, Runner

# OpenVINO's CPU plugin computes in bf16 by default where the processor has bf16 instructions: an fp32
# graph would silently run at lower precision. xvol asks for the graph's own precision unless told otherwise.
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
# xvol's precision names (--precision) and OpenVINO's INFERENCE_PRECISION_HINT values
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
PRECISION_OF_HINT = {hint: name for name, hint in HINTS.items()}
# Where an IR records the precision OpenVINO should compute it in (xvol export --format openvino --precision bf16)
IR_PRECISION_KEY = rt_info_path(INFERENCE_PRECISION)


def openvino_missing() -> str | None:
    """Why OpenVINO cannot run here (None when it can)."""
    try:
        import openvino  # noqa: F401
    except ImportError as err:
        return f"OpenVINO is not installed ({err}): pip install 'xvol[openvino]'"
    return None


class OpenVinoRunner(Runner):
    """Runs an ONNX graph (a path or serialized bytes) or an OpenVINO IR ``.xml`` with OpenVINO.

    ``device`` is an OpenVINO device name (``CPU``, ``GPU``, ``NPU``, ``AUTO``); ``inference_precision``
    is the precision OpenVINO computes in (``f32``, ``bf16``, ``f16``; default: what an IR records under
    ``xvol/inference_precision`` in its rt_info, else ``f32``, the graph's own for fp32 graphs; an fp16
    or int8 graph keeps its float16 weights or Q/DQ nodes either way). ``threads`` sets
    ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default). Once compiled, :attr:`compiled_precision` is
    the hint the compiled model reports back (a processor may not have what was asked), and
    :attr:`precision` says what actually ran.
    """

    def __init__(self, model: str | os.PathLike | bytes, name: str = "openvino", device: str = "CPU",
                 inference_precision: str | None = None, threads: int | None = None):
        if inference_precision is not None and inference_precision not in INFERENCE_PRECISIONS:
            raise XvolError(f"Unknown OpenVINO inference precision '{inference_precision}'. Choose one of: "
                            f"{', '.join(INFERENCE_PRECISIONS)}.")
        self.model = model if isinstance(model, bytes) else os.fspath(model)
        self.name = name
        self.device = device
        self.requested_precision = inference_precision  # None: the IR's recorded one, else f32
        self.threads = threads
        self.compiled = None
        self.compiled_precision: str | None = None  # read back from the last compiled model (kept after deactivate)
        self._request = None
        self._ir = None
        self._graph_precision: str | None = None

    @property
    def _is_ir(self) -> bool:
        return not isinstance(self.model, bytes) and Path(self.model).suffix.lower() == ".xml"

    def _read(self):
        """The IR as an ``ov.Model`` (read once); ONNX graphs are read by ``compile``."""
        import openvino as ov

        if self._ir is None:
            try:
                self._ir = ov.Core().read_model(self.model)
            except RuntimeError as err:
                raise XvolError(f"{self.name}: OpenVINO cannot read the model ({str(err).splitlines()[0]}).") from None
        return self._ir

    @property
    def recorded_precision(self) -> str | None:
        """The inference precision an IR records (``xvol/inference_precision``: fp32, bf16 or fp16), else None."""
        if not self._is_ir or openvino_missing():
            return None
        model = self._read()
        if not model.has_rt_info(IR_PRECISION_KEY):
            return None
        value = model.get_rt_info(IR_PRECISION_KEY).astype(str)
        if value not in HINTS:
            raise XvolError(f"{self.model}: its rt_info records the inference precision '{value}', which xvol does "
                            f"not know (one of {', '.join(HINTS)}). Export it again, or name the precision.")
        return value

    @property
    def inference_precision(self) -> str:
        """The INFERENCE_PRECISION_HINT asked for: the explicit one, else the IR's recorded one, else f32."""
        if self.requested_precision is not None:
            return self.requested_precision
        recorded = self.recorded_precision
        return HINTS[recorded] if recorded else "f32"

    @property
    def is_active(self) -> bool:
        return self.compiled is not None

    @property
    def graph_precision(self) -> str:
        """fp32, fp16 or int8: an ONNX graph's (its weights and Q/DQ nodes), or an IR's (its FakeQuantize
        nodes and constants: OpenVINO's ``save_model`` compresses weights to fp16 by default)."""
        if self._graph_precision is None:
            self._graph_precision = self._read_graph_precision()
        return self._graph_precision

    def _read_graph_precision(self) -> str:
        if self._is_ir:
            ops = self._read().get_ops()
            if any(op.get_type_name() == "FakeQuantize" for op in ops):
                return "int8"
            constants = {op.get_output_element_type(0).get_type_name() for op in ops
                         if op.get_type_name() == "Constant"}
            return "fp16" if "f16" in constants else "fp32"
        import onnx

        from xvol_export.graph_info import graph_precision

        if isinstance(self.model, bytes):
            return graph_precision(onnx.load_from_string(self.model))
        return graph_precision(onnx.load(self.model, load_external_data=False))

    @property
    def precision(self) -> str:
        """What runs: bf16 or fp16 when OpenVINO computes an fp32 graph in it, else the graph's own. After
        compiling, the hint the compiled model reports back decides; before, the one asked for."""
        own = self.graph_precision
        hint = self.compiled_precision or self.inference_precision
        return PRECISION_OF_HINT.get(hint, own) if own == "fp32" else own

    def precision_note(self) -> str:
        """What OpenVINO computed in, and why, for reports (read back from the compiled model once compiled)."""
        asked = self.inference_precision
        why = (f"asked for {asked} explicitly" if self.requested_precision is not None
               else f"asked for {asked}, as the IR's rt_info records (xvol/inference_precision)"
               if self.recorded_precision
               else f"asked for {asked}, xvol's default for fp32 graphs (OpenVINO's CPU default would be bf16 where "
                    "the processor has it)")
        if self.compiled_precision is None:
            return f"OpenVINO: not compiled yet; {why}"
        ran = self.compiled_precision
        text = (f"OpenVINO computed in {PRECISION_OF_HINT.get(ran, ran)} (INFERENCE_PRECISION_HINT {ran}, read back "
                f"from the compiled model; {why})")
        if ran != asked:
            text += f"; asked for {asked}, the {self.device} plugin runs {ran} on this processor"
        return text

    def activate(self) -> None:
        if self.compiled is not None:
            return
        missing = openvino_missing()
        if missing:
            raise XvolError(f"{self.name}: {missing}.")
        import openvino as ov

        core = ov.Core()
        available = core.available_devices  # CPU, GPU.0, ...; "GPU" names the first GPU
        virtual = self.device.split(":")[0] in ("AUTO", "MULTI", "HETERO")
        if not virtual and not any(self.device in (d, d.split(".")[0]) for d in available):
            raise XvolError(f"OpenVINO has no device '{self.device}' here (available: "
                            f"{', '.join(available)}). Choose one of those.")
        if self._is_ir:
            model = self._read()
        else:
            try:
                model = core.read_model(self.model)
            except RuntimeError as err:
                raise XvolError(f"{self.name}: OpenVINO cannot read the model ({str(err).splitlines()[0]}).") from None
        hint = self.inference_precision
        if hint == "bf16" and self.device.startswith("CPU") and not native_bf16():
            # What the CPU plugin does where the processor has no native bf16, done here so that it also holds
            # under oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA), where the plugin would try bf16 kernels it cannot have
            hint = "f32"
        config = {"INFERENCE_PRECISION_HINT": hint}
        if self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        self.compiled = core.compile_model(model, self.device, config)
        self._request = self.compiled.create_infer_request()
        try:  # what the plugin really computes in: a processor without bf16 (or f16) falls back
            self.compiled_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        except RuntimeError:  # a device (AUTO, ...) that does not report it: what was asked
            self.compiled_precision = self.inference_precision
        # An output tensor can carry several names (e.g. a Cast's and the graph's): report the graph's own;
        # an IR does not say which that was, so the plainest (not an exporter's "/node/path" name) stands.
        declared = set(self._onnx_output_names())
        self._output_names = [min(port.get_names(), key=lambda n: (n not in declared, "/" in n, len(n), n))
                              for port in self.compiled.outputs]

    def _onnx_output_names(self) -> list[str]:
        if self._is_ir:
            return []
        import onnx

        graph = (onnx.load_from_string(self.model) if isinstance(self.model, bytes)
                 else onnx.load(self.model, load_external_data=False))
        return [output.name for output in graph.graph.output]

    def deactivate(self) -> None:
        self.compiled = None
        self._request = None

    def input_metadata(self) -> dict[str, InputSpec]:
        self.activate()
        return {port.get_any_name(): InputSpec(np.dtype(port.get_element_type().to_dtype()),
                                               tuple(d.get_length() if d.is_static else None
                                                     for d in port.get_partial_shape()))
                for port in self.compiled.inputs}

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.activate()
        expected = self.input_metadata()
        for name, array in feed.items():
            spec = expected.get(name)
            if spec is None:
                raise XvolError(f"{self.name}: has no input '{name}' (its inputs: {', '.join(expected)}).")
            wanted, given = spec.shape, np.shape(array)
            if len(wanted) != len(given) or any(w is not None and w != g for w, g in zip(wanted, given, strict=True)):
                shape = "x".join("?" if w is None else str(w) for w in wanted)
                raise XvolError(f"{self.name}: input '{name}' has the shape {shape}, but the inputs are "
                                f"{'x'.join(map(str, given))}. Use inputs of that shape, or export "
                                "the graph with --dynamic.")
        results = self._request.infer({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()})
        return {name: np.array(results[port]) for name, port in zip(self._output_names, self.compiled.outputs,
                                                                      strict=True)}
