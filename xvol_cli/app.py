"""The `xvol` commands: each parses its options, calls one library function and prints the result.

The program around them (exit codes, signals, cleanup) is :mod:`xvol_cli.main`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import xvol_export
from xvol_cli import options as opt
from xvol_cli.groups import with_options
from xvol_cli.render import (
    render_bench,
    render_export,
    render_fold,
    render_graph,
    render_inspect,
    render_pipeline,
    render_verify,
)
from xvol_cli.render_doctor import render_doctor
from xvol_export import jobs  # each job is imported when its command runs: `verify --golden` needs no PyTorch
from xvol_export.errors import CheckFailed, XvolError
from xvol_export.io import write_text
from xvol_export.jsonio import write_json
from xvol_export.naming import named_as
from xvol_export.verify.gates import tolerance_basis

app = typer.Typer(
    name="xvol",
    help="Fold, verify, export and benchmark X-volution networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# Logs and pipes get a fixed, wide layout; terminals keep their own width.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)

Checkpoint = Annotated[Path, typer.Argument(help="Checkpoint (.pth, .pt or .safetensors).", show_default=False)]
ExportSource = Annotated[Path, typer.Argument(
    help="Checkpoint (.pth, .pt or .safetensors); or an .onnx graph with --format engine.", show_default=False)]


def _print_version(value: bool) -> None:
    if value:
        console.print(f"xvol {xvol_export.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks of errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print xvol's version and exit.")] = False,
):
    """xvol: structural re-parameterization with proof, for deployment."""
    ctx.with_resource(named_as(opt.SETTING_FLAGS))  # the library's messages name this command line's flags


def _finish(passed: bool, json_path: Path | None, payload: dict, force: bool, failure: str = "") -> int:
    """Write the JSON report if asked, and map the verdict to an exit code (the caller prints the verdict)."""
    if json_path is not None:
        write_json(json_path, {**payload, "status": "PASSED" if passed else "FAILED"}, force)
    if not passed:
        raise CheckFailed(failure or "the check failed")
    return 0


@app.command()
@with_options(load=opt.LOAD)
def inspect(
    checkpoint: Annotated[Path, typer.Argument(
        help="Checkpoint (.pth, .pt or .safetensors), or an .onnx graph (what it holds, and whether TensorRT "
        "would take it).", show_default=False)],
    layout: opt.Layout = "auto",
    input_shape: opt.InputShapeOpt = None,
    json_path: opt.JsonPath = None,
    force: opt.Force = False,
    load: opt.LoadRequest = opt.LoadRequest(),
):
    """Architecture, parameters, MACs, and what folding will do to every block; or an ONNX graph's contents."""
    opt.check_outputs(force, [checkpoint], json=json_path)
    settings = jobs.InspectSettings(opt.layout_option(layout), opt.shape_option(input_shape), load.options())
    with console.status("Inspecting…"):
        report = jobs.inspect_artifact(checkpoint, settings)
    if isinstance(report, jobs.GraphReport):
        render_graph(console, report.graph)
    else:
        render_inspect(console, report)
    return _finish(report.passed, json_path, {"command": "inspect", **report.to_dict()}, force,
                   report.failure_summary())


@app.command()
@with_options(inputs=opt.INPUTS, tolerance=opt.TOLERANCE, load=opt.LOAD)
def fold(
    checkpoint: Checkpoint,
    output: Annotated[str | None, typer.Option("-o", "--output", help="Deploy checkpoint to write "
                                                "(default: NAME.deploy.pth beside the input).")] = None,
    layout: opt.Layout = "auto",
    inputs: opt.InputRequest = opt.InputRequest(),
    input_shape: opt.InputShapeOpt = None,
    tolerance: opt.ToleranceRequest = opt.ToleranceRequest(),
    dtype: Annotated[str | None, typer.Option(
        "--dtype", help="Write the deploy checkpoint in fp16, bf16, fp32 or fp64 (default: the checkpoint's own); "
        "it is verified in that precision.")] = None,
    json_path: opt.JsonPath = None,
    force: opt.Force = False,
    load: opt.LoadRequest = opt.LoadRequest(),
):
    """Fold into the deploy form, verify per block and end to end, and write it (only if verified)."""
    from xvol_export.jobs.fold import default_fold_output

    opt.check_outputs(force, [checkpoint, inputs.data], output=output or default_fold_output(checkpoint),
                      json=json_path)
    settings = jobs.FoldSettings(
        layout=opt.layout_option(layout), dtype=opt.dtype_option(dtype), data=inputs.data,
        input_shape=opt.shape_option(input_shape), seed=inputs.seed, tolerance=tolerance.tolerance(),
        load=load.options(), force=force)
    with console.status("Folding and verifying…"):
        result = jobs.fold_checkpoint(checkpoint, output, settings)
    render_fold(console, result)
    return _finish(result.passed, json_path, {"command": "fold", **result.to_dict()}, force,
                   result.failure_summary())


