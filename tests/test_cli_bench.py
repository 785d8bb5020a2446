"""`xvol bench` run in-process: exit codes, the PASSED/FAILED last line, the table, --json validated against
the published schema, and bad input refused with exit 2, a clear message, no traceback and no file."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch

from xvol_export import create_model, env
from xvol_export.bench import SCHEMA_PATH
from xvol_export.checkpoint import save_checkpoint
from xvol_export.jobs import ExportSettings, FoldSettings, export_checkpoint, fold_checkpoint

from helpers import randomize_bn, run_cli

FAST = ("--iterations", "5", "--warmup", "1")




@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A tiny training checkpoint and its static ONNX export."""
    folder = tmp_path_factory.mktemp("cli_bench")
    torch.manual_seed(0)
    model = create_model("xvol_resnet_tiny", blocks_per_stage=1)
    randomize_bn(model, torch.Generator().manual_seed(5))
    model.eval()
    save_checkpoint(model, folder / "train.pth")
    assert export_checkpoint(folder / "train.pth", folder / "model.onnx", ExportSettings(seed=0)).written
    return folder


@pytest.fixture(scope="module")
def schema():
    return json.loads(SCHEMA_PATH.read_text())


def _table_rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("│")]


# ------------------------------------------------------------------------------ success


def test_bench_checkpoint_and_onnx(shared, tmp_path, capsys, schema):
    report_path = tmp_path / "R.json"
    r = run_cli(capsys, "bench", shared / "train.pth", shared / "model.onnx", *FAST, "--batch", "1",
                "--json", report_path)
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    assert "Traceback" not in r.text
    assert "vs first" in r.out
    for column in ("min", "mean", "median", "p90", "p95", "p99", "max", "items/s"):
        assert column in r.out
    rows = _table_rows(r.out)
    assert any("train.pth" in row and "1.000x" in row for row in rows), r.out
    assert any("model.onnx" in row for row in rows), r.out
    assert "timed: host wall time per call" in r.out
    assert "spinning" in r.out  # the note for a mixed torch + ONNX Runtime run

    payload = json.loads(report_path.read_text())
    jsonschema.validate(payload, schema, cls=jsonschema.Draft202012Validator)
    assert payload["command"] == "bench" and payload["status"] == "PASSED"
    assert [c["artifact"] for c in payload["cases"]] == ["train.pth", "model.onnx"]
    assert [c["backend"] for c in payload["cases"]] == ["torch", "onnxruntime"]
    assert all(c["latency_ms"]["count"] >= 5 for c in payload["cases"])
    assert payload["cases"][0]["ratio_to_first"] == 1.0
    assert payload["settings"]["iterations"] == 5 and payload["settings"]["warmup"] == 1
    assert payload["settings"]["batches"] == [1]


def test_percentile_columns(shared, tmp_path, capsys, schema):
    report_path = tmp_path / "R.json"
    r = run_cli(capsys, "bench", shared / "model.onnx", *FAST, "--percentile", "50,99.9", "--json", report_path)
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    header = next(line for line in r.out.splitlines() if "artifact" in line and "median" in line)
    assert "p50" in header and "p99.9" in header
    assert "p90" not in header and "p95" not in header
    payload = json.loads(report_path.read_text())
    jsonschema.validate(payload, schema, cls=jsonschema.Draft202012Validator)
    latency = payload["cases"][0]["latency_ms"]
    assert {"p50", "p99_9"} <= set(latency) and "p90" not in latency
    assert payload["settings"]["percentiles"] == [50.0, 99.9]


def test_existing_json_not_overwritten_without_force(shared, tmp_path, capsys):
    report_path = tmp_path / "R.json"
    report_path.write_text("keep")
    r = run_cli(capsys, "bench", shared / "model.onnx", *FAST, "--json", report_path)
    assert r.code == 2 and r.last_line == "FAILED"
    assert report_path.read_text() == "keep"
    r = run_cli(capsys, "bench", shared / "model.onnx", *FAST, "--json", report_path, "--force")
    assert r.code == 0, r.text
    assert json.loads(report_path.read_text())["command"] == "bench"


