"""Every job has one shape: frozen settings, a path-in/path-out function, a result with a verdict, a failure
summary, the files it wrote, its timings and notes; and the CLI declares its shared option groups once."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import jsonschema
import pytest
import torch

from xvol_cli import app as cli_app
from xvol_cli import options as opt
from xvol_cli.groups import with_options
from xvol_export import create_model, jobs
from xvol_export.bench import SCHEMA_PATH as BENCH_SCHEMA
from xvol_export.checkpoint import LoadOptions, save_checkpoint
from xvol_export.compare import Tolerance
from xvol_export.errors import XvolError
from xvol_export.results import JobResult

from helpers import randomize_bn, run_cli

ARCH_CONFIG = {"stages": [2, 3], "blocks_per_stage": 1, "num_classes": 4}  # two X-volution blocks
SETTINGS = [jobs.InspectSettings, jobs.FoldSettings, jobs.VerifySettings, jobs.ExportSettings, jobs.BenchSettings,
            jobs.PipelineSettings]
RESULTS = [jobs.InspectReport, jobs.GraphReport, jobs.FoldResult, jobs.VerifyReport, jobs.ExportResult,
           jobs.BenchReport, jobs.PipelineResult]
SHARED_KEYS = {"passed", "failure", "files", "timings_s", "notes"}


@pytest.fixture(scope="module")
def train(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("jobs")
    torch.manual_seed(0)
    model = create_model("xvol_resnet_tiny", **ARCH_CONFIG)
    randomize_bn(model, torch.Generator().manual_seed(1))
    return save_checkpoint(model.eval(), folder / "train.pth")


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.__name__)
def test_settings_are_frozen_and_every_field_has_a_default(settings):
    made = settings()  # every field has a default: a Python user sets only what they change
    field = dataclasses.fields(made)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, field.name, getattr(made, field.name))


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: r.__name__)
def test_results_share_the_job_result_shape(result):
    assert issubclass(result, JobResult)
    for name in ("files", "timings", "notes"):
        assert name in {f.name for f in dataclasses.fields(result)}


@pytest.mark.parametrize("job", [jobs.inspect_artifact, jobs.inspect_checkpoint, jobs.fold_checkpoint,
                                 jobs.verify_artifacts, jobs.export_checkpoint, jobs.bench_artifacts,
                                 jobs.run_pipeline],
                         ids=lambda j: j.__name__)
def test_path_functions_take_one_settings_object(job):
    parameters = inspect.signature(job).parameters
    assert list(parameters)[-1] == "settings"
    assert len(parameters) <= 3  # paths in (and out), then the settings: no long keyword lists


def test_fold_result_names_its_file_and_timings(train, tmp_path):
    result = jobs.fold_checkpoint(train, tmp_path / "deploy.pth", jobs.FoldSettings(seed=0))
    assert result.passed and result.failure_summary() == ""
    assert result.files == [str(tmp_path / "deploy.pth")] and Path(result.files[0]).is_file()
    assert {"load", "reference", "fold and verify", "save"} <= set(result.timings)
    assert SHARED_KEYS <= set(result.to_dict())
    json.dumps(result.to_dict())  # JSON-plain


def test_failed_fold_says_by_how_much_and_writes_nothing(train, tmp_path):
    # a zero tolerance on the elementwise error: float32 rounding alone fails it
    result = jobs.fold_checkpoint(train, tmp_path / "deploy.pth",
                                  jobs.FoldSettings(seed=0, tolerance=Tolerance(0.0, 0.0)))
    assert not result.passed and result.files == [] and not (tmp_path / "deploy.pth").exists()
    summary = result.failure_summary()
    assert "output" in summary and result.to_dict()["failure"] == summary


def test_verify_result_lists_the_files_it_saved(train, tmp_path):
    deploy = tmp_path / "deploy.pth"
    assert jobs.fold_checkpoint(train, deploy, jobs.FoldSettings(seed=0)).passed
    report = jobs.verify_artifacts(train, deploy, jobs.VerifySettings(seed=1, save_inputs=tmp_path / "in.npz"))
    assert report.passed and report.files == [str(tmp_path / "in.npz")]
    assert {"load", "reference", "verify"} <= set(report.timings)
    assert SHARED_KEYS <= set(report.to_dict())


def test_export_and_bench_results_share_the_shape(train, tmp_path):
    exported = jobs.export_checkpoint(train, tmp_path / "m.onnx", jobs.ExportSettings(seed=0))
    assert exported.passed and exported.files == [str(tmp_path / "m.onnx")]
    assert exported.to_dict()["failure"] == "" and SHARED_KEYS <= set(exported.to_dict())
    report = jobs.bench_artifacts([tmp_path / "m.onnx"], jobs.BenchSettings(warmup=0, iterations=2))
    payload = {"command": "bench", "status": "PASSED", **report.to_dict()}
    jsonschema.validate(payload, json.loads(BENCH_SCHEMA.read_text()))
    assert report.passed and report.files == []


def test_inspect_result_has_the_shape(train):
    report = jobs.inspect_checkpoint(train, jobs.InspectSettings(layout="dense"))
    assert report.passed and SHARED_KEYS <= set(report.to_dict())
    assert {b.layout for b in report.blocks} == {"dense"}


# ------------------------------------------------------------------------------------------ option groups

COMMANDS_WITH = {
    "LOAD": ["inspect", "fold", "verify", "export", "bench", "pipeline"],
    "TOLERANCE": ["fold", "verify", "export"],
    "INPUTS": ["fold", "verify", "export"],
    "GRAPH": ["export", "pipeline"],
    "INT8": ["export", "pipeline"],
    "ENGINE": ["export", "pipeline"],
}


@pytest.mark.parametrize("group", sorted(COMMANDS_WITH))
def test_each_group_is_declared_once_and_offered_by_its_commands(group):
    options = [o.name for o in getattr(opt, group).options]
    commands = {c.callback.__name__: c for c in cli_app.app.registered_commands}
    for name in COMMANDS_WITH[group]:
        offered = set(inspect.signature(commands[name].callback).parameters)
        assert set(options) <= offered, (name, set(options) - offered)
        source = inspect.getsource(commands[name].callback.__wrapped__)
        spelled = [o for o in options if f"\n    {o}:" in source]
        assert not spelled, f"xvol {name} declares {spelled} itself: a group's options live in xvol_cli/options.py"


def test_with_options_refuses_a_group_the_command_does_not_take():
    with pytest.raises(TypeError, match="has no parameter engine"):
        with_options(engine=opt.ENGINE)(lambda load: load)


def test_export_and_pipeline_pass_the_same_engine_and_graph_flags_to_their_jobs(train, capsys, tmp_path,
                                                                                  monkeypatch):
    """The ENGINE and GRAPH groups reach each job's settings: the same flags give the same values; given no engine
    flag, the pipeline builds with TensorRT's defaults at its own batch and image size."""
    from xvol_export.jobs import export as export_job
    from xvol_export.jobs import pipeline as pipeline_job
    from xvol_export.tensorrt.build import EngineSettings

    seen = {}

    def stop(name):
        def job(path, out, settings):
            seen[name] = settings
            raise XvolError("stopped before any work")
        return job

    monkeypatch.setattr(export_job, "export_checkpoint", stop("export"))
    monkeypatch.setattr(pipeline_job, "run_pipeline", stop("pipeline"))
    graph = ["--opset", "18", "--no-simplify", "--simplifier", "onnxsim", "--batch", "4", "--imgsz", "32", "--dynamic"]
    engine = ["--workspace", "2", "--opt-level", "4", "--min-shapes", "input:1x3x32x32", "--max-shapes",
              "input:4x3x32x32", "--timing-cache", tmp_path / "t.cache", "--version-compatible", "--hardware-compat",
              "ampere+", "--tf32", "--fp16-tactics"]
    assert run_cli(capsys, "export", train, "-o", tmp_path / "m.onnx", *graph, *engine).code == 2
    assert run_cli(capsys, "pipeline", train, "--out", tmp_path / "out", *graph, *engine).code == 2
    built = EngineSettings(workspace_gib=2.0, opt_level=4, min_shapes=("input:1x3x32x32",),
                           max_shapes=("input:4x3x32x32",), timing_cache=str(tmp_path / "t.cache"),
                           version_compatible=True, hardware_compat="ampere+", tf32=True, fp16_tactics=True)
    assert seen["export"].engine == built and seen["pipeline"].engine == built
    given = {"opset": 18, "simplify": False, "simplifier": "onnxsim", "batch": 4, "imgsz": (32, 32), "dynamic": True}
    for name, value in given.items():
        assert getattr(seen["export"], name) == value == getattr(seen["pipeline"], name), name
    assert seen["pipeline"].engine_settings() == dataclasses.replace(built, batch=4, imgsz=(32, 32))

    assert run_cli(capsys, "export", train, "-o", tmp_path / "m.onnx").code == 2
    assert run_cli(capsys, "pipeline", train, "--out", tmp_path / "out", "--static").code == 2
    assert seen["export"].engine == EngineSettings() and seen["pipeline"].engine is None
    assert seen["export"] == jobs.ExportSettings(load=seen["export"].load, engine=EngineSettings())  # job defaults
    assert seen["pipeline"].engine_settings() == EngineSettings() and seen["pipeline"].dynamic is False


def test_pipeline_checks_its_engine_settings_before_any_work():
    from xvol_export.tensorrt.build import EngineSettings

    with pytest.raises(XvolError, match="--workspace must be a positive number"):
        jobs.PipelineSettings(engine=EngineSettings(workspace_gib=-1.0)).check()


def test_a_group_builds_the_library_value(train, capsys, tmp_path):
    built = opt.LOAD.build(trust_pickle=False, arch="xvol_resnet_tiny", arch_config='{"num_classes": 4}', ema=False)
    assert built.options() == LoadOptions(arch="xvol_resnet_tiny", config={"num_classes": 4})
    result = run_cli(capsys, "inspect", train, "--arch-config", "{not json")
    assert result.code == 2 and "--arch-config is not valid JSON" in result.err


def test_cli_tolerance_group_reaches_the_job(train, capsys, tmp_path):
    """--atol 0 --rtol 0 through the group: the fold is judged by it, fails, and writes nothing."""
    result = run_cli(capsys, "fold", train, "-o", tmp_path / "d.pth", "--seed", "0", "--atol", "0", "--rtol", "0")
    assert result.code == 1 and not (tmp_path / "d.pth").exists()
    assert "tolerance" in result.out.lower()
