"""The `xvol bench` job (xvol_export.bench.bench_artifacts) on real artifacts: a tiny training checkpoint and
its ONNX exports (static and dynamic), plus scripted runners for the timing loop's exact arithmetic."""

from __future__ import annotations

import itertools
import json
import types

import jsonschema
import numpy as np
import pytest
import torch

import xvol_export.runners as runners_module
from xvol_export import create_model
from xvol_export.bench import SCHEMA_PATH as BENCH_SCHEMA
from xvol_export.checkpoint import save_checkpoint
from xvol_export.errors import XvolError
from xvol_export.jobs import BenchSettings, ExportSettings, bench_artifacts, export_checkpoint
from xvol_export.jobs import bench as bench_job
from xvol_export.layers import PhaseConv2d
from xvol_export.runners import InputSpec, OnnxRuntimeRunner, Runner, Timing, TorchRunner

from helpers import randomize_bn

FAST = dict(warmup=1, iterations=5)
HW = (32, 32)  # xvol_resnet_tiny's input size
NO_CUDA = "needs a CUDA device (torch.cuda.is_available() is False)"


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """A tiny training checkpoint, its static ONNX export (1x3x32x32) and a dynamic one."""
    folder = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    model = create_model("xvol_resnet_tiny", blocks_per_stage=1)
    randomize_bn(model, torch.Generator().manual_seed(5))
    model.eval()
    ckpt = save_checkpoint(model, folder / "train.pth")
    assert export_checkpoint(ckpt, folder / "static.onnx", ExportSettings(seed=0)).written
    assert export_checkpoint(ckpt, folder / "dynamic.onnx", ExportSettings(seed=0, dynamic=True)).written
    return {"ckpt": ckpt, "onnx": folder / "static.onnx", "dynamic": folder / "dynamic.onnx", "dir": folder}


@pytest.fixture(scope="module")
def schema():
    return json.loads(BENCH_SCHEMA.read_text())


def _as_cli_payload(report) -> dict:
    """What `xvol bench --json` writes: the report plus command and status, through JSON."""
    return json.loads(json.dumps({"command": "bench", **report.to_dict(), "status": "PASSED"}))


# ------------------------------------------------------------------------------ real artifacts


def test_cases_per_artifact_and_batch(art):
    settings = BenchSettings(batches=(1, 2), **FAST)
    report = bench_artifacts([art["ckpt"], art["dynamic"]], settings)
    assert [(c.artifact, c.batch) for c in report.cases] == [
        ("train.pth", 1), ("dynamic.onnx", 1), ("train.pth", 2), ("dynamic.onnx", 2)]
    assert [c.backend for c in report.cases] == ["torch", "onnxruntime"] * 2
    for case in report.cases:
        assert case.host.count >= settings.iterations
        assert case.input_shape == (case.batch, 3, *HW)
        assert case.timed == "host wall time per call"
        assert case.device is None  # no device events on the CPU
        assert case.latency is case.host
        assert case.host.min <= case.host.median <= case.host.max
        assert case.host.min > 0
        assert set(case.host.percentiles) == {90, 95, 99}
    for first, other in (report.cases[0:2], report.cases[2:4]):  # ratios are per batch size
        assert first.ratio_to_first == 1.0
        assert other.ratio_to_first == pytest.approx(other.latency.median / first.latency.median, rel=1e-12)
    assert report.settings is settings
    assert report.machine["logical_cores"] and report.machine["cpu"]
    assert "gpu" not in report.machine


def test_case_dict_figures(art):
    report = bench_artifacts([art["onnx"]], BenchSettings(percentiles=(50, 99.9), **FAST))
    (case,) = report.cases
    out = case.to_dict()
    assert out["input_shape"] == [1, 3, *HW]
    assert out["latency_ms"]["count"] == case.host.count
    assert {"p50", "p99_9"} <= set(out["latency_ms"])
    assert out["device_latency_ms"] is None
    assert out["throughput_items_per_s"] == pytest.approx(1e3 / case.host.median)
    assert out["ratio_to_first"] == 1.0
    assert out["unstable"] == case.host.unstable


def test_duration_extends_the_run(art):
    report = bench_artifacts([art["ckpt"], art["onnx"]], BenchSettings(warmup=0, iterations=1, duration=0.2))
    for case in report.cases:
        assert case.host.count > 1
        summed_ms = case.host.mean * case.host.count
        assert summed_ms >= 200.0 * (1 - 1e-9), f"{case.artifact}: {summed_ms:.1f} ms of timed calls < 0.2 s"
    assert report.to_dict()["settings"]["duration_s"] == 0.2