def test_deploy_checkpoint_with_dilated_convs_by_phases(shared, tmp_path, capsys, schema):
    deploy = tmp_path / "deploy.pth"
    assert fold_checkpoint(shared / "train.pth", deploy, FoldSettings(layout="split", seed=0)).written
    report_path = tmp_path / "R.json"
    r = run_cli(capsys, "bench", deploy, *FAST, "--dilated-conv", "phases", "--json", report_path)
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    payload = json.loads(report_path.read_text())
    jsonschema.validate(payload, schema, cls=jsonschema.Draft202012Validator)
    assert payload["settings"]["dilated_conv"] == "phases"
    assert payload["cases"][0]["latency_ms"]["count"] >= 5


# ------------------------------------------------------------------------------ bad input: exit 2, no file

BAD = {
    "missing file": (["{dir}/absent.onnx"], "no such file"),
    "unknown backend": (["{dir}/model.onnx", "--backend", "tvm"], "Unknown backend 'tvm'"),
    "backend mismatch": (["{dir}/train.pth", "--backend", "onnxruntime"], "torch backend, not onnxruntime"),
    "batch not a number": (["{dir}/model.onnx", "--batch", "1,x"], "Cannot read --batch '1,x'"),
    "batch zero": (["{dir}/model.onnx", "--batch", "0"], "Cannot read --batch '0'"),
    "percentile above 100": (["{dir}/model.onnx", "--percentile", "101"], "Cannot read --percentile '101'"),
    "percentile not a number": (["{dir}/model.onnx", "--percentile", "9O"], "Cannot read --percentile '9O'"),
    "iterations zero": (["{dir}/model.onnx", "--iterations", "0"], "--iterations >= 1"),
    "unknown device": (["{dir}/model.onnx", "--device", "tpu"], "Unknown device 'tpu'"),
    "cuda graph on cpu": (["{dir}/train.pth", "--cuda-graph"], "--cuda-graph needs --device cuda"),
    "unknown dilated conv": (["{dir}/train.pth", "--dilated-conv", "winograd"],
                             "--dilated-conv must be one of direct, phases, got 'winograd'"),
    "unknown file type": (["{dir}/notes.txt"], "unknown artifact type '.txt'"),
    "no artifact": ([], "Give at least one artifact"),
    "unknown precision": (["{dir}/model.onnx", "--precision", "int4"],
                          "Unknown --precision 'int4'. Choose one of: fp32, bf16, fp16"),
    "bf16 on onnxruntime alone": (["{dir}/model.onnx", "--backend", "onnxruntime", "--precision", "bf16"],
                                  "--precision bf16 applies to the openvino backend; onnxruntime runs the graph's own "
                                  "precision, fp32 (export --precision fp16 for an fp16 graph)"),
    "bf16 on torch": (["{dir}/train.pth", "--precision", "bf16"],
                      "--precision bf16 applies to the openvino backend; torch runs the checkpoint's own precision"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input(shared, tmp_path, capsys, case):
    args, expected = BAD[case]
    (shared / "notes.txt").write_text("not an artifact")
    report_path = tmp_path / "R.json"
    r = run_cli(capsys, "bench", *FAST, *[a.format(dir=shared) for a in args], "--json", report_path)
    assert r.code == 2, r.text
    assert r.last_line == "FAILED"
    assert expected in r.message, r.message
    assert "Traceback" not in r.text
    assert not report_path.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".trt", ".engine"])
def test_engine_says_tensorrt_missing(tmp_path, capsys, suffix):
    engine = tmp_path / f"model{suffix}"
    engine.write_bytes(b"not a plan")
    report_path = tmp_path / "R.json"
    for args in ([engine], ["--engine", engine]):
        r = run_cli(capsys, "bench", *args, *FAST, "--json", report_path)
        assert r.code == 2, r.text
        assert r.last_line == "FAILED"
        assert "TensorRT is not installed" in r.message
        assert "Traceback" not in r.text
        assert not report_path.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(shared, tmp_path, capsys):
    report_path = tmp_path / "R.json"
    r = run_cli(capsys, "bench", shared / "train.pth", "--device", "cuda", *FAST, "--json", report_path)
    assert r.code == 2, r.text
    assert r.last_line == "FAILED"
    assert "no CUDA device" in r.message and "--device cpu" in r.message
    assert "Traceback" not in r.text
    assert not report_path.exists()


