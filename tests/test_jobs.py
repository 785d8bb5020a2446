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
from xvol_export import create_model, jobs
from xvol_export.bench import SCHEMA_PATH as BENCH_SCHEMA
from xvol_export.checkpoint import LoadOptions, save_checkpoint
from xvol_export.compare import Tolerance
from xvol_export.results import JobResult

from helpers import randomize_bn, run_cli

ARCH_CONFIG = {"stages": [2, 3], "blocks_per_stage": 1, "num_classes": 4}  # two X-volution blocks
SETTINGS = [jobs.InspectSettings, jobs.FoldSettings, jobs.VerifySettings, jobs.ExportSettings, jobs.BenchSettings,
            jobs.PipelineSettings]
RESULTS = [jobs.InspectReport, jobs.FoldResult, jobs.VerifyReport, jobs.ExportResult, jobs.BenchReport,
           jobs.PipelineResult]
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


@pytest.mark.parametrize("job", [jobs.inspect_checkpoint, jobs.fold_checkpoint, jobs.verify_artifacts,
                                 jobs.export_checkpoint, jobs.bench_artifacts, jobs.run_pipeline],
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
        assert not spelled, f"xvol {name} declares {spelled} itself: a group's options live in cli/options.py"


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
