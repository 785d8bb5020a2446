"""Is the folded XVol-ResNet-50 ever slower than its training form? Two variants, many paired rounds.

`deploy_speed.py` times six variants, so at batch 8 it affords few rounds and its confidence
intervals stay wide on a noisy machine. This script times only the two that the claim is about,
the training form and the folded model (layout ``auto``) in the form each runtime gets (ONNX
Runtime: the graph `xvol export` writes at that batch; PyTorch eager: ``TORCH_CPU_OPTIONS``), alternating call
by call with the order flipped every round. Per runtime and batch: the median of the per-round
ratios folded / training, its bootstrap 95 % confidence interval, and a verdict: "faster" when the
interval lies below 1, "slower" when it lies above 1, "equal within noise" otherwise.

    python benchmarks/fold_gain.py [--rounds 200] [--batches 1,8] [--name fold_gain]

Prints a table; writes benchmarks/results/NAME.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from xvol_export import create_model, fold
from xvol_export.export import onnx_graph
from xvol_export.fold import set_runtime_options
from xvol_export.fold.families.xvolution import TORCH_CPU_OPTIONS, onnx_options
from xvol_export.runners import OnnxRuntimeRunner, Runner, TorchRunner
from xvol_export.testing import randomize_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, paired_ratio, write_json  # noqa: E402


def paired_ratios(training: Runner, folded: Runner, feed: np.ndarray, warmup: int, rounds: int) -> dict:
    for runner in (training, folded):
        runner.bind({runner.input_names()[0]: feed})
        for _ in range(warmup):
            runner.timed_call()
    times = {"training": [], "folded": []}
    for index in range(rounds):
        order = (("training", training), ("folded", folded))
        for name, runner in order if index % 2 == 0 else order[::-1]:
            times[name].append(runner.timed_call().host_ms)
    ratio, (low, high) = paired_ratio(times["folded"], times["training"])
    verdict = "faster" if high < 1 else "slower" if low > 1 else "equal within noise"
    return {"rounds": rounds, "training_median_ms": statistics.median(times["training"]),
            "folded_median_ms": statistics.median(times["folded"]), "ratio": ratio,
            "ratio_ci95": [low, high], "verdict": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="rounds at batch 1 (half at larger batches)")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--name", default="fold_gain", help="results file name (without .json)")
    args = parser.parse_args()

    model = randomize_batchnorm(create_model("xvol_resnet50"), seed=0).eval()
    folded, report = fold(model, layout="auto")
    results = {}
    batches = [int(b) for b in args.batches.split(",")]
    for batch in batches:
        shape = (batch, 3, 224, 224)
        feed = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        rounds = args.rounds if batch == 1 else max(20, args.rounds // 2)
        eager = paired_ratios(TorchRunner(model, "training"),
                              TorchRunner(set_runtime_options(folded, **TORCH_CPU_OPTIONS), "folded"),
                              feed, 3, rounds)
        graphs = {name: onnx_graph.check_graph(onnx_graph.simplify(onnx_graph.export_onnx(m, shape)))
                  for name, m in (("training", model), ("folded", set_runtime_options(folded, **onnx_options(batch))))}
        ort = paired_ratios(*(OnnxRuntimeRunner(g.SerializeToString(), n, allow_spinning=False)
                              for n, g in graphs.items()), feed, 3, rounds)
        results[f"batch {batch}"] = {"pytorch eager": eager, "onnxruntime": ort}
        for runtime, r in results[f"batch {batch}"].items():
            low, high = r["ratio_ci95"]
            print(f"batch {batch}, {runtime:13}: training {r['training_median_ms']:8.1f} ms, folded "
                  f"{r['folded_median_ms']:8.1f} ms, ratio {r['ratio']:.3f} [{low:.3f}, {high:.3f}] over "
                  f"{r['rounds']} rounds: {r['verdict']}", flush=True)
    write_json(args.name, {"benchmark": "fold_gain", "machine": machine(), "torch_threads": torch.get_num_threads(),
                             "model": "xvol_resnet50 at 224x224, randomized BatchNorm (seed 0), layout auto",
                             "auto_layouts": report.layouts,
                             "onnx_options": {f"batch {b}": onnx_options(b) for b in batches},
                             "torch_options": dict(TORCH_CPU_OPTIONS), "results": results})


if __name__ == "__main__":
    main()