def test_static_graph_at_batch_two(shared, tmp_path, capsys):
    report_path = tmp_path / "R.json"
    r = run_cli(capsys, "bench", shared / "model.onnx", "--batch", "2", *FAST, "--json", report_path)
    assert r.code == 2, r.text
    assert r.last_line == "FAILED"
    assert "fixed shape 1x3x32x32" in r.message and "--dynamic" in r.message
    assert "Traceback" not in r.text
    assert not report_path.exists()


def test_bare_bench_command(capsys):
    r = run_cli(capsys, "bench")
    assert r.code == 2, r.text
    assert r.last_line == "FAILED"
    assert "Give at least one artifact" in r.message
    assert "Traceback" not in r.text


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp64"])
def test_bench_times_checkpoints_of_any_float_dtype_in_their_own_precision(capsys, tmp_path, dtype):
    from xvol_export.checkpoint import load_model

    model, _ = load_model(Path(__file__).resolve().parent.parent / "samples" / "digits_xvol_resnet_tiny.pth")
    path = save_checkpoint(model, tmp_path / f"digits.{dtype}.pth", dtype=dtype)
    r = run_cli(capsys, "bench", path, "--iterations", "2", "--warmup", "1", "--json", tmp_path / "b.json")
    assert r.code == 0, r.text
    assert json.loads((tmp_path / "b.json").read_text())["cases"][0]["throughput_items_per_s"] > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_graph_on_onnxruntime_and_openvino_at_a_precision_in_one_table(shared, tmp_path, capsys, schema,
                                                                             precision):
    """--precision is OpenVINO's: ONNX Runtime beside it runs the graph's own fp32, and the table says what each ran."""
    pytest.importorskip("openvino", reason="needs OpenVINO (pip install 'xvol[openvino]')")
    if precision == "bf16" and not env.native_bf16():
        pytest.skip(f"no native bf16 for oneDNN here ({env.cpu_isa()}): OpenVINO computes in f32, as the fp32 case")
    report_path = tmp_path / "R.json"
    r = run_cli(capsys, "bench", shared / "model.onnx", "--backend", "onnxruntime,openvino", "--precision", precision,
                *FAST, "--batch", "1", "--json", report_path)
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    header = next(line for line in r.out.splitlines() if "artifact" in line and "median" in line)
    assert "prec" in header
    rows = _table_rows(r.out)
    assert any(row.startswith("│ model.onnx ") and "│ fp32 " in row and "1.000x" in row for row in rows), r.out
    assert any(row.startswith("│ model.onnx ") and f"│ {precision} " in row for row in rows[1:]), r.out
    payload = json.loads(report_path.read_text())
    jsonschema.validate(payload, schema, cls=jsonschema.Draft202012Validator)
    assert [(c["artifact"], c["backend"], c["precision"]) for c in payload["cases"]] == [
        ("model.onnx [onnxruntime]", "onnxruntime", "fp32"), ("model.onnx [openvino]", "openvino", precision)]
    assert payload["settings"]["precision"] == precision
    notes = " ".join(payload["notes"])
    assert f"OpenVINO computed in {precision}" in notes
    if precision != "fp32":
        assert "applies to the openvino backend only" in notes and "model.onnx [onnxruntime] in fp32" in notes


def test_a_log_gets_the_whole_table_however_wide_the_figures():
    """At a log's fixed width (120), a slow run's wide figures used to squeeze artifact names to 'model.on…':
    a log or pipe gets the table at its natural width, every name and figure whole."""
    import io

    from rich.console import Console

    from xvol_cli.render import render_bench
    from xvol_export.bench import latency_stats
    from xvol_export.jobs.bench import BenchCase, BenchReport, BenchSettings

    slow = latency_stats([12345.678, 23456.789, 34567.891, 45678.912, 56789.123])
    cases = [BenchCase("digits_xvol_resnet_tiny.pth", "torch", 1, (1, 3, 32, 32), "host", slow, ratio_to_first=1.0),
             BenchCase("model.onnx", "onnxruntime", 1, (1, 3, 32, 32), "host", slow, ratio_to_first=1.0)]
    out = io.StringIO()
    console = Console(file=out, width=120, highlight=False)
    render_bench(console, BenchReport(settings=BenchSettings(), cases=cases))
    text = out.getvalue()
    assert "digits_xvol_resnet_tiny.pth" in text and "model.onnx" in text and "56789.123" in text
    assert "…" not in text and "vs first" in text
    assert console.width == 120  # given back for what follows
