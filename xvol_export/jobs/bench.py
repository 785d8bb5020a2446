"""`xvol bench`: latency and throughput of one or more artifacts, measured interleaved."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from torch import nn

from xvol_export.artifacts import Artifact, artifact_kind, open_artifact
from xvol_export.backends import (
    BACKENDS,
    Backend,
    RunnerOptions,
    backends_for,
    check_precision,
    cuda_index,
    get_backend,
)
from xvol_export.bench import LatencyStats, latency_stats
from xvol_export.checkpoint import LoadOptions
from xvol_export.env import machine
from xvol_export.errors import XvolError
from xvol_export.fold import set_runtime_options
from xvol_export.fold.family import families
from xvol_export.limits import check_seed
from xvol_export.results import JobResult
from xvol_export.runners import Runner
from xvol_export.tensorrt.build import EngineSettings
from xvol_export.verify.run import check_batch_fits

SCHEMA_VERSION = 1
MAX_DURATION_S = 86_400.0  # a day
MAX_CALLS = 10_000_000
MAX_THREADS_PER_CORE = 4


@dataclass(frozen=True)
class BenchSettings:
    """How to time: ``iterations`` timed calls at least, and at least ``duration`` seconds of them."""

    device: str = "cpu"
    batches: tuple[int, ...] = (1,)
    imgsz: tuple[int, int] | None = None
    warmup: int = 10
    iterations: int = 100
    duration: float = 0.0
    percentiles: tuple[float, ...] = (90, 95, 99)
    threads: int | None = None
    cuda_graph: bool = False
    data_transfers: bool = True
    seed: int = 0
    dilated_conv: str = "direct"  # how deploy checkpoints' split blocks run their dilated conv (torch)
    # fp32, bf16 or fp16: what OpenVINO computes in (None: each artifact's own); beside openvino, the other
    # backends run their artifacts' own precision; alone, they refuse a different one
    precision: str | None = None
    backend: str | None = None  # one backend, or several comma-separated (each artifact on each); None: its default
    load: LoadOptions = LoadOptions()  # how to read checkpoints


@dataclass
class BenchCase:
    artifact: str
    backend: str
    batch: int
    input_shape: tuple[int, ...]
    timed: str
    host: LatencyStats
    device: LatencyStats | None = None
    ratio_to_first: float | None = None
    transfers: dict[str, LatencyStats] = field(default_factory=dict)  # "h2d", "d2h": copies timed apart (TensorRT)
    precision: str | None = None  # what ran: fp32, fp16, bf16, int8 (OpenVINO: read back from the compiled model)
    file: str | None = None  # the artifact's path as given (``artifact`` is its label)

    @property
    def latency(self) -> LatencyStats:
        """The figure compared across artifacts: device time where measured, else host time."""
        return self.device or self.host

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "file": self.file,
            "backend": self.backend,
            "batch": self.batch,
            "precision": self.precision,
            "input_shape": list(self.input_shape),
            "timed": self.timed,
            "latency_ms": self.host.to_dict(),
            "device_latency_ms": self.device.to_dict() if self.device else None,
            "transfer_ms": {kind: stats.to_dict() for kind, stats in self.transfers.items()},
            "throughput_items_per_s": self.latency.throughput(self.batch),
            "ratio_to_first": self.ratio_to_first,
            "unstable": self.latency.unstable,
        }


@dataclass
class BenchReport(JobResult):
    """Every case measured (artifact, backend, batch), on which machine; benchmarks have no verdict of their own."""

    settings: BenchSettings
    cases: list[BenchCase] = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        s = self.settings
        return {
            **self.job_fields(),
            "schema_version": SCHEMA_VERSION,
            "settings": {
                "device": s.device, "batches": list(s.batches), "imgsz": list(s.imgsz) if s.imgsz else None,
                "warmup": s.warmup, "iterations": s.iterations, "duration_s": s.duration,
                "percentiles": list(s.percentiles), "threads": s.threads, "cuda_graph": s.cuda_graph,
                "data_transfers": s.data_transfers, "seed": s.seed, "dilated_conv": s.dilated_conv,
                "precision": s.precision,
            },
            "machine": self.machine,
            "cases": [c.to_dict() for c in self.cases],
            "warnings": self.warnings,
            "notes": self.notes,
        }


def bench_artifacts(paths: list[str | os.PathLike], settings: BenchSettings = BenchSettings()) -> BenchReport:
    """Time every artifact at every batch size; artifacts of one batch run round-robin, call by call."""
    if not paths:
        raise XvolError("Give at least one artifact to benchmark.")
    _check_settings(settings)
    _check_device(settings.device)
    plan = _plan(paths, settings.backend)  # (path, backend) pairs, every one checked before anything is loaded
    report = BenchReport(settings, machine=_machine(settings.device))
    # Spinning idle threads of one runtime steal the cores from whatever runs in between (measured:
    # PyTorch 10x slower beside ONNX Runtime, and two ONNX graphs 1.6x slower beside each other).
    shared = len(plan) > 1
    options = RunnerOptions(device=settings.device, threads=settings.threads, allow_spinning=not shared,
                            cuda_graph=settings.cuda_graph, data_transfers=settings.data_transfers,
                            precision=settings.precision,
                            # an .onnx on tensorrt: the engine built for it takes every batch of this run
                            engine=EngineSettings(batch=max(settings.batches), imgsz=settings.imgsz))
    artifacts = [(open_artifact(p, settings.load, _label(p, b, plan), b.name, _options_for(b, plan, options)), b)
                 for p, b in plan]
    if shared and any(b.name == "onnxruntime" for _, b in artifacts):
        report.notes.append("several artifacts share this process: ONNX Runtime's idle threads sleep instead of "
                            "spinning, which would steal the cores from the calls in between")
    for artifact, chosen in artifacts:
        if settings.cuda_graph and chosen.name not in ("torch", "tensorrt"):
            raise XvolError(f"{artifact.path}: --cuda-graph applies to the torch and tensorrt backends only.")
        if artifact.model is not None:  # our own copy: split blocks run their dilated conv as asked
            artifact.model = artifact.runner.model = set_runtime_options(
                artifact.model, dilated_conv=settings.dilated_conv, inplace=True)
    with _torch_threads(settings.threads):
        for batch in settings.batches:
            runners = []
            for artifact, chosen in artifacts:
                runner = _runner_for(artifact, chosen, _options_for(chosen, plan, options))
                shape = _input_shape(artifact, batch, settings.imgsz)
                _check_batch_fits(artifact, shape)
                feed = np.random.default_rng(settings.seed).standard_normal(shape, dtype=np.float32)
                runner.bind({runner.input_names()[0]: feed})
                runners.append((artifact, runner, chosen.name, shape))
            report.cases += _time_round_robin(runners, batch, settings)
    for case in report.cases:
        if case.latency.unstable:
            report.warnings.append(
                f"{case.artifact} at batch {case.batch}: unstable run (coefficient of variation "
                f"{100 * case.latency.cv:.1f} %); close other programs or raise --iterations/--duration"
            )
    report.notes += _precision_notes(report, artifacts, settings.precision)
    for artifact, _ in artifacts:  # TensorRT: an engine without its sidecar, or built on another GPU model
        report.warnings += list(getattr(artifact.runner, "warnings", ()))
    if not settings.data_transfers and settings.device == "cpu":
        report.notes.append("--no-data-transfers has no effect on the CPU: there are no transfers")
    return report


def _time_round_robin(runners: list[tuple[Artifact, Runner, str, tuple]], batch: int,
                      settings: BenchSettings) -> list[BenchCase]:
    for _ in range(settings.warmup):
        for _, runner, _, _ in runners:
            runner.timed_call()
    host: list[list[float]] = [[] for _ in runners]
    device: list[list[float]] = [[] for _ in runners]
    transfers: list[dict[str, list[float]]] = [{"h2d": [], "d2h": []} for _ in runners]
    elapsed = [0.0] * len(runners)
    while min(len(h) for h in host) < settings.iterations or min(elapsed) < settings.duration:
        for index, (_, runner, _, _) in enumerate(runners):
            timing = runner.timed_call()
            host[index].append(timing.host_ms)
            elapsed[index] += timing.host_ms / 1e3
            if timing.device_ms is not None:
                device[index].append(timing.device_ms)
            for kind, ms in (("h2d", timing.h2d_ms), ("d2h", timing.d2h_ms)):
                if ms is not None:
                    transfers[index][kind].append(ms)
    cases = []
    for index, (artifact, runner, backend, shape) in enumerate(runners):
        cases.append(BenchCase(
            artifact=artifact.runner.name,
            backend=backend,
            batch=batch,
            input_shape=shape,
            timed=runner.timed_what,
            host=latency_stats(host[index], settings.percentiles),
            device=latency_stats(device[index], settings.percentiles) if device[index] else None,
            transfers={kind: latency_stats(ms, settings.percentiles) for kind, ms in transfers[index].items() if ms},
            precision=_ran_precision(runner),
            file=str(artifact.path),
        ))
    first = cases[0].latency.median
    for case in cases:
        case.ratio_to_first = case.latency.median / first if first > 0 else None
    return cases


def _options_for(backend: Backend, plan, options: RunnerOptions) -> RunnerOptions:
    """--precision is OpenVINO's to apply: beside an openvino run, the other backends run their own precision
    (the table says which each ran); without one, they get it and refuse any but their artifact's own."""
    if backend.name != "openvino" and any(b.name == "openvino" for _, b in plan):
        return replace(options, precision=None)
    return options