@app.command()
@with_options(inputs=opt.INPUTS, tolerance=opt.TOLERANCE, load=opt.LOAD)
def verify(
    reference: Annotated[Path, typer.Argument(
        help="Reference artifact: checkpoint or .onnx; with --golden, the artifact to judge (.onnx, OpenVINO .xml "
        "or TensorRT engine).", show_default=False)],
    candidate: Annotated[Path | None, typer.Argument(
        help="Candidate artifact: checkpoint or .onnx (not with --golden).", show_default=False)] = None,
    golden: Annotated[Path | None, typer.Option(
        "--golden", help="Judge the one artifact given against this golden.npz (inputs, float64 outputs and gate "
        "baselines, as xvol pipeline writes it): no checkpoint, model code or PyTorch needed.")] = None,
    save_golden: Annotated[Path | None, typer.Option(
        "--save-golden", help="Also write the golden file of this check (the reference must be a checkpoint), "
        "for xvol verify --golden on the machine that will run the candidate.")] = None,
    inputs: opt.InputRequest = opt.InputRequest(),
    load_inputs: Annotated[Path | None, typer.Option(
        "--load-inputs", help="Inputs saved by --save-inputs (.npz); same as --data.")] = None,
    save_inputs: Annotated[Path | None, typer.Option(
        "--save-inputs", help="Write the inputs used to this .npz.")] = None,
    save_outputs: Annotated[Path | None, typer.Option(
        "--save-outputs", help="Write both outputs ('reference', 'candidate') to this .npz.")] = None,
    input_shape: opt.InputShapeOpt = None,
    tolerance: opt.ToleranceRequest = opt.ToleranceRequest(),
    json_path: opt.JsonPath = None,
    force: opt.Force = False,
    load: opt.LoadRequest = opt.LoadRequest(),
):
    """Run two artifacts on the same inputs and compare them (two checkpoints: per block too); or judge one
    artifact against a golden file."""
    if golden is not None:
        report = _verify_golden(reference, candidate, golden, save_golden, inputs, load_inputs, save_inputs,
                                save_outputs, input_shape, tolerance, json_path, force)
    else:
        if candidate is None:
            raise XvolError("xvol verify takes a REFERENCE and a CANDIDATE artifact, or one artifact with "
                            "--golden golden.npz.")
        opt.check_outputs(force, [reference, candidate, inputs.data, load_inputs], save_inputs=save_inputs,
                          save_outputs=save_outputs, save_golden=save_golden, json=json_path)
        if inputs.data is not None and load_inputs is not None:
            raise XvolError("Give the inputs once: --data and --load-inputs are the same option.")
        settings = jobs.VerifySettings(
            data=inputs.data or load_inputs, input_shape=opt.shape_option(input_shape), seed=inputs.seed,
            tolerance=tolerance.tolerance(), load=load.options(), save_inputs=save_inputs, save_outputs=save_outputs,
            save_golden=save_golden, force=force)
        with console.status("Running both artifacts…"):
            report = jobs.verify_artifacts(reference, candidate, settings)
    render_verify(console, report)
    return _finish(report.passed, json_path, {"command": "verify", **report.to_dict()}, force,
                   report.failure_summary())


def _verify_golden(artifact: Path, candidate: Path | None, golden: Path, save_golden: Path | None,
                   inputs: opt.InputRequest, load_inputs: Path | None, save_inputs: Path | None,
                   save_outputs: Path | None, input_shape: str | None, tolerance: opt.ToleranceRequest,
                   json_path: Path | None, force: bool):
    """``xvol verify ARTIFACT --golden golden.npz``: the options that choose inputs or a second artifact make no
    sense with it, and are refused by name."""
    given = [name for name, value in (("a CANDIDATE", candidate), ("--save-golden", save_golden),
                                      ("--data", inputs.data), ("--seed", inputs.seed),
                                      ("--load-inputs", load_inputs), ("--save-inputs", save_inputs),
                                      ("--save-outputs", save_outputs), ("--input-shape", input_shape))
             if value is not None]
    if given:
        raise XvolError(f"--golden judges one artifact on the golden file's own inputs: drop {', '.join(given)}.")
    from xvol_export.golden import verify_golden

    opt.check_outputs(force, [artifact, golden], json=json_path)
    with console.status("Running the artifact on the golden file's inputs…"):
        return verify_golden(artifact, golden, tolerance.tolerance())


