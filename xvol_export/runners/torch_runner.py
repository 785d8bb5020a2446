"""PyTorch runner: an eval-mode module on a chosen device and dtype."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from xvol_export.runners.base import InputSpec, Runner, Timing, named_outputs


class TorchRunner(Runner):
    """Runs ``model`` in eval mode under ``torch.inference_mode``; one input named ``input``, one output ``output``.

    The model must already be in eval mode; ``activate`` moves it to ``device`` (a no-op on the CPU).
    On CUDA, timed calls are measured with CUDA events (device compute) and host wall time (the
    call as a caller waits for it, including the input and output copies unless
    ``data_transfers=False``, when both stay on the device). ``cuda_graph`` captures the forward
    once at ``bind`` and replays it.
    """

    def __init__(self, model: nn.Module, name: str = "torch", device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, cuda_graph: bool = False, data_transfers: bool = True):
        if model.training:
            raise ValueError("TorchRunner needs an eval-mode model (call .eval() on a copy first)")
        self.model = model
        self.name = name
        self.device = torch.device(device)
        # inputs go in at the model's own precision (an fp16 or bf16 checkpoint runs in it)
        self.dtype = dtype or next((t.dtype for t in model.parameters() if t.is_floating_point()), torch.float32)
        self.cuda = self.device.type == "cuda"
        if cuda_graph and not self.cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        self.cuda_graph = cuda_graph
        self.data_transfers = data_transfers

    @property
    def timed_what(self) -> str:
        if not self.cuda:
            return "host wall time per call"
        transfers = "including host-device copies" if self.data_transfers else "inputs and outputs kept on the device"
        graph = ", CUDA graph replay" if self.cuda_graph else ""
        return f"device compute (CUDA events) and host latency ({transfers}{graph})"

    def input_metadata(self) -> dict[str, InputSpec]:
        """One input ``input``: any batch; channels, height and width as the model declares (else None)."""
        size = tuple(getattr(self.model, "input_size", None) or (None, None, None))
        dtype = {torch.float16: np.float16, torch.float64: np.float64}.get(self.dtype, np.float32)  # bf16: fed fp32
        return {"input": InputSpec(np.dtype(dtype), (None, *size))}

    def fixed_batch(self) -> int | None:
        return None

    def activate(self) -> None:
        self.model.to(self.device)
        super().activate()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.asarray(feed["input"])).to(self.device, self.dtype)
        with torch.inference_mode():
            outputs = named_outputs(self.model(x))
        return {name: _to_numpy(y) for name, y in outputs.items()}

    def bind(self, feed: dict[str, np.ndarray]) -> None:
        self.activate()
        host = torch.from_numpy(np.ascontiguousarray(feed["input"])).to(dtype=self.dtype)
        if not self.cuda:
            self._host_input = host
            return
        self._host_input = host.pin_memory()
        self._device_input = self._host_input.to(self.device)
        self._graph = None
        if self.cuda_graph:
            with torch.cuda.device(self.device):
                self._graph, self._graph_output = _capture(self.model, self._device_input)

    def timed_call(self) -> Timing:
        if not self.cuda:
            start = time.perf_counter()
            with torch.inference_mode():
                self.model(self._host_input)
            return Timing(1e3 * (time.perf_counter() - start))
        with torch.cuda.device(self.device):  # events and streams of the runner's own GPU
            return self._timed_cuda_call()

    def _timed_cuda_call(self) -> Timing:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            if self.data_transfers:
                self._device_input.copy_(self._host_input, non_blocking=True)
            begin.record()
            if self._graph is not None:
                self._graph.replay()
                output = self._graph_output
            else:
                output = self.model(self._device_input)
            end.record()
            if self.data_transfers:
                output = output.to("cpu", non_blocking=True)
        torch.cuda.synchronize(self.device)
        host_ms = 1e3 * (time.perf_counter() - start)
        return Timing(host_ms, begin.elapsed_time(end))


def _capture(model: nn.Module, static_input: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Capture one forward pass into a CUDA graph (after warm-up on a side stream, as PyTorch requires)."""
    stream = torch.cuda.Stream(device=static_input.device)
    stream.wait_stream(torch.cuda.current_stream(static_input.device))
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(3):
            model(static_input)
    torch.cuda.current_stream(static_input.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        output = model(static_input)
    return graph, output


def _to_numpy(y: torch.Tensor) -> np.ndarray:
    y = y.detach().cpu()
    return (y.float() if y.dtype == torch.bfloat16 else y).numpy()  # numpy has no bfloat16

