"""Every trained sample through ``xvol pipeline`` with the README's settings: one table per sample.

Each trained MNIST sample (``samples/mnist_*.pth``, found by glob: one network per block family and the plain
ResNet control) is run through the command the README gives, in a process of its own:

    xvol pipeline SAMPLE --out DIR --precisions fp32,fp16,int8 --formats onnx,openvino,engine \\
        --calib samples/mnist_calib.npz --data samples/mnist_holdout.npz --bench --summary DIR/summary.md

with ``bench_iterations`` from a config file (``--iterations``; the command's default is 50). The table of each
sample is the pipeline's own overview (``formats`` in its manifest): format, precision, verdict, size, accuracy
on the 500 held-out digits, relative L2 error against the float64 training form, and median latency at batch 1
on the artifact's own runtime (ONNX graphs on ONNX Runtime, IRs on OpenVINO; the benchmark times every
artifact round-robin in one process). The engine row is SKIPPED where TensorRT is not installed.

    python benchmarks/samples.py [--samples repvgg,acb,...] [--iterations 200] [--name samples]

Set ``ONEDNN_MAX_CPU_ISA=AVX2`` to see an AVX2-only CPU (``--name samples_avx2``). Prints the tables; writes
benchmarks/results/NAME.json and NAME.md; exits 1 if any pipeline did not pass.
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
from xvol_export.pipeline.manifest import overview_markdown  # noqa: E402

from _common import RESULTS, SAMPLES, machine, write_json  # noqa: E402


def run_sample(sample: Path, folder: Path, iterations: int) -> dict:
    """The README's pipeline command on ``sample``; its exit code, wall time and manifest."""
    config = folder / "bench.toml"
    config.write_text(f"bench_iterations = {iterations}\n")
    out = folder / sample.stem
    command = [sys.executable, "-m", "xvol_export", "pipeline", str(sample), "--out", str(out),
               "--precisions", "fp32,fp16,int8", "--formats", "onnx,openvino,engine",
               "--calib", str(SAMPLES / "mnist_calib.npz"), "--data", str(SAMPLES / "mnist_holdout.npz"),
               "--bench", "--config", str(config), "--summary", str(folder / f"{sample.stem}.md")]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    return {"sample": sample.name, "exit_code": done.returncode, "seconds": seconds,
            "status": manifest["status"] if manifest else "FAILED",
            "failure": (manifest or {}).get("failure") or (done.stderr.strip()[-2000:] if done.returncode else None),
            "formats": manifest["formats"] if manifest else [], "stages_s": (manifest or {}).get("stages_s")}


def markdown(results: list[dict], meta: dict) -> str:
    info = meta["machine"]
    cap = f"; oneDNN capped at {info['onednn_cap']}" if info.get("onednn_cap") else ""
    lines = [f"# Trained samples through `xvol pipeline` on {info['cpu']}", "",
             f"ISA {', '.join(info.get('isa') or [])}{cap}; {info.get('logical_cores')} cores; load average "
             f"{meta['load_average'][0]} before the run, {meta['load_average'][1]} after. The README's "
             f"pipeline command on each sample, {meta['iterations']} timed calls per artifact (round-robin); "
             "accuracy on the 500 held-out digits, rel L2 against the float64 training form, median latency at "
             "batch 1 on each artifact's own runtime.", ""]
    for result in results:
        lines += [f"## {result['sample']}: {result['status']} (exit {result['exit_code']}, "
                  f"{result['seconds']:.0f} s)", ""]
        if result["failure"]:
            lines += [f"Failed: {result['failure']}", ""]
        lines += [*overview_markdown({"formats": result["formats"]}), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", default="all", help="all, or comma-separated families (repvgg,acb,...)")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--name", default="samples", help="results file name (without suffix)")
    args = parser.parse_args()
    samples = sorted(SAMPLES.glob("mnist_*.pth"))
    if args.samples != "all":
        samples = [s for s in samples if s.stem.removeprefix("mnist_") in args.samples.split(",")]
    results = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for sample in samples:
            results.append(run_sample(sample, Path(tmp), args.iterations))
            print(f"{sample.name}: {results[-1]['status']} in {results[-1]['seconds']:.0f} s", file=sys.stderr)
    meta = {"machine": machine(), "iterations": args.iterations,
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    text = markdown(results, meta)
    print(text)
    write_json(args.name, {**meta, "results": results})
    (RESULTS / f"{args.name}.md").write_text(text)
    sys.exit(0 if all(r["status"] == "PASSED" and r["exit_code"] == 0 for r in results) else 1)


if __name__ == "__main__":
    main()
