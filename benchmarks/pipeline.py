"""Pipeline benchmark: `xvol pipeline` (fp32 + fp16 + int8) against the three `xvol export` runs it replaces.

XVol-ResNet-50 at 224x224 (BatchNorm statistics calibrated on photo crops, `_common.realistic_model`),
verified on held-out photo crops, int8 calibrated on other crops. Each way runs as a user runs it, in
a fresh process (`xvol export ... --precision P` three times, then `xvol pipeline ... --precisions
fp32,fp16,int8`), alternated `--rounds` times so that machine noise hits both alike. The pipeline
loads, folds and runs the float64 reference once, and exports and simplifies the graph once; the
separate exports do each of those three times. Prints a table and writes
benchmarks/results/pipeline.json (wall times, their paired ratio, and the pipeline's own stage times).

    python benchmarks/pipeline.py [--rounds 2] [--holdout 8] [--calib 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xvol_export.checkpoint import save_checkpoint  # noqa: E402

from _common import machine, photo_crops, realistic_model, write_json  # noqa: E402

SIZE = 224
PRECISIONS = ("fp32", "fp16", "int8")


def xvol(*args: str) -> float:
    """Run ``xvol ARGS`` in a fresh process; its wall time in seconds. A failed check (exit 1) still did all its
    work and counts (the random-weight network's int8 graph misses the int8 gate, as benchmarks/int8.py shows);
    bad input or an internal error stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "xvol_export", *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"xvol {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--holdout", type=int, default=8, help="held-out photo crops for verification")
    parser.add_argument("--calib", type=int, default=32, help="photo crops for int8 calibration")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = realistic_model("xvol_resnet50", SIZE, seed=0)
    separate, together, stages = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source, data, calib = folder / "xvol_resnet50.pth", folder / "holdout.npz", folder / "calib.npz"
        save_checkpoint(model, source)
        np.savez(data, input=photo_crops(SIZE, args.holdout, "holdout"))
        np.savez(calib, input=photo_crops(SIZE, args.calib, "calib"))
        common = ["--data", str(data), "--force"]
        for round_ in range(args.rounds):
            exports = folder / f"exports{round_}"
            exports.mkdir()
            separate.append(sum(
                xvol("export", str(source), "-o", str(exports / f"m.{p}.onnx"), "--precision", p, *common,
                     *(["--calib", str(calib)] if p == "int8" else []))
                for p in PRECISIONS))
            out = folder / f"pipeline{round_}"
            together.append(xvol("pipeline", str(source), "--out", str(out), "--precisions", ",".join(PRECISIONS),
                                 "--calib", str(calib), *common))
            stages = json.loads((out / "manifest.json").read_text())["stages_s"]
            print(f"round {round_ + 1}: three exports {separate[-1]:.1f} s, pipeline {together[-1]:.1f} s", flush=True)

    ratios = [t / s for t, s in zip(together, separate, strict=True)]
    row = {"separate_exports_s": separate, "pipeline_s": together, "ratio_pipeline_to_exports": ratios,
           "median_ratio": statistics.median(ratios), "pipeline_stages_s": stages}
    print(f"\nXVol-ResNet-50 1x3x{SIZE}x{SIZE}, fp32+fp16+int8, verified on {args.holdout} held-out photo crops, "
          f"on {machine()['cpu']} ({os.cpu_count()} cores)")
    print(f"{'':28}{'median s':>10}{'runs':>30}")
    for label, runs in (("three xvol export runs", separate), ("one xvol pipeline run", together)):
        print(f"{label:28}{statistics.median(runs):>10.1f}{str([round(x, 1) for x in runs]):>30}")
    print(f"pipeline / exports, paired per round: {', '.join(f'{r:.2f}' for r in ratios)} (median "
          f"{row['median_ratio']:.2f})")
    path = write_json("pipeline", {"machine": machine(), "model": "xvol_resnet50", "size": SIZE,
                                   "holdout": args.holdout, "calib": args.calib, "rounds": args.rounds, **row})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