def _ran_precision(runner: Runner) -> str:
    """What a runner computes in: a PyTorch model's dtype, a graph runner's own report (OpenVINO: read back)."""
    from xvol_export.verify import candidate_precision

    model = getattr(runner, "model", None)
    return candidate_precision(model if isinstance(model, nn.Module) else runner)


def _precision_notes(report: BenchReport, artifacts, precision: str | None) -> list[str]:
    """What each OpenVINO run computed in (a warning where the processor changed what was asked), and to whom
    --precision applied."""
    notes, cases = [], report.cases
    for artifact, _ in artifacts:
        runner = artifact.runner
        if callable(getattr(runner, "precision_note", None)):
            changed = runner.compiled_precision not in (None, runner.inference_precision)
            (report.warnings if changed else notes).append(f"{runner.name}: {runner.precision_note()}")
    others = {c.artifact: c.precision for c in cases if c.backend != "openvino"}
    if precision is not None and others and any(c.backend == "openvino" for c in cases):
        ran = ", ".join(f"{name} in {ran}" for name, ran in others.items())
        notes.append(f"--precision {precision} applies to the openvino backend only; the other backends ran their "
                     f"artifacts' own precision ({ran}; the prec column says what each ran)")
    return notes


def _runner_for(artifact: Artifact, backend: Backend, options: RunnerOptions) -> Runner:
    """The runner that times ``artifact``: the one the backend made when it was opened (a seam for tests)."""
    return artifact.runner


