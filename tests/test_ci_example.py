"""The CI example in samples/ci/github-actions.yml, checked for real.

Validated against SchemaStore's GitHub workflow schema (json.schemastore.org/github-workflow.json), the copy
that check-jsonschema vendors, offline (``--builtin-schema vendor.github-workflows``); a broken copy must be
rejected, so the validator is known to look. The xvol command lines in it are checked against the flags each
command takes, and every sample file it names against the repository.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from importlib import resources
from pathlib import Path
from string import Template

import pytest
import typer.main
from ruamel.yaml import YAML

from xvol_cli.app import app
from xvol_export.jobs.export import default_export_output

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "samples" / "ci" / "github-actions.yml"
SCHEMA_ID = "https://json.schemastore.org/github-workflow.json"

# `xvol pipeline CKPT --out DIR [--formats ..] [--precisions ..] [--calib F] [--data F] [--bench]
#  [--require engine] [--summary F] [--config F] [--force]`: each flag, and whether it takes a value.
PIPELINE_FLAGS = {"--out": True, "--formats": True, "--precisions": True, "--calib": True, "--data": True,
                  "--bench": False, "--require": True, "--summary": True, "--config": True, "--force": False}
FORMATS = {"onnx", "openvino", "engine"}
PRECISIONS = {"fp32", "fp16", "int8"}
ACTIONS = {"actions/checkout@v4", "actions/setup-python@v5", "actions/upload-artifact@v4",
           "actions/download-artifact@v4"}


def validate(path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def workflow() -> dict:
    # YAML 1.2 (ruamel), as GitHub reads it: the key `on` stays a string (YAML 1.1 would make it True).
    return YAML(typ="safe", pure=True).load(WORKFLOW.read_text())


def commands(run: str) -> list[list[str]]:
    """The shell command lines of a `run:` script, continuations joined, comments dropped, split as the shell
    would (variables left as `$NAME`)."""
    lines = []
    for line in run.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            lines.append(words)
    return lines


def xvol_commands(workflow: dict) -> list[tuple[str, dict, list[str]]]:
    """(job id, step, argv after `xvol`) for every xvol command line, with the job's env expanded."""
    found = []
    for job_id, job in workflow["jobs"].items():
        env = {k: str(v) for k, v in (job.get("env") or {}).items()}
        for step in job["steps"]:
            for argv in commands(step.get("run", "")):
                if argv[0] == "xvol":
                    found.append((job_id, step, [Template(word).safe_substitute(env) for word in argv[1:]]))
    return found


def options(argv: list[str], takes_value: dict[str, bool]) -> tuple[list[str], dict[str, str | None]]:
    """Split argv into positional words and {flag: value}; an unknown flag fails the test."""
    positional, flags = [], {}
    words = iter(argv)
    for word in words:
        if word.startswith("-"):
            name, eq, value = word.partition("=")
            assert name in takes_value, f"{name} is not a flag of this command (known: {sorted(takes_value)})"
            if takes_value[name] and not eq:
                value = next(words, None)
                assert value is not None and not value.startswith("-"), f"{name} needs a value"
            flags[name] = value if takes_value[name] else None
        else:
            positional.append(word)
    return positional, flags


def cli_flags(command: str) -> dict[str, bool]:
    """The flags of a real `xvol COMMAND`, from the Typer app: {flag: takes a value}."""
    group = typer.main.get_command(app)
    assert command in group.commands, f"xvol has no command {command!r} (has: {sorted(group.commands)})"
    flags = {}
    for param in group.commands[command].params:
        if param.param_type_name != "option":
            continue
        for opt in [*param.opts, *param.secondary_opts]:
            flags[opt] = not param.is_flag
    return flags


# ------------------------------------------------------------------------------------- the validator


def test_validator_is_schemastores_github_workflow_schema():
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("github-workflows.json").read_text())
    assert schema["$id"] == SCHEMA_ID