@pytest.fixture
def ort_runners(monkeypatch):
    """Every OnnxRuntimeRunner the job makes, as made."""
    made = []
    real = runners_module.OnnxRuntimeRunner

    def recording(*args, **kwargs):
        runner = real(*args, **kwargs)
        made.append(runner)
        return runner

    monkeypatch.setattr(runners_module, "OnnxRuntimeRunner", recording)
    return made


def test_mixed_backends_add_the_spinning_note(art, ort_runners):
    mixed = bench_artifacts([art["ckpt"], art["onnx"]], BenchSettings(**FAST))
    assert any("spinning" in n and "ONNX Runtime" in n for n in mixed.notes), mixed.notes
    assert [r.allow_spinning for r in ort_runners] == [False], "the note says spinning is off: it must be"


def test_single_graph_keeps_onnx_runtime_defaults(art, ort_runners):
    # alone, a graph runs as a bare InferenceSession would (spinning on): what benchmarks/bench_fidelity.py checks
    report = bench_artifacts([art["onnx"]], BenchSettings(batches=(1,), **FAST))
    assert not any("spinning" in n for n in report.notes)
    assert [r.allow_spinning for r in ort_runners] == [True]
    assert [r.threads for r in ort_runners] == [None]


def test_two_graphs_interleaved_do_not_spin(art, ort_runners):
    bench_artifacts([art["onnx"], art["dynamic"]], BenchSettings(**FAST))
    assert [r.allow_spinning for r in ort_runners] == [False, False]


def test_dynamic_graph_at_several_batches_and_imgsz(art):
    report = bench_artifacts([art["dynamic"]], BenchSettings(batches=(1, 3), imgsz=(40, 48), **FAST))
    assert [c.input_shape for c in report.cases] == [(1, 3, 40, 48), (3, 3, 40, 48)]
    assert [c.ratio_to_first for c in report.cases] == [1.0, 1.0]


def test_static_graph_at_another_batch_names_the_fixed_shape(art):
    with pytest.raises(XvolError, match=r"fixed shape 1x3x32x32.*--dynamic"):
        bench_artifacts([art["onnx"]], BenchSettings(batches=(2,), **FAST))


def test_no_data_transfers_note_on_cpu(art):
    report = bench_artifacts([art["onnx"]], BenchSettings(data_transfers=False, **FAST))
    assert any("--no-data-transfers has no effect" in n for n in report.notes)
    plain = bench_artifacts([art["onnx"]], BenchSettings(**FAST))
    assert not any("--no-data-transfers" in n for n in plain.notes)


def test_labels_disambiguate_same_file_names(art, tmp_path):
    other = tmp_path / "static.onnx"
    other.write_bytes(art["onnx"].read_bytes())
    report = bench_artifacts([art["onnx"], other], BenchSettings(**FAST))
    assert [c.artifact for c in report.cases] == [str(art["onnx"]), str(other)]


def test_report_validates_against_schema(art, schema):
    report = bench_artifacts([art["ckpt"], art["dynamic"]],
                             BenchSettings(batches=(1, 2), percentiles=(50, 90, 99.9), threads=1, **FAST))
    payload = _as_cli_payload(report)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(payload, schema, cls=jsonschema.Draft202012Validator)
    assert payload["cases"][0]["latency_ms"]["p99_9"] >= payload["cases"][0]["latency_ms"]["p90"]
    # and the schema is strict enough to catch a broken report
    broken = json.loads(json.dumps(payload))
    del broken["cases"][1]["ratio_to_first"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft202012Validator)


# ------------------------------------------------------------------------------ threads


