"""Export benchmark: `xvol export` of XVol-ResNet-50 (training form, 224x224) to a verified ONNX graph.

Times the whole command as a user runs it (a fresh process: load, fold and verify the fold,
export, check, simplify, verify in ONNX Runtime against the training form, save), with its
per-step times, for each exporter and simplifier asked for, and records the graph it wrote.

    python benchmarks/export.py [--exporters torchscript,dynamo] [--simplifiers onnxslim,onnxsim]

Prints a table and writes benchmarks/results/export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xvol_export import create_model  # noqa: E402
from xvol_export.checkpoint import save_checkpoint  # noqa: E402
from xvol_export.utils import randomize_batchnorm  # noqa: E402

from _common import machine, time_interleaved, write_json  # noqa: E402

BUDGET_S = 60.0


def run_export(source: Path, out_dir: Path, exporter: str, simplifier: str) -> dict:
    output = out_dir / f"{exporter}-{simplifier}.onnx"
    report = out_dir / f"{exporter}-{simplifier}.json"
    command = [sys.executable, "-m", "xvol_export", "export", str(source), "-o", str(output), "--seed", "0",
               "--exporter", exporter, "--opset", "17" if exporter == "torchscript" else "18",
               "--simplifier", simplifier, "--json", str(report)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"xvol export failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = json.loads(report.read_text())
    return {
        "graph": output.name,
        "exporter": exporter,
        "simplifier": simplifier,
        "wall_s": wall,
        "within_budget": wall <= BUDGET_S,
        "steps_s": result["timings_s"],
        "rel_l2_vs_training": result["verification"]["output"]["rel_l2"],
        "max_abs_vs_training": result["verification"]["output"]["max_abs"],
        "nodes": result["graph"]["nodes"],
        "conv_nodes": result["graph"]["conv_nodes"],
        "bytes": result["graph"]["bytes"],
    }


def graph_latency(folder: Path, rows: list[dict], iterations: int) -> dict[str, dict]:
    """ONNX Runtime CPU latency of each written graph (all optimizations on), measured interleaved."""
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    sessions = {r["graph"]: ort.InferenceSession(str(folder / r["graph"]), providers=["CPUExecutionProvider"])
                for r in rows}
    return time_interleaved({name: (lambda s=s: s.run(None, {"input": x})) for name, s in sessions.items()},
                            iterations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exporters", default="torchscript")
    parser.add_argument("--simplifiers", default="onnxslim,onnxsim")
    parser.add_argument("--iterations", type=int, default=20, help="ONNX Runtime timing iterations per graph")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "xvol_resnet50.pth"
        save_checkpoint(randomize_batchnorm(create_model("xvol_resnet50"), seed=0).eval(), source)
        for exporter in args.exporters.split(","):
            for simplifier in args.simplifiers.split(","):
                rows.append(run_export(source, Path(tmp), exporter, simplifier))
        latency = graph_latency(Path(tmp), rows, args.iterations)
        for row in rows:
            row["ort_median_ms"] = latency[row["graph"]]["median_ms"]

    print(f"xvol export, XVol-ResNet-50 training form 1x3x224x224 -> fp32 ONNX, on {machine()['cpu']}")
    print(f"{'exporter':12} {'simplifier':10} {'wall s':>7} {'export s':>9} {'simplify s':>11} {'rel L2':>9} "
          f"{'nodes':>6} {'ORT ms':>7}")
    for r in rows:
        print(f"{r['exporter']:12} {r['simplifier']:10} {r['wall_s']:7.1f} {r['steps_s'].get('export', 0):9.1f} "
              f"{r['steps_s'].get('simplify', 0):11.1f} {r['rel_l2_vs_training']:9.2e} {r['nodes']:6d} "
              f"{r['ort_median_ms']:7.1f}")
    path = write_json("export", {"benchmark": "export", "model": "xvol_resnet50 training form, randomized BN",
                                 "input_shape": [1, 3, 224, 224], "budget_s": BUDGET_S, "machine": machine(),
                                 "runs": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