def _input_shape(artifact: Artifact, batch: int, imgsz: tuple[int, int] | None) -> tuple[int, ...]:
    size = artifact.input_size
    if not size:
        raise XvolError(f"{artifact.path}: its input size is unknown; pass --imgsz.")
    height, width = imgsz or size[1:]
    return (batch, size[0], height, width)


def _check_batch_fits(artifact: Artifact, shape: tuple[int, ...]) -> None:
    """Refuse a batch whose inputs and activations cannot fit, before its inputs are made (activations: from the
    model's size rule for checkpoints, from the graph's value shapes for a static ONNX graph)."""
    model = artifact.model
    itemsize = next((p.element_size() for p in model.parameters() if p.is_floating_point()), 4) if model else 4
    per_input = _onnx_activation_bytes(artifact.path, shape) if artifact.kind == "onnx" else None
    check_batch_fits(model, shape, f"{artifact.path} at batch {shape[0]} ({'x'.join(map(str, shape))})",
                     "Bench a smaller --batch or --imgsz.", itemsize=itemsize, per_input_activation_bytes=per_input)


def _onnx_activation_bytes(path: Path, shape: tuple[int, ...]) -> float | None:
    """Float64 bytes of one input's activations in a graph with static value shapes: four times its largest
    intermediate tensor, per batch item. None when the graph's shapes are symbolic or unknown."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - the runner has already read it; nothing to estimate from
        return None
    largest = 0.0
    for info in graph.value_info:
        dims = info.type.tensor_type.shape.dim
        if not dims or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            continue
        values = math.prod(float(d.dim_value) for d in dims[1:])
        largest = max(largest, values)
    return 8 * 4 * largest if largest else None


def _check_settings(s: BenchSettings) -> None:
    if not s.batches or min(s.batches) < 1:
        raise XvolError(f"Batch sizes must be positive integers, got {list(s.batches)}.")
    check_seed(s.seed)
    if s.warmup < 0 or s.iterations < 1 or s.duration < 0:
        raise XvolError("--warmup must be >= 0, --iterations >= 1 and --duration >= 0.")
    # Bounds that keep a typo from running for days or starting a thread per core of a data centre.
    if not math.isfinite(s.duration) or s.duration > MAX_DURATION_S:
        raise XvolError(f"--duration must be a number of seconds from 0 to {MAX_DURATION_S:g}, got {s.duration}.")
    for option, value, most in (("--iterations", s.iterations, MAX_CALLS), ("--warmup", s.warmup, MAX_CALLS)):
        if value > most:
            raise XvolError(f"{option} must be at most {most:,}, got {value:,}; use --duration for long runs.")
    cores = os.cpu_count() or 1
    if s.threads is not None and not 1 <= s.threads <= MAX_THREADS_PER_CORE * cores:
        raise XvolError(f"--threads must be from 1 to {MAX_THREADS_PER_CORE * cores} ({MAX_THREADS_PER_CORE} per "
                        f"logical core; this machine has {cores}), got {s.threads}.")
    if s.cuda_graph and not s.device.startswith("cuda"):
        raise XvolError("--cuda-graph needs --device cuda: CUDA graphs exist only on NVIDIA GPUs.")
    check_precision(s.precision)
    choices = [c for f in families() for c in f.runtime_choices.get("dilated_conv", ())]  # a family's runtime option
    if s.dilated_conv not in choices:
        raise XvolError(f"--dilated-conv must be one of {', '.join(choices)}, got '{s.dilated_conv}'.")


def _check_device(device: str) -> None:
    if device == "cpu":
        return
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise XvolError(f"Unknown device '{device}'. Use cpu, cuda or cuda:N.")
    import torch

    if not torch.cuda.is_available():
        raise XvolError(f"--device {device}: this machine has no CUDA device PyTorch can use (torch "
                        f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). Use --device cpu, or run "
                        "on a machine with an NVIDIA GPU and a CUDA build of PyTorch.")
    index = cuda_index(device)
    if index >= torch.cuda.device_count():
        raise XvolError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here.")


def _plan(paths: list[str | os.PathLike], backend: str | None) -> list[tuple[str | os.PathLike, Backend]]:
    """Each artifact on each named backend that opens it (``onnxruntime,openvino``), or on its kind's default."""
    names = tuple(n.strip() for n in backend.split(",") if n.strip()) if backend else None
    if backend is not None and not names:
        raise XvolError(f"--backend '{backend}' names no backend. Choose from: {', '.join(sorted(BACKENDS))}.")
    plan = []
    for path in paths:
        kind = artifact_kind(path)
        opening = [n for n in names if kind in get_backend(n).kinds] if names else None
        plan += [(path, b) for b in backends_for(path, kind, tuple(opening) if opening else names)]
    return plan


def _label(path, backend: Backend, plan) -> str:
    """The file name (the path if two files share it), with the backend when one file runs on several."""
    same_name = {str(p) for p, _ in plan if Path(p).name == Path(path).name}
    label = Path(path).name if len(same_name) == 1 else str(path)
    several = sum(str(p) == str(path) for p, _ in plan) > 1
    return f"{label} [{backend.name}]" if several else label


def _machine(device: str) -> dict:
    info = machine()
    if device.startswith("cuda"):
        import torch

        props = torch.cuda.get_device_properties(cuda_index(device))
        info["gpu"] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}"}
    return info



@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """PyTorch's thread count is process-wide: set it for the run and put it back."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


