"""The ONNX Runtime runner: providers asked for are providers used, session options are applied."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from xvol_export import create_model, fold
from xvol_export.errors import XvolError
from xvol_export.export import onnx_graph
from xvol_export.runners import OnnxRuntimeRunner, TorchRunner

from helpers import make_generator, randomize_bn


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    model = create_model("xvol_resnet_tiny", blocks_per_stage=1)
    randomize_bn(model, make_generator(3))
    deploy, _ = fold(model.eval())
    path = tmp_path_factory.mktemp("runner") / "tiny.onnx"
    onnx_graph.save_onnx(onnx_graph.export_onnx(deploy, (1, 3, 32, 32), dynamic=True), path)
    return path, deploy


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_an_error_not_a_silent_cpu_fallback(graph):
    runner = OnnxRuntimeRunner(graph[0], providers=("CUDAExecutionProvider",))
    with pytest.raises(XvolError, match="CUDAExecutionProvider"):
        runner.activate()


def test_session_options_are_applied(graph):
    runner = OnnxRuntimeRunner(graph[0], threads=1, graph_optimization_level="basic", allow_spinning=False)
    runner.activate()
    options = runner.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert runner.used_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError):
        OnnxRuntimeRunner(graph[0], graph_optimization_level="max")


def test_onnx_and_torch_runners_agree_and_bind_then_time(graph):
    path, deploy = graph
    x = np.random.default_rng(0).standard_normal((3, 3, 40, 24), dtype=np.float32)
    onnx_runner, torch_runner = OnnxRuntimeRunner(path), TorchRunner(deploy)
    with onnx_runner, torch_runner:
        y_onnx = onnx_runner.infer({"input": x})["output"]
        y_torch = torch_runner.infer({"input": x})["output"]
        assert np.linalg.norm(y_onnx - y_torch) / np.linalg.norm(y_torch) < 1e-5
        for runner in (onnx_runner, torch_runner):
            runner.bind({"input": x})
            timing = runner.timed_call()
            assert timing.host_ms > 0 and timing.device_ms is None
    assert onnx_runner.fixed_batch() is None  # dynamic batch


def test_torch_runner_refuses_training_mode_and_cpu_cuda_graphs():
    model = create_model("xvol_resnet_tiny", blocks_per_stage=1)
    with pytest.raises(ValueError):
        TorchRunner(model.train())
    with pytest.raises(ValueError):
        TorchRunner(model.eval(), cuda_graph=True)


def test_runners_give_every_output_of_a_two_output_model_by_the_same_names(tmp_path):
    """A tuple-returning model: PyTorch and ONNX Runtime both give ``output0`` and ``output1``, equal."""
    import torch

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y.mean((2, 3)), y

    model = TwoHeads().eval()
    path = tmp_path / "two.onnx"
    path.write_bytes(onnx_graph.export_onnx(model, (1, 3, 8, 8)).SerializeToString())
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    with TorchRunner(model) as torch_runner, OnnxRuntimeRunner(path) as onnx_runner:
        ours, theirs = torch_runner.infer(feed), onnx_runner.infer(feed)
    assert list(ours) == list(theirs) == ["output0", "output1"]
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-5)