def test_threads_applied_during_run_and_restored(art, monkeypatch):
    seen = {}
    real = bench_job._time_round_robin

    def spy(runners, batch, settings):
        seen["torch_threads"] = torch.get_num_threads()
        seen["ort_threads"] = [r.session.get_session_options().intra_op_num_threads
                               for _, r, _, _ in runners if isinstance(r, OnnxRuntimeRunner)]
        return real(runners, batch, settings)

    monkeypatch.setattr(bench_job, "_time_round_robin", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        bench_artifacts([art["ckpt"], art["onnx"]], BenchSettings(threads=1, **FAST))
        assert seen == {"torch_threads": 1, "ort_threads": [1]}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_threads_restored_after_a_failed_run(art):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(XvolError, match="fixed shape"):
            bench_artifacts([art["ckpt"], art["onnx"]], BenchSettings(threads=1, batches=(2,), **FAST))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_threads_default_leaves_torch_alone(art):
    before = torch.get_num_threads()
    bench_artifacts([art["ckpt"]], BenchSettings(**FAST))
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------------------ refused settings


def test_checkpoint_on_onnxruntime_backend_refused(art):
    with pytest.raises(XvolError, match=r"torch backend, not onnxruntime.*xvol export"):
        bench_artifacts([art["ckpt"]], BenchSettings(**FAST, backend="onnxruntime"))


def test_onnx_on_torch_backend_refused(art):
    with pytest.raises(XvolError, match="an ONNX graph runs on the onnxruntime, openvino or tensorrt backend, not "
                                        "torch"):
        bench_artifacts([art["onnx"]], BenchSettings(**FAST, backend="torch"))


def test_matching_backend_accepted(art):
    report = bench_artifacts([art["onnx"]], BenchSettings(**FAST, backend="onnxruntime"))
    assert report.cases[0].backend == "onnxruntime"


def test_unknown_backend_refused(art):
    with pytest.raises(XvolError, match=r"Unknown backend 'tvm'.*onnxruntime, openvino, tensorrt, torch"):
        bench_artifacts([art["ckpt"]], BenchSettings(**FAST, backend="tvm"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_refused(art):
    with pytest.raises(XvolError, match="CUDA") as info:
        bench_artifacts([art["ckpt"]], BenchSettings(device="cuda", **FAST))
    assert "--device cpu" in str(info.value)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu", "CUDA"])
def test_unknown_device_refused(art, device):
    with pytest.raises(XvolError, match=f"Unknown device '{device}'"):
        bench_artifacts([art["ckpt"]], BenchSettings(device=device, **FAST))


def test_cuda_graph_on_cpu_refused(art):
    with pytest.raises(XvolError, match="--cuda-graph needs --device cuda"):
        bench_artifacts([art["ckpt"]], BenchSettings(cuda_graph=True, **FAST))


@pytest.mark.parametrize("batches", [(), (0,), (1, 0), (2, -1)])
def test_bad_batches_refused(art, batches):
    with pytest.raises(XvolError, match="Batch sizes must be positive"):
        bench_artifacts([art["onnx"]], BenchSettings(batches=batches, **FAST))


@pytest.mark.parametrize("change", [dict(iterations=0), dict(warmup=-1), dict(duration=-0.5)])
def test_bad_counts_refused(art, change):
    with pytest.raises(XvolError, match="--iterations >= 1"):
        bench_artifacts([art["onnx"]], BenchSettings(**{**FAST, **change}))


def test_bad_threads_refused(art):
    with pytest.raises(XvolError, match="--threads must be from 1 to"):
        bench_artifacts([art["onnx"]], BenchSettings(threads=0, **FAST))


def test_no_artifact_refused():
    with pytest.raises(XvolError, match="at least one artifact"):
        bench_artifacts([], BenchSettings(**FAST))


def test_missing_file_refused(tmp_path):
    with pytest.raises(XvolError, match="no such file"):
        bench_artifacts([tmp_path / "absent.onnx"], BenchSettings(**FAST))


def test_engine_refused_without_tensorrt(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a plan")
    with pytest.raises(XvolError, match="TensorRT is not installed"):
        bench_artifacts([engine], BenchSettings(**FAST))


# ------------------------------------------------------------------------------ the timing loop, scripted


class ScriptedRunner(Runner):
    """Returns scripted timings and logs every call, so the round-robin arithmetic can be checked exactly."""

    timed_what = "scripted"

    def __init__(self, name: str, host_ms: list[float], log: list[str], device_ms: list[float] | None = None):
        self.name = name
        self._host = itertools.cycle(host_ms)
        self._device = itertools.cycle(device_ms) if device_ms else None
        self.log = log
        self.bound = None

    def input_metadata(self):
        return {"input": InputSpec(np.dtype(np.float32), (None, 3, 8, 8))}

    def infer(self, feed):
        return {"output": np.zeros(1)}

    def bind(self, feed):
        self.bound = feed

    def timed_call(self):
        self.log.append(self.name)
        return Timing(next(self._host), next(self._device) if self._device else None)


@pytest.fixture
def scripted(monkeypatch):
    """Replace the backends' runners by ScriptedRunners: {artifact file name: (host_ms, device_ms)}."""
    log: list[str] = []
    runners: dict[str, ScriptedRunner] = {}
    script: dict[str, tuple[list[float], list[float] | None]] = {}

    def runner_for(artifact, backend, options):
        host, device = script[artifact.path.name]
        runners[artifact.path.name] = ScriptedRunner(artifact.path.name, host, log, device)
        return runners[artifact.path.name]

    monkeypatch.setattr(bench_job, "_runner_for", runner_for)
    return script, runners, log


def test_warmup_not_counted_and_calls_interleaved(art, scripted):
    script, runners, log = scripted
    script["train.pth"] = ([2.0], None)
    script["static.onnx"] = ([1.0], None)
    report = bench_artifacts([art["ckpt"], art["onnx"]], BenchSettings(warmup=3, iterations=4))
    assert log == ["train.pth", "static.onnx"] * 7  # 3 warm-up rounds + 4 timed, alternating call by call
    assert [c.host.count for c in report.cases] == [4, 4]
    assert [c.host.median for c in report.cases] == [2.0, 1.0]
    assert [c.ratio_to_first for c in report.cases] == [1.0, 0.5]
    assert [c.timed for c in report.cases] == ["scripted", "scripted"]
    assert report.warnings == []


def test_duration_counts_every_artifact(art, scripted):
    script, _, _ = scripted
    script["train.pth"] = ([10.0], None)
    script["static.onnx"] = ([40.0], None)
    report = bench_artifacts([art["ckpt"], art["onnx"]], BenchSettings(warmup=0, iterations=1, duration=0.195))
    # round-robin until every artifact has 0.195 s of timed calls: the faster one needs 20 calls of 10 ms,
    # and the slower one is called just as often
    assert [c.host.count for c in report.cases] == [20, 20]
    assert [c.host.mean * c.host.count for c in report.cases] == [pytest.approx(200.0), pytest.approx(800.0)]


def test_iterations_win_over_a_short_duration(art, scripted):
    script, _, _ = scripted
    script["static.onnx"] = ([50.0], None)
    report = bench_artifacts([art["onnx"]], BenchSettings(warmup=0, iterations=7, duration=0.01))
    assert report.cases[0].host.count == 7


def test_device_time_is_the_compared_latency(art, scripted):
    script, _, _ = scripted
    script["train.pth"] = ([5.0], [4.0])
    script["static.onnx"] = ([3.0], [1.0])
    report = bench_artifacts([art["ckpt"], art["onnx"]], BenchSettings(warmup=0, iterations=3))
    first, second = report.cases
    assert first.device.median == 4.0 and first.host.median == 5.0
    assert first.latency is first.device
    assert second.ratio_to_first == pytest.approx(0.25)  # device 1 / 4, not host 3 / 5
    out = first.to_dict()
    assert out["device_latency_ms"]["median"] == 4.0
    assert out["throughput_items_per_s"] == pytest.approx(250.0)


def test_unstable_run_warns(art, scripted):
    script, _, _ = scripted
    script["static.onnx"] = ([1.0, 1.0, 1.0, 5.0], None)
    report = bench_artifacts([art["onnx"]], BenchSettings(warmup=0, iterations=8))
    assert report.cases[0].host.unstable
    assert len(report.warnings) == 1
    assert "static.onnx at batch 1: unstable run" in report.warnings[0]
    assert report.to_dict()["cases"][0]["unstable"] is True


def test_inputs_are_seeded_and_shaped(art, scripted):
    script, runners, _ = scripted
    script["static.onnx"] = ([1.0], None)
    bench_artifacts([art["onnx"]], BenchSettings(warmup=0, iterations=1, seed=7))
    first = runners["static.onnx"].bound["input"]
    bench_artifacts([art["onnx"]], BenchSettings(warmup=0, iterations=1, seed=7))
    again = runners["static.onnx"].bound["input"]
    bench_artifacts([art["onnx"]], BenchSettings(warmup=0, iterations=1, seed=8))
    other = runners["static.onnx"].bound["input"]
    assert first.shape == (1, 3, *HW) and first.dtype == np.float32
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


# ------------------------------------------------------------------------------ ONNX on a CUDA device, faked


class _Stop(Exception):
    pass


@pytest.fixture
def fake_two_gpus(monkeypatch):
    """PyTorch reports two GPUs; the job's OnnxRuntimeRunner records how it is asked to run, then stops the run."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: types.SimpleNamespace(name=f"Fake GPU {index}", major=9, minor=0))
    requests = []

    def recording(*args, **kwargs):
        requests.append(kwargs)
        raise _Stop

    monkeypatch.setattr(runners_module, "OnnxRuntimeRunner", recording)
    return requests


def _requested_gpu(request: dict) -> int | None:
    """The GPU index an OnnxRuntimeRunner request names, in any form a fix might use."""
    if request.get("device_id") is not None:
        return int(request["device_id"])
    device = str(request.get("device", ""))
    if device.startswith("cuda:"):
        return int(device[5:])
    for provider in request.get("providers", ()):
        if isinstance(provider, tuple) and isinstance(provider[1], dict) and "device_id" in provider[1]:
            return int(provider[1]["device_id"])
    return None


def test_onnx_on_cuda_asks_for_the_cuda_provider(art, fake_two_gpus):
    with pytest.raises(_Stop):
        bench_artifacts([art["onnx"]], BenchSettings(device="cuda", **FAST))
    (request,) = fake_two_gpus
    names = [p[0] if isinstance(p, tuple) else p for p in request["providers"]]
    assert names[0] == "CUDAExecutionProvider"
    assert "CPUExecutionProvider" not in names  # no silent fallback
    assert _requested_gpu(request) in (None, 0)


def test_cuda_index_out_of_range_refused(art, fake_two_gpus):
    with pytest.raises(XvolError, match="only 2 CUDA device"):
        bench_artifacts([art["onnx"]], BenchSettings(device="cuda:2", **FAST))


def test_onnx_on_cuda_n_runs_on_gpu_n(art, fake_two_gpus):
    with pytest.raises(_Stop):
        bench_artifacts([art["onnx"]], BenchSettings(device="cuda:1", **FAST))
    (request,) = fake_two_gpus
    assert _requested_gpu(request) == 1


# ------------------------------------------------------------------------------ CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
class TestCuda:
    @pytest.fixture
    def tiny(self):
        torch.manual_seed(0)
        model = create_model("xvol_resnet_tiny", blocks_per_stage=1)
        randomize_bn(model, torch.Generator().manual_seed(5))
        return model.eval()

    @staticmethod
    def _feed():
        return {"input": np.random.default_rng(0).standard_normal((2, 3, *HW), dtype=np.float32)}

    @pytest.mark.parametrize("data_transfers", [True, False])
    def test_events_time_the_device(self, tiny, data_transfers):
        runner = TorchRunner(tiny, "tiny", device="cuda", data_transfers=data_transfers)
        runner.bind(self._feed())
        timings = [runner.timed_call() for _ in range(5)]
        assert all(t.device_ms is not None and t.device_ms > 0 for t in timings)
        assert all(t.host_ms > 0 for t in timings)
        assert "CUDA events" in runner.timed_what
        assert ("host-device copies" in runner.timed_what) == data_transfers

    def test_cuda_graph_replay_matches_eager(self, tiny):
        feed = self._feed()
        runner = TorchRunner(tiny, "tiny", device="cuda", cuda_graph=True)
        runner.bind(feed)
        timing = runner.timed_call()
        assert timing.device_ms is not None and timing.device_ms > 0
        assert "CUDA graph replay" in runner.timed_what
        replayed = runner._graph_output.detach().cpu().clone()
        with torch.inference_mode():
            eager = tiny(torch.from_numpy(feed["input"]).cuda()).cpu()
        torch.testing.assert_close(replayed, eager, rtol=1e-4, atol=1e-4)
        runner.timed_call()  # a second replay gives the same result
        torch.testing.assert_close(runner._graph_output.detach().cpu(), replayed, rtol=0, atol=0)

    def test_bench_job_on_cuda(self, art, schema):
        report = bench_artifacts([art["ckpt"]], BenchSettings(device="cuda", cuda_graph=True, **FAST))
        (case,) = report.cases
        assert case.device is not None and case.device.count >= 5
        assert case.latency is case.device
        assert "CUDA graph replay" in case.timed
        assert report.machine["gpu"]["name"]
        jsonschema.validate(_as_cli_payload(report), schema, cls=jsonschema.Draft202012Validator)

    def test_cuda_graph_refused_for_onnx(self, art):
        with pytest.raises(XvolError, match=r"static.onnx: --cuda-graph applies to the torch and tensorrt backends"):
            bench_artifacts([art["onnx"]], BenchSettings(device="cuda", cuda_graph=True, **FAST))


@pytest.mark.parametrize("dilated_conv", ["direct", "phases"])
def test_deploy_checkpoint_runs_its_dilated_convs_as_asked(tmp_path, monkeypatch, dilated_conv):
    model = create_model("xvol_resnet_tiny", blocks_per_stage=1, deploy=True, xvol_layout="split").eval()
    path = save_checkpoint(model, tmp_path / "deploy.pth")
    timed = []
    real = bench_job._time_round_robin

    def spy(runners, batch, settings):
        timed.extend(runner for _, runner, _, _ in runners)
        return real(runners, batch, settings)

    monkeypatch.setattr(bench_job, "_time_round_robin", spy)
    bench_artifacts([path], BenchSettings(dilated_conv=dilated_conv, **FAST))
    phase_convs = [m for m in timed[0].model.modules() if isinstance(m, PhaseConv2d)]
    assert len(phase_convs) == (1 if dilated_conv == "phases" else 0)
