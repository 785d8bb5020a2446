"""Rich rendering of ``xvol doctor``: the machine, its runtimes, and what works here."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text


def render_doctor(console: Console, report: dict) -> None:
    """``xvol doctor``: versions, CPU and GPU, each runtime, and a table of what works here and why not."""
    out = lambda text: console.print(text, markup=False)  # noqa: E731 - reasons hold brackets: xvol[tensorrt]
    out(f"xvol {report['xvol_version']} on Python {report['python']}, {report['platform']}")
    cpu = report["cpu"]
    capped = (f"; oneDNN capped at {cpu['onednn_cap']}: {', '.join(cpu['onednn_isa']) or 'no AVX2'}"
              if cpu.get("onednn_cap") else "")
    out(f"CPU: {cpu['name']} ({cpu['logical_cores']} logical cores); ISA {', '.join(cpu['isa']) or 'no AVX2'}{capped}")
    for line in cpu.get("meaning", []):
        out(f"  {line}")
    out("  A verdict holds for the ISA it was made on: every report names it.")
    out("packages: " + ", ".join(f"{name} {version or '(not installed)'}"
                                 for name, version in report["packages"].items()))
    gpu = report["gpu"]
    build = f"CUDA {gpu['torch_cuda']} build" if gpu["torch_cuda"] else "CPU-only build"
    driver = (f"NVIDIA driver {gpu['driver_version']}" if gpu["driver_version"]
              else f"NVIDIA driver: none found ({gpu['driver_reason']})")
    if gpu["available"]:
        out(f"GPU: PyTorch {gpu['torch']} ({build}), {driver}")
        for d in gpu["devices"]:
            out(f"  cuda:{d['index']} {d['name']}, compute capability {d['compute_capability']}, "
                f"{d['memory_gib']} GiB")
    else:
        out(f"GPU: none usable: {gpu['reason']}")
        if gpu["driver_version"]:
            out(f"  {driver}")
    ort = report["onnxruntime"]
    out(f"ONNX Runtime: {ort['version']}, providers {', '.join(ort['providers'])}" if ort["available"]
        else f"ONNX Runtime: not available ({ort['reason']})")
    ov = report["openvino"]
    out(f"OpenVINO: {ov['version']}, devices {', '.join(ov['devices'])} (CPU default inference precision "
        f"{ov['cpu_default_inference_precision']}; xvol runs fp32 graphs in f32)" if ov["available"]
        else f"OpenVINO: not available ({ov['reason']})")
    trt = report["tensorrt"]
    if trt["can_build"]:
        out(f"TensorRT: {trt['version']}, can build engines here")
    else:
        out(f"TensorRT{' ' + trt['version'] if trt['version'] else ''}: {trt['reason'].removeprefix('TensorRT ')}")
    poly = report["polygraphy"]
    out(f"Polygraphy: {poly['version']}" if poly["available"] else f"Polygraphy: not available ({poly['reason']})")
    table = Table(title="What works here")
    table.add_column("feature", no_wrap=True)
    table.add_column("works", justify="center")
    table.add_column("why not, and what to install", overflow="fold")
    for row in report["features"]:
        table.add_row(Text(row["feature"]), Text("✓", style="green") if row["works"] else Text("✗", style="red"),
                      Text(row["reason"] or ""))
    console.print(table)
    out(f"architectures: {', '.join(report['architectures'])}")
    for plugin in report["broken_plugins"]:
        out(f"family plugin that failed to load (skipped): {plugin}")
