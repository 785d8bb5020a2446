"""Export benchmark: `xvol export` of XVol-ResNet-50 (training form, 224x224) to a verified ONNX graph.

The model gets seeded BatchNorm gamma/beta and running statistics calibrated on 64 photo crops
(`_common.realistic_model`; a model whose outputs hardly depend on its input is refused), and the
export verifies on 8 held-out photo crops (`--data`), not random inputs. Times the whole command
as a user runs it (a fresh process: load, run the training form in float64 and at fp32 (the
baseline), fold and verify the fold, export, check, simplify, verify in ONNX Runtime, save), with
its per-step times, for each exporter and simplifier asked for; records the graph's rel L2 error
against the float64 training form, the fp32 baseline's and their ratio, and the graph it wrote
(nodes, ONNX Runtime latency). The float64 reference runs outside the command's timed steps, so
this script also times it (and the fp32 baseline) in its own process, on the same crops.

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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xvol_export.checkpoint import save_checkpoint  # noqa: E402
from xvol_export.inputs import load_npz  # noqa: E402
from xvol_export.verify import Reference  # noqa: E402

from _common import machine, photo_crops, realistic_model, time_interleaved, write_json  # noqa: E402

BUDGET_S = 60.0
SIZE = 224
VERIFY_BATCH = 8  # held-out photo crops passed as --data


def run_export(source: Path, data: Path, out_dir: Path, exporter: str, simplifier: str) -> dict:
    output = out_dir / f"{exporter}-{simplifier}.onnx"
    report = out_dir / f"{exporter}-{simplifier}.json"
    command = [sys.executable, "-m", "xvol_export", "export", str(source), "-o", str(output), "--data", str(data),
               "--exporter", exporter, "--opset", "17" if exporter == "torchscript" else "18",
               "--simplifier", simplifier, "--json", str(report)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"xvol export failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = json.loads(report.read_text())
    verification = result["verification"]
    first = verification["outputs"][0]
    fold_first = (result.get("fold_verification") or {}).get("outputs", [{}])[0]
    steps = result["timings_s"]
    return {
        "graph": output.name,
        "exporter": exporter,
        "simplifier": simplifier,
        "simplifier_kept": result.get("simplifier"),
        "wall_s": wall,
        "within_budget": wall <= BUDGET_S,
        "steps_s": steps,
        # imports, reading --data and the float64 reference run: not in any step
        "outside_steps_s": wall - sum(steps.values()),
        "passed": verification["passed"],
        "judged_by": verification["judged_by"],
        "verify_inputs": Path(verification["inputs"]["source"]).name,  # the temporary folder's name stays out
        "rel_l2_vs_fp64": first["candidate"]["rel_l2"],
        "baseline_rel_l2_vs_fp64": first["baseline"]["rel_l2"],
        "ratio_rel_l2": first["ratio_rel_l2"],
        "max_error_rms_vs_fp64": first["candidate"]["max_error_rms"],
        "baseline_max_error_rms_vs_fp64": first["baseline"]["max_error_rms"],
        "top1_agreement": first["candidate"]["top1_agreement"],
        "fold_rel_l2_vs_fp64": (fold_first.get("candidate") or {}).get("rel_l2"),
        "fold_ratio_rel_l2": fold_first.get("ratio_rel_l2"),
        "nodes": result["graph"]["nodes"],
        "conv_nodes": result["graph"]["conv_nodes"],
        "bytes": result["graph"]["bytes"],
    }


def reference_cost(model: torch.nn.Module, data: Path) -> dict:
    """What `xvol export` spends on the reference, timed here: the training form in float64 (with every
    block's input and output recorded, as the command does) and the fp32 baseline."""
    inputs = load_npz(data)
    start = time.perf_counter()
    reference = Reference(model, inputs, "training form")
    float64 = time.perf_counter() - start
    start = time.perf_counter()
    reference.baseline("fp32")
    fp32 = time.perf_counter() - start
    return {"float64_s": float64, "fp32_baseline_s": fp32, "inputs": f"{len(inputs.inputs)} held-out photo crops",
            "blocks_recorded": len(reference.blocks)}


def graph_latency(folder: Path, rows: list[dict], x: np.ndarray, iterations: int) -> dict[str, dict]:
    """ONNX Runtime CPU latency of each written graph (all optimizations on), measured interleaved."""
    import onnxruntime as ort

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

    torch.manual_seed(0)
    model = realistic_model("xvol_resnet50", SIZE, seed=0)
    crops = photo_crops(SIZE, VERIFY_BATCH, "holdout")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "xvol_resnet50.pth"
        save_checkpoint(model, source)
        data = Path(tmp) / "holdout.npz"
        np.savez(data, input=crops)
        reference = reference_cost(model, data)
        for exporter in args.exporters.split(","):
            for simplifier in args.simplifiers.split(","):
                rows.append(run_export(source, data, Path(tmp), exporter, simplifier))
        latency = graph_latency(Path(tmp), rows, crops[:1], args.iterations)
        for row in rows:
            row["ort_median_ms"] = latency[row["graph"]]["median_ms"]
            row["ort_min_ms"] = latency[row["graph"]]["min_ms"]

    print(f"xvol export, XVol-ResNet-50 training form 1x3x{SIZE}x{SIZE} -> fp32 ONNX, on {machine()['cpu']}, "
          f"verified on {VERIFY_BATCH} held-out photo crops")
    print(f"reference, timed here: float64 run {reference['float64_s']:.1f} s, "
          f"fp32 baseline {reference['fp32_baseline_s']:.1f} s")
    step_names = list(dict.fromkeys(k for r in rows for k in r["steps_s"]))
    print(f"{'exporter':12} {'simplifier':10} {'wall s':>7} " + " ".join(f"{k[:8]:>8}" for k in step_names)
          + f" {'other':>6} {'rel L2':>9} {'baseline':>9} {'ratio':>6} {'nodes':>6} {'ORT ms':>7}")
    for r in rows:
        print(f"{r['exporter']:12} {r['simplifier']:10} {r['wall_s']:7.1f} "
              + " ".join(f"{r['steps_s'].get(k, 0):8.2f}" for k in step_names)
              + f" {r['outside_steps_s']:6.2f} {r['rel_l2_vs_fp64']:9.2e} {r['baseline_rel_l2_vs_fp64']:9.2e} "
              f"{r['ratio_rel_l2']:6.2f} {r['nodes']:6d} {r['ort_median_ms']:7.1f}")
    path = write_json("export", {
        "benchmark": "export",
        "model": "xvol_resnet50 training form, torch seed 0; BatchNorm gamma/beta seeded (seed 0) and statistics "
                 "calibrated on 64 photo crops (xvol_export.testing.realistic_batchnorm)",
        "input_shape": [1, 3, SIZE, SIZE],
        "verify_inputs": f"--data: {VERIFY_BATCH} held-out photo crops, 3x{SIZE}x{SIZE} (samples/make_photo_crops.py)",
        "errors": "rel L2 of the graph's output against the training form in float64; baseline: the fp32 training "
                  "form's; ratio: graph over baseline (verification.outputs[0] of the JSON report)",
        "outside_steps": "wall time not in any step: interpreter and imports, reading --data and the float64 "
                         "reference run (the fp32 baseline runs within the fold step's verification)",
        "latency_input": "the first held-out photo crop, batch 1",
        "budget_s": BUDGET_S,
        "machine": machine(),
        "reference_cost": reference,
        "runs": rows,
    })
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
