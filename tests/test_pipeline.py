"""`xvol pipeline` on the digits sample: every precision and format from one load, fold and reference, one manifest
that validates against its schema, a Markdown summary, and byte-identical artifacts on a second run."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from xvol_export import env
from xvol_export.errors import XvolError
from xvol_export.jobs import FoldSettings
from xvol_export.jobs.pipeline import PipelineSettings, load_config
from xvol_export.pipeline import SCHEMA_PATH

from helpers import run_cli

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SAMPLE = SAMPLES / "digits_xvol_resnet_tiny.pth"
CALIB = SAMPLES / "digits_calib.npz"


@pytest.fixture(scope="module")
def holdout(tmp_path_factory) -> Path:
    """96 of the held-out digits, with their labels: enough for accuracy, small enough for two runs."""
    with np.load(SAMPLES / "digits_holdout.npz") as data:
        path = tmp_path_factory.mktemp("data") / "holdout96.npz"
        np.savez(path, input=data["input"][:96], labels=data["labels"][:96])
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, holdout):
    """The acceptance command, run twice into two folders (the benchmark kept short through a config file)."""
    folder = tmp_path_factory.mktemp("pipeline")
    config = folder / "pipeline.toml"
    config.write_text('bench_iterations = 5\nformats = ["onnx", "openvino", "engine"]\n')
    results = []
    for name in ("first", "second"):
        out = folder / name
        args = ["pipeline", SAMPLE, "--out", out, "--precisions", "fp32,fp16,int8", "--calib", CALIB, "--data",
                holdout, "--bench", "--config", config, "--summary", folder / f"{name}.md"]
        results.append((out, args))
    return folder, results


def test_every_precision_and_format_is_made_proven_and_recorded(runs, capsys):
    folder, [(out, args), _] = runs
    pytest.importorskip("openvino", reason="needs OpenVINO (pip install 'xvol[openvino]')")
    r = run_cli(capsys, *args)
    assert r.code == 0, r.text
    manifest = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()), cls=jsonschema.Draft202012Validator)
    made = {(a["format"], a["precision"]) for a in manifest["artifacts"]}
    assert made == {(f, p) for f in ("onnx", "openvino") for p in ("fp32", "fp16", "int8")}
    for artifact in manifest["artifacts"]:
        assert (out / artifact["file"]).stat().st_size == artifact["size"]
    checks = {c["stage"]: c for c in manifest["checks"]}
    assert {"fold", "onnx fp32", "onnx fp16", "onnx int8", "openvino fp32", "openvino int8"} <= set(checks)
    for stage in ("onnx fp32", "onnx fp16", "onnx int8"):  # accuracy on the held-out digits, each graph
        assert checks[stage]["status"] == "PASSED" and checks[stage]["figures"]["accuracy"]["candidate"] >= 0.97
    assert checks["engine"]["status"] == "SKIPPED" or checks.get("engine fp32", {}).get("status") == "PASSED"
    assert len(manifest["bench"]) >= 1 and len(manifest["bench"][0]["cases"]) == 9  # 3 graphs x 2 runtimes + 3 IR
    assert {"load", "reference", "fold", "bench"} <= set(manifest["stages_s"])
    summary = (folder / "first.md").read_text()
    assert summary.startswith("## xvol pipeline: PASSED") and "| onnx int8 | PASSED |" in summary
    # each int8 artifact is laid out for its own runtime, and says so; the verdict names the machine
    layouts = {a["format"]: a["int8_layout"] for a in manifest["artifacts"] if a["precision"] == "int8"}
    assert layouts["onnx"]["target"] == "onnxruntime" and layouts["openvino"]["target"] == "openvino"
    assert layouts["openvino"]["weight_bits"] == (8 if env.has_vnni("openvino") else 7)
    assert manifest["machine"]["isa"] == env.cpu_features() and "Verdicts made on" in summary
    assert manifest["golden"]["file"] == "golden.npz" and (out / "golden.npz").is_file()
    _check_overview(manifest, out, summary)


def _check_overview(manifest: dict, out: Path, summary: str) -> None:
    """One row per artifact, as the checks and the benchmark give it, the training form first."""
    rows = manifest["formats"]
    assert rows[0]["status"] == "REFERENCE" and rows[0]["precision"] == "float64"
    checks = {c["stage"]: c["figures"] for c in manifest["checks"] if "figures" in c}
    assert rows[0]["accuracy"] == checks["onnx fp32"]["accuracy"]["reference"]
    made = [r for r in rows if r["status"] not in ("REFERENCE", "SKIPPED")]
    assert {(r["format"], r["precision"]) for r in made} == {(a["format"], a["precision"])
                                                             for a in manifest["artifacts"]}
    medians = {(c["file"], c["backend"]): c["latency_ms"]["median"] for c in manifest["bench"][0]["cases"]}
    for row in made:
        figures = checks[f"{row['format']} {row['precision']}"]
        assert row["status"] == "PASSED" and row["accuracy"] == figures["accuracy"]["candidate"]
        assert row["rel_l2"] == figures["output"]["rel_l2"]
        files = [a for a in manifest["artifacts"] if (a["format"], a["precision"]) == (row["format"], row["precision"])]
        assert row["size"] == sum(a["size"] for a in files)  # an IR's .xml and .bin
        assert row["latency_ms"]["1"] == medians[(str(out / row["file"]), row["runtime"])] > 0
    skipped = [c["stage"] for c in manifest["checks"] if c["status"] == "SKIPPED"]
    assert [r["format"] for r in rows if r["status"] == "SKIPPED"] == skipped
    header = "| format | precision | status | size (MB) | accuracy | rel L2 vs float64 | runtime | ms, batch 1 |"
    assert header in summary


def test_a_second_run_makes_byte_identical_artifacts(runs, capsys):
    folder, [(first, first_args), (second, args)] = runs
    pytest.importorskip("openvino", reason="needs OpenVINO (pip install 'xvol[openvino]')")
    if not (first / "manifest.json").exists():  # the first test ran in another worker
        assert run_cli(capsys, *first_args).code == 0
    r = run_cli(capsys, *args)
    assert r.code == 0, r.text
    before, after = (json.loads((d / "manifest.json").read_text())["artifacts"] for d in (first, second))
    assert [(a["file"], a["sha256"]) for a in before] == [(a["file"], a["sha256"]) for a in after]
    for artifact in before:
        assert (first / artifact["file"]).read_bytes() == (second / artifact["file"]).read_bytes()


def test_a_required_format_that_cannot_be_made_fails_the_run(tmp_path, capsys, holdout):
    from xvol_export.tensorrt.environment import engine_build_missing

    if engine_build_missing() is None:
        pytest.skip("TensorRT and a GPU are here")
    r = run_cli(capsys, "pipeline", SAMPLE, "--out", tmp_path / "o", "--formats", "onnx,engine", "--require",
                "engine", "--data", holdout)
    assert r.code == 1 and "engine: required (--require engine) but cannot be made here" in r.message, r.text
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["status"] == "FAILED" and [a["format"] for a in manifest["artifacts"]] == ["onnx"]


@pytest.mark.parametrize(("args", "message"), [
    (["--precisions", "int8"], "--precisions int8 needs calibration images"),
    (["--precisions", "fp64"], "--precisions: fp64; choose from fp32, fp16, int8"),
    (["--formats", "tflite"], "--formats: tflite; choose from onnx, openvino, engine"),
    (["--require", "engine"], "--require engine: not among --formats onnx"),
    (["--seed", "-1"], "--seed must be from 0"),
])
def test_bad_requests_are_refused_before_any_work(tmp_path, capsys, args, message):
    r = run_cli(capsys, "pipeline", SAMPLE, "--out", tmp_path / "o", *args)
    assert r.code == 2 and message in r.message, r.text
    assert not (tmp_path / "o").exists()


def test_benchmarking_other_batches_of_fixed_shape_graphs_is_refused_before_any_work(tmp_path, capsys):
    config = tmp_path / "p.toml"
    config.write_text("bench_batches = [1, 8]\n")
    r = run_cli(capsys, "pipeline", SAMPLE, "--out", tmp_path / "o", "--bench", "--config", config)
    assert r.code == 2 and "bench_batches 8: the graphs are exported at the fixed batch 1; pass --dynamic" in r.message
    assert not (tmp_path / "o").exists()


def test_a_dynamic_graph_is_timed_at_every_batch_asked_and_the_overview_has_a_column_each(tmp_path, capsys):
    config = tmp_path / "p.toml"
    config.write_text("bench_batches = [1, 3]\nbench_iterations = 3\n")
    r = run_cli(capsys, "pipeline", SAMPLE, "--out", tmp_path / "o", "--bench", "--dynamic", "--config", config,
                "--summary", tmp_path / "s.md")
    assert r.code == 0, r.text
    rows = json.loads((tmp_path / "o" / "manifest.json").read_text())["formats"]
    assert [(row["format"], row["status"]) for row in rows] == [("checkpoint", "REFERENCE"), ("onnx", "PASSED")]
    assert set(rows[1]["latency_ms"]) == {"1", "3"} and min(rows[1]["latency_ms"].values()) > 0
    assert "| runtime | ms, batch 1 | ms, batch 3 |" in (tmp_path / "s.md").read_text()
    assert "ms, batch 3" in r.out


def test_an_existing_manifest_is_kept_without_force(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "manifest.json").write_text("{}")
    r = run_cli(capsys, "pipeline", SAMPLE, "--out", tmp_path / "o")
    assert r.code == 2 and "already exists" in r.message and (tmp_path / "o" / "manifest.json").read_text() == "{}"


def test_config_files_are_read_and_checked(tmp_path):
    config = tmp_path / "p.toml"
    config.write_text('[pipeline]\nformats = "onnx, openvino"\nprecisions = ["fp32", "fp16"]\nbench = true\n'
                      'imgsz = [32, 32]\n')
    settings = PipelineSettings.from_sources(config, precisions=("int8",), calib="c.npz", bench=None)
    assert settings.formats == ("onnx", "openvino") and settings.precisions == ("int8",)  # the option wins
    assert settings.bench is True and settings.imgsz == (32, 32) and settings.calib == "c.npz"
    for content, message in (("speed = 1\n", "unknown field"), ("bench = 3\n", "must be true or false"),
                             ("batch = \"x\"\n", "must be an integer"), ("formats = [\n", "not a readable TOML")):
        config.write_text(content)
        with pytest.raises(XvolError, match=message):
            load_config(config)


def test_deploy_checkpoints_are_byte_identical_under_source_date_epoch(tmp_path, monkeypatch):
    from xvol_export.jobs import fold_checkpoint

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first, second = tmp_path / "a.deploy.pth", tmp_path / "other-name.deploy.pth"
    for out in (first, second):
        assert fold_checkpoint(SAMPLE, out, FoldSettings(seed=0)).written
    assert first.read_bytes() == second.read_bytes()  # neither the time nor the file's name is inside
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert fold_checkpoint(SAMPLE, tmp_path / "c.deploy.pth", FoldSettings(seed=0)).written
    assert (tmp_path / "c.deploy.pth").read_bytes() != first.read_bytes()  # now: today's time is recorded
