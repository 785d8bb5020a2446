"""Rich rendering of the library's reports. Presentation only: no decisions are made here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from xvol_export.env import cpu_isa
from xvol_export.pipeline.overview import overview_table
from xvol_export.verify import VerifyReport

if TYPE_CHECKING:
    from xvol_export.jobs import BenchReport, ExportResult, FoldResult, InspectReport


def _num(value: int | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}{unit}"
    return f"{value}{unit}"


def _err(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def render_graph(console: Console, graph: dict) -> None:
    """``xvol inspect model.onnx``."""
    console.print(f"[bold]{escape(graph['path'])}[/]  sha256 {graph['sha256'][:16]}…  opset {graph['opset']}, "
                  f"{graph['precision']} graph, {graph['nodes']} nodes")
    for kind in ("inputs", "outputs"):
        shapes = ", ".join(f"{name} {'x'.join(map(str, dims))}" for name, dims in graph[kind].items())
        console.print(f"{kind}: {escape(shapes)}")
    console.print("ops: " + escape(", ".join(f"{op} {n}" for op, n in graph["ops"].items())))
    compat = graph["tensorrt_compatibility"]
    if compat["compatible"]:
        console.print(f"TensorRT's ONNX parser ({escape(compat['checked_against'])}): takes every node")
        return
    console.print(f"TensorRT's ONNX parser ({escape(compat['checked_against'])}): [red]would refuse "
                  f"{len(compat['problems'])} node(s)[/]")
    for problem in compat["problems"][:10]:
        console.print(f"  {escape(problem)}")


def render_inspect(console: Console, report: InspectReport) -> None:
    console.print(f"[bold]{escape(report.path)}[/]  sha256 {report.sha256[:16]}…")
    console.print(
        f"architecture [bold]{escape(report.architecture)}[/] {escape(str(report.config))}  "
        f"form: {'deploy (folded)' if report.folded else 'training'}"
    )
    console.print(
        f"input {'x'.join(map(str, report.input_shape))}: {_num(report.params)} params, "
        f"{_num(report.macs, ' MACs')} per item, {report.batchnorms} BatchNorm(s)"
    )
    if report.blocks:
        table = Table(title="Re-parameterizable blocks", show_lines=False)
        for column in ("block", "family", "training form", "params", "MACs", "layout (why)", "deploy form",
                       "params", "MACs"):
            table.add_column(column)
        for b in report.blocks:
            layout = f"{b.layout} ({b.reason})" if b.layout else "-"
            table.add_row(escape(b.name or "(the model)"), escape(b.family), escape(b.ops_before),
                          _num(b.params_before), _num(b.macs_before), escape(layout), escape(b.ops_after),
                          _num(b.params_after), _num(b.macs_after))
        console.print(table)
        for family, rule in dict((b.family, b.rule) for b in report.blocks if b.rule).items():
            console.print(f"{escape(family)}: {escape(rule)}")
    if report.fused:
        pairs = Table(title="Norms folded into their neighbour")
        for column in ("kind", "layer", "norm"):
            pairs.add_column(column)
        for pair in report.fused:
            pairs.add_row(pair["kind"], escape(pair["layer"]), escape(pair["norm"]))
        console.print(pairs)
    if report.left:
        left = Table(title="Left as it is")
        for column in ("module", "why"):
            left.add_column(column)
        for entry in report.left:
            left.add_row(escape(entry["name"] or "(the model)"), escape(entry["reason"]))
        console.print(left)
    if report.params_after is not None:
        console.print(
            f"after fold: {_num(report.params_after)} params, {_num(report.macs_after, ' MACs')}, "
            f"{report.conv_bn_pairs} norm(s) folded into a conv or linear, {report.batchnorms_after} BatchNorm(s) left"
        )
    for note in report.notes:
        console.print(f"note: {escape(note)}")


def _verdict(passed: bool) -> str:
    return "[green]ok[/]" if passed else "[red]FAIL[/]"


def render_verify(console: Console, report: VerifyReport) -> None:
    reference = escape(report.reference) + (" in float64" if report.float64 else "")
    console.print(f"reference [bold]{reference}[/] vs candidate [bold]{escape(report.candidate)}[/] "
                  f"({report.precision})")
    console.print(f"inputs: {escape(report.input_source)}")
    console.print(f"judged by: {escape(report.judged_by)}")
    table = Table(title="Output error against the reference" + (" (float64)" if report.float64 else ""))
    for column in ("output", "side", "rel L2", "max err / RMS", "cosine", "top-1 agree", "max abs", "ratio", ""):
        table.add_column(column, justify="left" if column in ("output", "side") else "right")
    for check in report.checks:
        c = check.candidate
        table.add_row(escape(check.name), "candidate", _err(c.rel_l2), _err(c.max_error_rms), f"{c.cosine:.8f}",
                      _pct(c.top1_agreement), _err(c.max_abs),
                      "-" if check.ratio is None else f"{check.ratio:.3g}x", _verdict(check.passed))
        for label, b in check.baselines.items():
            table.add_row("", f"baseline: {escape(label)}", _err(b.rel_l2), _err(b.max_error_rms), f"{b.cosine:.8f}",
                          _pct(b.top1_agreement), _err(b.max_abs), "", "")
    console.print(table)
    for check in report.checks:
        for condition in check.conditions:
            console.print(f"  {_verdict(condition.passed)} {escape(condition.describe())}")
    if report.blocks:
        blocks = Table(title="Per block: alone (on the float64 block input) and in the network; "
                             "ratio to the largest baseline")
        for column in ("block", "alone rel L2", "ratio", "alone max err/RMS", "in-net rel L2", "in-net ratio", ""):
            blocks.add_column(column, justify="left" if column == "block" else "right", no_wrap=column == "block")
        for b in report.blocks:
            blocks.add_row(b.name, _err(b.isolated.candidate.rel_l2), _ratio(b.isolated.ratio),
                           _err(b.isolated.candidate.max_error_rms), _err(b.in_network.candidate.rel_l2),
                           _ratio(b.in_network.ratio), _verdict(b.isolated.passed))
        console.print(blocks)
        worst = report.worst_block
        console.print(f"largest block error: {worst.name} (rel L2 {_err(worst.isolated.candidate.rel_l2)} "
                      "on its own input)")
    if report.fold_exactness:
        worst = max(report.fold_exactness, key=lambda c: c.candidate.rel_l2)
        failed = [c for c in report.fold_exactness if not c.passed]
        console.print(f"the fold in float64 against the training form: largest rel L2 {_err(worst.candidate.rel_l2)} "
                      f"({escape(worst.name)}; needs <= {_err(worst.conditions[1].limit)}) "
                      f"{_verdict(not failed)}")
        for check in failed:
            console.print(f"  [red]{escape(check.name)}: {escape('; '.join(check.failures()))}[/]")
    if report.accuracy:
        acc = report.accuracy
        baseline = f", baseline {_pct(acc['baseline'])}" if "baseline" in acc else ""
        console.print(
            f"accuracy on {acc['count']} labelled inputs: {escape(report.reference)} {_pct(acc['reference'])}"
            f"{baseline}, {escape(report.candidate)} {_pct(acc['candidate'])}"
        )
    console.print(f"minimum required tolerance: {escape(report.output.min_required())}")
    console.print(f"verdict made on: {escape(cpu_isa())}")
    for note in report.notes:
        console.print(f"note: {escape(note)}")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}x"


def render_fold(console: Console, result: FoldResult) -> None:
    fold = result.fold
    if fold is not None:
        table = Table(title=f"Fold of {escape(result.source)} (layout {fold.layout})")
        for column in ("block", "family", "layout", "why", "params"):
            table.add_column(column)
        for b in fold.blocks:
            table.add_row(escape(b.name or "(the model)"), escape(b.family), b.layout or "-", escape(b.reason or "-"),
                          f"{_num(b.params_before)} → {_num(b.params_after)}")
        console.print(table)
        console.print(
            f"{len(fold.blocks)} block(s) folded, {len(fold.fused_conv_bn)} norm(s) fused into a conv or linear, "
            f"{len(fold.remaining_batchnorms)} BatchNorm(s) left; params {_num(fold.params_before)} → "
            f"{_num(fold.params_after)}"
        )
        for note in fold.notes:
            console.print(f"note: {escape(note)}")
    if result.verification is not None:
        render_verify(console, result.verification)
    timing = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    console.print(f"time: {timing}")
    for note in result.notes:
        console.print(f"note: {escape(note)}")
    if result.written:
        console.print(f"wrote {escape(str(result.output))}")


def render_export(console: Console, result: ExportResult) -> None:
    if result.fold is not None:
        fold = result.fold
        console.print(
            f"fold ({fold.layout}): {len(fold.blocks)} block(s) folded (layouts: "
            f"{escape(', '.join(sorted(set(fold.layouts.values()))) or 'none')}), "
            f"{len(fold.fused_conv_bn)} norm(s) fused into a conv or linear"
        )
    if result.fold_verification is not None:
        check = result.fold_verification.checks[0]
        console.print(f"fold verified against the training form in float64: rel L2 {_err(check.candidate.rel_l2)} "
                      f"({_ratio(check.ratio)} the largest fp32 baseline's), max abs {_err(check.candidate.max_abs)} "
                      f"{_verdict(result.fold_verification.passed)}")
    shape = "x".join(map(str, result.input_shape))
    precision = result.precision
    if result.graph_precision != result.precision:
        precision = f"{result.graph_precision} graph, OpenVINO inference precision {result.precision}"
    console.print(f"export: {result.format} {precision}, {result.exporter} exporter, opset {result.opset}, "
                  f"input {shape}{' (dynamic batch, height, width)' if result.dynamic else ''}, "
                  f"simplifier {result.simplifier or 'none'}")
    if result.graph:
        g = result.graph
        top = ", ".join(f"{op} {n}" for op, n in list(g["ops"].items())[:8])
        console.print(f"graph: {g['nodes']} nodes ({top}); {g['conv_nodes']} Conv for {g['conv_modules']} planned, "
                      f"{g['batchnorm_nodes']} BatchNormalization; input dims {g['input_dims']}")
        for bn in g.get("batchnorms", []):
            how = {"BatchNormalization": "kept as a BatchNormalization node", "Mul/Add": "lowered to Mul/Add",
                   "absent": "not a node of its own (a simplifier folded it)"}[bn["in_graph"]]
            console.print(f"  BatchNorm {escape(bn['name'])} left by the fold, {how}: {escape(bn['reason'])}")
    if result.verification is not None:
        render_verify(console, result.verification)
    if result.dynamic_check is not None:
        _render_check_line(console, f"other shape ({escape(result.dynamic_check.input_source)})", result.dynamic_check)
    if result.ir_verification is not None:
        _render_check_line(console, f"OpenVINO IR on OpenVINO, computed in {result.inference_precision or '?'} "
                           f"(judged as {result.ir_verification.precision})", result.ir_verification)
    if result.engine is not None:
        e = result.engine
        check = e["layer_check"]
        console.print(f"engine: TensorRT {e['tensorrt']} on {escape(e['gpu'])} (compute capability "
                      f"{e['compute_capability']}), {escape(e['plan']['graph_precision'])} graph, "
                      f"{'strongly' if e['plan']['strongly_typed'] else 'weakly'} typed, "
                      f"built in {e['build_s']:.1f} s; "
                      f"layer precisions: {check['checked']} compute layers checked {_verdict(check['passed'])}")
    if result.engine_verification is not None:
        _render_check_line(console, "TensorRT engine on TensorRT", result.engine_verification)
    compat = result.tensorrt_compatibility
    if compat is not None:
        refused = f"[red]refuses {len(compat['problems'])} node(s)[/]: {escape('; '.join(compat['problems'][:3]))}"
        console.print(f"TensorRT's ONNX parser ({escape(compat['checked_against'])}): "
                      + ("takes every node" if compat["compatible"] else refused))
    if result.int8:
        _render_int8(console, result.int8)
    for failure in result.failures:
        console.print(f"[red]{escape(failure)}[/]")
    console.print("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items()))
    for note in result.notes:
        console.print(f"note: {escape(note)}")
    if result.written:
        console.print(f"wrote {escape(', '.join(result.files))} (metadata: {escape(', '.join(result.metadata))})")


def _render_check_line(console: Console, label: str, report: VerifyReport) -> None:
    """A further check of the same export in one line (and what failed, if it did)."""
    out = report.output
    acc = report.accuracy
    accuracy = (f", accuracy {_pct(acc['candidate'])} (training form {_pct(acc['reference'])}"
                + (f", its {report.gate.baseline} baseline {_pct(acc['baseline'])}" if "baseline" in acc and report.gate
                   else "") + ")") if acc else ""
    console.print(f"{label}: rel L2 {_err(out.rel_l2)} ({_ratio(report.checks[0].ratio)} the largest baseline's), "
                  f"max abs {_err(out.max_abs)}, top-1 agreement {_pct(out.top1_agreement)}{accuracy} "
                  f"{_verdict(report.passed)}")
    if not report.passed:
        console.print(f"[red]{escape(report.failure_summary())}[/]")


def _render_int8(console: Console, int8: dict) -> None:
    console.print(f"int8 calibration: {int8['method']} on {int8['calibration_images']} images")
    if "measured_on" in int8:
        console.print(f"int8 figures against the float64 training form on {escape(int8['measured_on'])}")
    sensitivity = int8.get("sensitivity")
    if sensitivity:
        layers = {layer["name"]: layer for layer in sensitivity["layers"]}
        every = sensitivity["all_quantized"]
        table = Table(title=f"INT8 sensitivity, most sensitive first (all quantized: cosine {every['cosine']:.5f}, "
                            f"top-1 {_pct(every['top1_agreement'])})")
        for column in ("layer", "op", "alone quantized: cosine", "top-1", "alone in float: cosine", "top-1"):
            table.add_column(column, justify="left" if column in ("layer", "op") else "right")
        for name in sensitivity["ranking"][:15]:
            layer = layers[name]
            alone, kept = layer["quantized_alone"], layer["float_alone"]
            table.add_row(escape(name), layer["op_type"], f"{alone['cosine']:.5f}", _pct(alone["top1_agreement"]),
                          f"{kept['cosine']:.5f}", _pct(kept["top1_agreement"]))
        console.print(table)
        if len(layers) > 15:
            console.print(f"… and {len(layers) - 15} more layers (all in --json)")
    fallback = int8.get("fallback")
    if fallback:
        console.print(f"int8 fallback: {escape(fallback['summary'])}")
        for layer in fallback["kept_float"]:
            console.print(f"  {escape(layer['name'])}: {escape(layer['reason'])}")


def render_bench(console: Console, report: BenchReport) -> None:
    s = report.settings
    console.print(f"device {s.device}; warm-up {s.warmup}, at least {s.iterations} timed calls"
                  + (f" and {s.duration:g} s" if s.duration else "") + f" per artifact and batch, interleaved; "
                  f"threads {s.threads or 'default'}; {escape(report.machine.get('cpu', ''))}")
    pcts = [f"p{int(q) if float(q).is_integer() else q}" for q in s.percentiles]
    table = Table(title="Latency (ms per call)")
    # "prec": what ran (fp32, bf16, fp16, int8; OpenVINO's read back), short to leave the artifact its width
    for column in ("artifact", "prec", "batch", "min", "mean", "median", *pcts, "max", "std", "items/s", "vs first"):
        table.add_column(column, justify="left" if column in ("artifact", "prec") else "right")
    for case in report.cases:
        lat = case.latency
        table.add_row(escape(case.artifact), case.precision or "-", str(case.batch), f"{lat.min:.3f}",
                      f"{lat.mean:.3f}", f"{lat.median:.3f}",
                      *[f"{lat.percentiles[q]:.3f}" for q in s.percentiles], f"{lat.max:.3f}", f"{lat.stdev:.3f}",
                      f"{lat.throughput(case.batch):.1f}",
                      "-" if case.ratio_to_first is None else f"{case.ratio_to_first:.3f}x")
    _print_whole(console, table)
    for timed in sorted({c.timed for c in report.cases}):
        console.print(f"timed: {escape(timed)}")
    for case in report.cases:
        if case.device is not None:
            console.print(f"{escape(case.artifact)} batch {case.batch}: host latency median {case.host.median:.3f} ms "
                          f"(device compute {case.device.median:.3f} ms)")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    for note in report.notes:
        console.print(f"note: {escape(note)}")


def render_pipeline(console: Console, content: dict, manifest_path) -> None:
    """``xvol pipeline``: each check, each artifact, the benchmark tables, and where the manifest is."""
    checks = Table(title="checks")
    for column in ("stage", "status", "rel L2", "vs baseline", "top-1", "accuracy"):
        checks.add_column(column)
    for check in content["checks"]:
        figures = check.get("figures") or {}
        first = (figures.get("outputs") or [{}])[0]
        cand = first.get("candidate") or {}
        acc = (figures.get("accuracy") or {}).get("candidate")
        status = {"PASSED": "[green]PASSED[/]", "FAILED": "[red]FAILED[/]"}.get(check["status"], check["status"])
        if figures:
            ratio = first.get("ratio_rel_l2") if figures.get("precision") != "int8" else None  # int8: other gates
            checks.add_row(escape(check["stage"]), status, _err(cand.get("rel_l2")), _ratio(ratio),
                           _pct(cand.get("top1_agreement")), _pct(acc) if acc is not None else "")
        else:
            checks.add_row(escape(check["stage"]), status, escape(check.get("reason", "")), "", "", "")
    console.print(checks)
    files = Table(title="artifacts")
    for column in ("file", "format", "precision", "bytes", "sha256"):
        files.add_column(column)
    for a in content["artifacts"]:
        files.add_row(escape(a["file"]), a["format"], a["precision"], f"{a['size']:,}", a["sha256"][:16])
    console.print(files)
    for report in content["bench"]:
        table = Table(title="benchmark (interleaved)")
        for column in ("artifact", "backend", "batch", "prec", "median ms", "vs first"):
            table.add_column(column)
        for c in report["cases"]:
            table.add_row(escape(c["artifact"]), c["backend"], str(c["batch"]), c.get("precision") or "",
                          f"{c['latency_ms']['median']:.2f}", _ratio(c["ratio_to_first"]))
        console.print(table)
    _render_overview(console, content.get("formats") or [])
    console.print("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in content["stages_s"].items()))
    console.print(f"manifest: {escape(str(manifest_path))}")


def _render_overview(console: Console, rows: list[dict]) -> None:
    """One row per artifact: verdict, size, accuracy, error against float64, latency on its own runtime."""
    header, cells = overview_table(rows)
    table = Table(title="formats (latency: median on each artifact's own runtime)")
    for column in header:
        table.add_column(column, justify="left" if column in ("format", "precision", "status", "runtime") else "right")
    for row in cells:
        row[2] = {"PASSED": "[green]PASSED[/]", "FAILED": "[red]FAILED[/]"}.get(row[2], row[2])
        table.add_row(*(escape(c) if i != 2 else c for i, c in enumerate(row)))
    _print_whole(console, table)


def _print_whole(console: Console, table: Table) -> None:
    """A log or a pipe gets the table at its natural width, never with names cut short (a slow run's wider
    figures would squeeze them out at a fixed width); a terminal gets it at its own width."""
    if console.is_terminal:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update_width(1000)).maximum
    fixed = console.width
    console.width = max(fixed, natural)
    try:
        console.print(table)
    finally:
        console.width = fixed

