"""TensorRT runner: a serialized engine on a CUDA GPU, through the named-tensor API on PyTorch's CUDA memory."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from xvol_export.errors import XvolError
from xvol_export.runners.base import InputSpec, Runner, Timing
from xvol_export.tensorrt.environment import TensorRTEnvironment, cuda_missing, tensorrt_missing
from xvol_export.tensorrt.profiles import InputRange, ShapeProfile, profile_index_for
from xvol_export.tensorrt.sidecar import check_sidecar, read_sidecar

if TYPE_CHECKING:
    import tensorrt as trt

# trt.DataType member names to torch dtypes (by name: members differ between TensorRT versions)
TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
                "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}


class TensorRTRunner(Runner):
    """Runs the engine at ``path`` on CUDA device ``device_index``.

    Before TensorRT reads the engine, its sidecar (``NAME.engine.json``) is checked against the
    TensorRT and GPU here; an engine built elsewhere is refused, a missing sidecar is a warning.
    Inputs are checked against the engine's optimization profiles. Timed calls report GPU compute
    (CUDA events around ``execute_async_v3``), the input and output copies apart, and host latency,
    as trtexec does; ``cuda_graph`` replays the enqueue as a CUDA graph; ``data_transfers=False``
    keeps inputs and outputs on the GPU.
    """

    def __init__(self, path: str | os.PathLike, name: str = "tensorrt", device_index: int = 0,
                 cuda_graph: bool = False, data_transfers: bool = True):
        self.path = Path(path)
        self.name = name
        self.device_index = device_index
        self.cuda_graph = cuda_graph
        self.data_transfers = data_transfers
        self.sidecar = read_sidecar(self.path)
        self.warnings: list[str] = []
        self._engine = None
        self._context = None
        self._graph: torch.cuda.CUDAGraph | None = None

    @property
    def precision(self) -> str | None:
        """The graph precision the engine was built from (its sidecar's); None without a sidecar."""
        return self.sidecar.precision if self.sidecar else None

    @property
    def is_active(self) -> bool:
        return self._context is not None

    @property
    def timed_what(self) -> str:
        transfers = ("host latency = input copy + compute + output copy, each copy timed apart"
                     if self.data_transfers else "inputs and outputs kept on the GPU")
        graph = ", CUDA graph replay" if self.cuda_graph else ""
        return f"GPU compute (CUDA events around execute_async_v3); {transfers}{graph}"

    def activate(self) -> None:
        if self._context is not None:
            return
        missing = tensorrt_missing() or cuda_missing()
        if missing:
            raise XvolError(f"{self.path}: cannot run a TensorRT engine here: {missing}.")
        import tensorrt as trt

        self.warnings += check_sidecar(self.sidecar, TensorRTEnvironment.current(self.device_index), self.path)
        self._device = torch.device("cuda", self.device_index)
        with torch.cuda.device(self._device):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            if self.sidecar is not None and self.sidecar.version_compatible:
                runtime.engine_host_code_allowed = True  # a version-compatible engine carries its lean runtime
            engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
            if engine is None:
                raise XvolError(f"{self.path}: TensorRT {trt.__version__} could not read this engine: the file is "
                                "damaged, or was built by another TensorRT version or for another GPU. Rebuild it "
                                "here from its ONNX graph (xvol export MODEL.onnx --format engine).")
            self._engine = engine
            self._context = engine.create_execution_context()
            self._stream = torch.cuda.Stream(self._device)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: TORCH_DTYPES[engine.get_tensor_dtype(n).name] for n in names}
        self._profiles = [ShapeProfile(tuple(InputRange(n, *(_dims(d) for d in engine.get_tensor_profile_shape(n, p)))
                                             for n in self._inputs))
                          for p in range(engine.num_optimization_profiles)]

    def deactivate(self) -> None:
        self._context = None
        self._engine = None
        self._graph = None

    def input_metadata(self) -> dict[str, InputSpec]:
        self.activate()
        assert self._engine is not None
        return {n: InputSpec(np.dtype(torch.empty(0, dtype=self._dtypes[n]).numpy().dtype)
                             if self._dtypes[n] != torch.bfloat16 else np.dtype(np.float32),
                             tuple(d if d >= 0 else None for d in _dims(self._engine.get_tensor_shape(n))))
                for n in self._inputs}

    def fixed_batch(self) -> int | None:
        """The largest batch the engine's profiles take (verification runs in chunks of it, the last one padded)."""
        self.activate()
        return max(r.max[0] for p in self._profiles for r in p.ranges[:1] if r.max)

    def _stage(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Select the profile that takes ``feed``, set its shapes and return device inputs and outputs."""
        assert self._context is not None
        unknown = sorted(set(feed) - set(self._inputs))
        if unknown or set(self._inputs) - set(feed):
            raise XvolError(f"{self.name}: the engine's inputs are {', '.join(self._inputs)}; got "
                            f"{', '.join(sorted(feed))}.")
        shapes = {n: tuple(np.shape(a)) for n, a in feed.items()}
        index = profile_index_for(self._profiles, shapes, self.name)
        if index != self._context.active_optimization_profile:
            self._context.set_optimization_profile_async(index, self._stream.cuda_stream)
        inputs = {}
        for n in self._inputs:
            inputs[n] = torch.from_numpy(np.ascontiguousarray(feed[n])).to(self._device, self._dtypes[n])
            self._context.set_input_shape(n, shapes[n])
            self._context.set_tensor_address(n, inputs[n].data_ptr())
        outputs = {}
        for n in self._outputs:
            outputs[n] = torch.empty(_dims(self._context.get_tensor_shape(n)), dtype=self._dtypes[n],
                                     device=self._device)
            self._context.set_tensor_address(n, outputs[n].data_ptr())
        return inputs, outputs

    def _enqueue(self) -> None:
        assert self._context is not None
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise XvolError(f"{self.name}: TensorRT failed to run the engine (execute_async_v3 returned False); "
                            "re-run with --debug for TensorRT's log.")

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.activate()
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            _, outputs = self._stage(feed)
            self._enqueue()
            self._stream.synchronize()
        return {n: (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy() for n, t in outputs.items()}

    def bind(self, feed: dict[str, np.ndarray]) -> None:
        self.activate()
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            self._device_inputs, self._device_outputs = self._stage(feed)
            self._host_inputs = {n: t.cpu().pin_memory() for n, t in self._device_inputs.items()}
            self._host_outputs = {n: torch.empty(t.shape, dtype=t.dtype).pin_memory()
                                  for n, t in self._device_outputs.items()}
            self._enqueue()  # TensorRT sets up on the first enqueue; a CUDA graph must not capture that
            self._stream.synchronize()
            self._graph = None
            if self.cuda_graph:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self._stream):
                    self._enqueue()
                self._graph = graph

    def timed_call(self) -> Timing:
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            self._stream.synchronize()
            start = time.perf_counter()
            events[0].record(self._stream)
            if self.data_transfers:
                for n, device_input in self._device_inputs.items():
                    device_input.copy_(self._host_inputs[n], non_blocking=True)
            events[1].record(self._stream)
            if self._graph is not None:
                self._graph.replay()
            else:
                self._enqueue()
            events[2].record(self._stream)
            if self.data_transfers:
                for n, device_output in self._device_outputs.items():
                    self._host_outputs[n].copy_(device_output, non_blocking=True)
            events[3].record(self._stream)
            self._stream.synchronize()
            host_ms = 1e3 * (time.perf_counter() - start)
        transfers = (events[0].elapsed_time(events[1]), events[2].elapsed_time(events[3])) if self.data_transfers \
            else (None, None)
        return Timing(host_ms, events[1].elapsed_time(events[2]), *transfers)


def _dims(dims: "trt.Dims") -> tuple[int, ...]:
    """A ``trt.Dims`` as a tuple (-1 where dynamic)."""
    return tuple(dims[i] for i in range(len(dims)))