def test_workflow_is_valid():
    result = validate(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation done" in result.stdout


@pytest.mark.parametrize("old, new, where", [
    ("    runs-on: ubuntu-latest\n", "    runs-onn: ubuntu-latest\n", "$.jobs.export"),   # misspelled job key
    ("\n  push:\n", "\n  pushh:\n", "$.on"),                                             # no such event
    ('run: xvol export "$ONNX"', 'runn: xvol export "$ONNX"', "$.jobs.engines"),      # misspelled step key
])
def test_broken_copy_is_rejected(tmp_path, old, new, where):
    text = WORKFLOW.read_text()
    assert text.count(old) == 1, f"the mutation {old!r} no longer applies to the workflow: update this test"
    broken = tmp_path / "github-actions.yml"
    broken.write_text(text.replace(old, new))
    result = validate(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Schema validation errors" in result.stdout and where in result.stdout, result.stdout


# ------------------------------------------------------------------------------------- its contents


def test_triggers_and_actions(workflow):
    assert set(workflow["on"]) == {"push", "pull_request"}
    used = {step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step}
    assert used == ACTIONS


def test_export_job(workflow):
    job = workflow["jobs"]["export"]
    assert job["runs-on"] == "ubuntu-latest"
    steps = job["steps"]
    python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert python["with"] == {"python-version": "3.11", "cache": "pip", "cache-dependency-path": "pyproject.toml"}

    installs = [argv for s in steps for argv in commands(s.get("run", "")) if argv[:2] == ["pip", "install"]]
    assert installs[0][2] == "torch==2.13.0", "torch first, pinned, so that pip keeps it"
    assert installs[1] == ["pip", "install", "-e", ".[openvino]"]

    index = next(i for i, s in enumerate(steps) if "xvol pipeline" in s.get("run", ""))
    pipeline = steps[index]
    # The job is gated on the pipeline's exit code: nothing may swallow it.
    assert "continue-on-error" not in pipeline and "if" not in pipeline
    assert "||" not in pipeline["run"] and "; true" not in pipeline["run"]
    after = steps[index + 1:]
    summary = next(s for s in after if "GITHUB_STEP_SUMMARY" in s.get("run", ""))
    upload = next(s for s in after if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert summary["if"] == "always()" and upload["if"] == "always()"
    assert "summary.md" in summary["run"] and ">> \"$GITHUB_STEP_SUMMARY\"" in summary["run"]


def test_pipeline_command_line(workflow):
    lines = [(job, step, argv) for job, step, argv in xvol_commands(workflow) if argv[0] == "pipeline"]
    assert len(lines) == 1
    job_id, _, argv = lines[0]
    assert job_id == "export"
    positional, flags = options(argv[1:], PIPELINE_FLAGS)
    assert len(positional) == 1, f"one checkpoint, got {positional}"
    assert (ROOT / positional[0]).is_file()
    assert set(flags["--formats"].split(",")) == {"onnx", "openvino"} <= FORMATS
    assert set(flags["--precisions"].split(",")) == PRECISIONS
    for name in ("--calib", "--data"):
        assert (ROOT / flags[name]).is_file(), f"{name} {flags[name]}: no such file in the repository"
    assert "--bench" in flags and "--require" not in flags  # no GPU on ubuntu-latest: engines are skipped there
    assert flags["--summary"] == "summary.md"

    # What the pipeline writes is what is uploaded, and what the engines job downloads.
    out = flags["--out"].rstrip("/")
    upload = next(s for s in workflow["jobs"]["export"]["steps"] if s.get("uses", "").startswith("actions/upload"))
    download = next(s for s in workflow["jobs"]["engines"]["steps"] if s.get("uses", "").startswith("actions/down"))
    assert upload["with"]["path"].rstrip("/") == out == download["with"]["path"].rstrip("/")
    assert upload["with"]["name"] == download["with"]["name"]


def test_pipeline_flags_are_the_commands_own(workflow):
    """The workflow's `xvol pipeline` flags are among the command's real ones."""
    assert "pipeline" in typer.main.get_command(app).commands
    real = cli_flags("pipeline")
    for _, _, argv in xvol_commands(workflow):
        if argv[0] == "pipeline":
            options(argv[1:], real)


def test_other_xvol_command_lines_use_real_flags(workflow):
    seen = set()
    for _, _, argv in xvol_commands(workflow):
        if argv[0] != "pipeline":
            options(argv[1:], cli_flags(argv[0]))
            seen.add(argv[0])
    assert {"export", "bench"} <= seen


def test_every_sample_path_exists():
    text = WORKFLOW.read_text()
    named = set(re.findall(r"(?<![\w./-])samples/[\w./-]*\w", text))
    assert len(named) >= 3, named
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"the workflow names files that are not in the repository: {missing}"


def test_engines_job(workflow):
    job = workflow["jobs"]["engines"]
    assert job["needs"] == "export"
    gpus = job["strategy"]["matrix"]["gpu"]
    assert len(gpus) >= 2
    assert job["runs-on"][:3] == ["self-hosted", "linux", "gpu"] and "${{ matrix.gpu }}" in job["runs-on"]

    # The fp16 graph is named as xvol names a checkpoint's fp16 export, and the engine as xvol export names
    # an engine built from a graph.
    checkpoint = next(argv[1] for _, _, argv in xvol_commands(workflow) if argv[0] == "pipeline")
    onnx, engine = Path(job["env"]["ONNX"]), Path(job["env"]["ENGINE"])
    assert onnx.name == default_export_output(checkpoint, "fp16").name
    assert engine == onnx.with_suffix(".engine")

    lines = {argv[0]: argv for _, step, argv in xvol_commands(workflow) if argv[0] in ("export", "bench")}
    assert lines["export"][1:] == [str(onnx), "--format", "engine"]
    assert lines["bench"][1:3] == ["--engine", str(engine)]
    assert lines["bench"][lines["bench"].index("--device") + 1] == "cuda"

    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "--extra-index-url https://pypi.nvidia.com" in runs and "[tensorrt]" in runs
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    paths = upload["with"]["path"].split()
    assert f"{onnx.parent}/*.engine" in paths and f"{onnx.parent}/*.engine.json" in paths
    assert "${{ matrix.gpu }}" in upload["with"]["name"]  # one artifact per GPU type, no name clash