@app.command()
@with_options(graph=opt.GRAPH, inputs=opt.INPUTS, tolerance=opt.TOLERANCE, int8=opt.INT8, engine=opt.ENGINE,
              load=opt.LOAD)
def export(
    checkpoint: ExportSource,
    format: Annotated[str, typer.Option("--format", help="onnx, openvino (IR: NAME.xml and NAME.bin, checked on "
                                        "OpenVINO), or engine (TensorRT).")] = "onnx",
    output: Annotated[str | None, typer.Option(  # str: a Path would drop the slash of "newdir/"
        "-o", "--output", help="File to write (default: NAME.onnx beside the input; NAME.fp16.onnx, NAME.int8.onnx; "
        "NAME.xml for openvino, NAME.bf16.xml for bf16).")] = None,
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32, fp16 or int8 (Q/DQ), in the graph; bf16 with --format openvino: an fp32 IR that "
        "records bf16 as OpenVINO's inference precision, verified so on OpenVINO against the bf16 gate.")] = "fp32",
    calib: Annotated[Path | None, typer.Option(
        "--calib", help="Calibration images for int8: .npz with an 'input' array.")] = None,
    graph: opt.GraphRequest = opt.GraphRequest(),
    layout: opt.Layout = "auto",
    inputs: opt.InputRequest = opt.InputRequest(),
    tolerance: opt.ToleranceRequest = opt.ToleranceRequest(),
    int8: opt.Int8Request = opt.Int8Request(),
    engine: opt.EngineRequest = opt.EngineRequest(),
    json_path: opt.JsonPath = None,
    force: opt.Force = False,
    load: opt.LoadRequest = opt.LoadRequest(),
):
    """Fold if needed, export, check, simplify, re-verify against the training form, write with metadata."""
    opt.check_outputs(force, [checkpoint, calib, inputs.data, engine.timing_cache], output=output, json=json_path)
    settings = jobs.ExportSettings(
        format=format, precision=precision, **graph.settings(), layout=opt.layout_option(layout), calib=calib,
        data=inputs.data, seed=inputs.seed, force=force, load=load.options(), int8=int8.options(),
        engine=engine.settings(), tolerance=tolerance.tolerance(tolerance_basis(precision)))
    with console.status("Exporting and verifying…"):
        result = jobs.export_checkpoint(checkpoint, output, settings)
    render_export(console, result)
    return _finish(result.passed, json_path, {"command": "export", **result.to_dict()}, force,
                   result.failure_summary())


@app.command()
@with_options(load=opt.LOAD)
def bench(
    artifacts: Annotated[list[Path] | None, typer.Argument(
        help="Checkpoints, .onnx graphs or TensorRT engines; several are timed interleaved.",
        show_default=False)] = None,
    backend: Annotated[str | None, typer.Option(
        "--backend", help="torch, onnxruntime, openvino or tensorrt, or several (onnxruntime,openvino: the same "
        "graph on each, interleaved); default: by file type.")] = None,
    engine: Annotated[list[Path] | None, typer.Option("--engine", help="A TensorRT engine to time.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")] = "cpu",
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, e.g. 1,8,32.")] = "1",
    imgsz: Annotated[str | None, typer.Option("--imgsz", help="Image size: 224 or 224,320.")] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls first, per artifact and batch.")] = 10,
    iterations: Annotated[int, typer.Option("--iterations", help="Timed calls, at least.")] = 100,
    duration: Annotated[float, typer.Option("--duration", help="Seconds of timed calls, at least.")] = 0.0,
    percentile: Annotated[str, typer.Option("--percentile", help="Percentiles to report, e.g. 90,95,99.")] = "90,95,99",
    threads: Annotated[int | None, typer.Option("--threads", help="Intra-op threads (default: the runtime's).")] = None,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="Capture and replay a CUDA graph (torch).")] = False,
    no_data_transfers: Annotated[bool, typer.Option(
        "--no-data-transfers", help="Keep inputs and outputs on the device (CUDA).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")] = 0,
    precision: Annotated[str | None, typer.Option(
        "--precision", help="fp32, bf16 or fp16: what OpenVINO computes in (its INFERENCE_PRECISION_HINT; default "
        "the artifact's own: f32 for fp32 graphs, or what an IR exported with --precision bf16 records). Beside "
        "openvino, the other backends are timed in their artifacts' own precision and the precision column says "
        "what each ran; on torch or onnxruntime alone, a precision other than the artifact's own is refused.")] = None,
    dilated_conv: Annotated[str, typer.Option(
        "--dilated-conv", help="direct or phases: how deploy checkpoints run split blocks' dilated convs "
        "(phases: faster in PyTorch on CPU).")] = "direct",
    json_path: opt.JsonPath = None,
    force: opt.Force = False,
    load: opt.LoadRequest = opt.LoadRequest(),
):
    """Latency and throughput statistics on the chosen backend and device."""
    opt.check_outputs(force, [*(artifacts or []), *(engine or [])], json=json_path)
    settings = jobs.BenchSettings(
        device=device, batches=opt.int_list_option(batch, "--batch"), imgsz=opt.imgsz_option(imgsz),
        warmup=warmup, iterations=iterations, duration=duration,
        percentiles=opt.float_list_option(percentile, "--percentile"), threads=threads, cuda_graph=cuda_graph,
        data_transfers=not no_data_transfers, seed=seed, dilated_conv=dilated_conv, precision=precision,
        backend=backend, load=load.options(),
    )
    with console.status("Timing…"):
        report = jobs.bench_artifacts([*(artifacts or []), *(engine or [])], settings)
    render_bench(console, report)
    return _finish(True, json_path, {"command": "bench", **report.to_dict()}, force)


@app.command()
@with_options(graph=opt.GRAPH, int8=opt.INT8, engine=opt.ENGINE, load=opt.LOAD)
def pipeline(
    checkpoint: Checkpoint,
    out: Annotated[Path, typer.Option("--out", help="Folder for the artifacts and manifest.json (created if "
                                      "missing).", show_default=False)],
    formats: Annotated[str | None, typer.Option(
        "--formats", help="onnx, openvino, engine, comma-separated (default onnx; the ONNX graph is always made: "
        "the others are made from it).")] = None,
    precisions: Annotated[str | None, typer.Option(
        "--precisions", help="fp32, fp16, int8, comma-separated (default fp32).")] = None,
    calib: Annotated[Path | None, typer.Option("--calib", help="Calibration images for int8 (.npz).")] = None,
    data: opt.Data = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of random verification inputs (default 0: "
                                             "two runs make the same artifacts).")] = None,
    bench: Annotated[bool | None, typer.Option("--bench/--no-bench", help="Time everything made, interleaved.",
                                               show_default=False)] = None,
    require: Annotated[str | None, typer.Option(
        "--require", help="Formats that must be made here (engine: fail instead of skipping without "
        "TensorRT).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A TOML file with the same fields (options given here override it).")] = None,
    summary: Annotated[Path | None, typer.Option(
        "--summary", help="Write a Markdown summary (for CI job summaries) to this file.")] = None,
    graph: opt.GraphRequest = opt.GraphRequest(),
    int8: opt.Int8Request = opt.Int8Request(),
    engine: opt.EngineRequest = opt.EngineRequest(),
    force: opt.Force = False,
    load: opt.LoadRequest = opt.LoadRequest(),
):
    """Every format and precision of a checkpoint, proven against the training form, in one folder with a manifest."""
    opt.check_outputs(force, [checkpoint, calib, data, config, engine.timing_cache], summary=summary)
    settings = jobs.PipelineSettings.from_sources(
        config, formats=opt.name_list_option(formats), precisions=opt.name_list_option(precisions),
        calib=str(calib) if calib else None, data=str(data) if data else None, seed=seed, bench=bench,
        require=opt.name_list_option(require), **graph.settings(), engine=engine.settings() if engine.given else None,
        calib_method=int8.method, int8_target=int8.target, int8_weight_bits=int8.weight_bits,
        int8_fallback=int8.fallback or None, accuracy_budget=int8.budget, load=load.options(), force=force,
    )
    if int8.sensitivity:
        raise XvolError("--int8-sensitivity is an xvol export option; the pipeline ranks layers when --int8-fallback "
                        "needs it.")
    from xvol_export.pipeline import summary_markdown

    with console.status("Running the pipeline…"):
        result = jobs.run_pipeline(checkpoint, out, settings)  # writes the manifest too
    render_pipeline(console, result.manifest_content, result.manifest)
    if summary is not None:
        write_text(summary, summary_markdown(result.manifest_content), force)
    if not result.passed:
        raise CheckFailed(result.failure_summary())
    return 0


@app.command()
def doctor(json_path: opt.JsonPath = None, force: opt.Force = False):
    """What this machine can do: versions, devices, runtimes and providers, TensorRT availability."""
    from xvol_export.doctor import machine_report

    opt.check_outputs(force, [], json=json_path)
    report = machine_report()
    render_doctor(console, report)
    return _finish(True, json_path, {"command": "doctor", **report}, force)
