"""Deploy speed: XVol-ResNet-50 and one stage-3 X-volution block, training form vs folded, on CPU runtimes.

For XVol-ResNet-50 (randomized BatchNorm) at 224x224, batch 1 and 8: the training form, the
folded model in the dense, split and auto layouts, and the plain ResNet-50 (BatchNorm folded),
on PyTorch eager and on ONNX Runtime with every graph optimization on (so that the runtime's own
Conv+BatchNorm fusion is the bar the fold must clear). The same for one stage-3 block (256
channels, 14x14) against a plain 3x3 conv + BN. Folded models run with each runtime's fastest
deploy-block options: on ONNX Runtime the form `xvol export` writes at that batch
(``onnx_options(batch)``: the aggregate's shifts as one-hot convs at batch 1, slices at batch 8),
in PyTorch eager ``TORCH_CPU_OPTIONS`` (dilated convs by phase images); the row "folded split,
default options" shows split without them. Every ONNX graph goes through the same export and
onnxslim pass as `xvol export`.

Variants of one table are timed round-robin, one call each per round, so each round's calls saw
the same machine state: the ratio to the training form is the median of the per-round ratios,
with a bootstrap 95 % confidence interval. A variant is "slower" only when its interval lies
above 1.

    python benchmarks/deploy_speed.py [--iterations 20] [--quick]

Prints ratio tables; writes benchmarks/results/deploy_speed.json and deploy_speed.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xvol_export import XVolution, create_model, fold
from xvol_export.export import onnx_graph
from xvol_export.fold import fold_xvolution, set_runtime_options
from xvol_export.fold.families.xvolution import TORCH_CPU_OPTIONS, onnx_options
from xvol_export.runners import OnnxRuntimeRunner, TorchRunner
from xvol_export.testing import randomize_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, time_runners, write_json  # noqa: E402


def onnx_runner(model: nn.Module, shape: tuple[int, ...], name: str) -> OnnxRuntimeRunner:
    graph = onnx_graph.check_graph(onnx_graph.simplify(onnx_graph.export_onnx(model, shape)))
    # Sessions timed in turn must not spin between calls: the spinning pools slow each other down.
    return OnnxRuntimeRunner(graph.SerializeToString(), name, allow_spinning=False)


def resnet50_variants() -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The variants, and the layout ``auto`` chose per block."""
    model = randomize_batchnorm(create_model("xvol_resnet50"), seed=0).eval()
    plain, _ = fold(randomize_batchnorm(create_model("xvol_resnet50", stages=()), seed=0).eval())
    variants = {"training form": model}
    for layout in ("dense", "split"):
        variants[f"folded {layout}"] = fold(model, layout=layout)[0]
    variants["folded auto"], report = fold(model, layout="auto")
    variants["folded split, default options"] = variants["folded split"]
    variants["plain ResNet-50"] = plain
    return variants, report.layouts


class ConvBN(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))


def block_variants(channels: int = 256) -> dict[str, nn.Module]:
    block = randomize_batchnorm(XVolution(channels, channels), seed=1).eval()
    plain = randomize_batchnorm(ConvBN(channels), seed=1).eval()
    return {
        "training form": block,
        "folded dense": fold_xvolution(block, "dense"),
        "folded split": fold_xvolution(block, "split"),
        "folded split, default options": fold_xvolution(block, "split"),
        "plain 3x3 conv+BN": plain,
    }


def measure(variants: dict[str, nn.Module], shape: tuple[int, ...], warmup: int, iterations: int) -> dict:
    feed = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    def tuned(name: str, model: nn.Module, options: dict) -> nn.Module:
        return model if "default options" in name else set_runtime_options(model, **options)

    torch_runners = {name: TorchRunner(tuned(name, m, TORCH_CPU_OPTIONS), name) for name, m in variants.items()}
    ort_options = onnx_options(shape[0])
    ort_runners = {name: onnx_runner(tuned(name, m, ort_options), shape, name) for name, m in variants.items()}
    return {
        "pytorch eager": time_runners(torch_runners, feed, warmup, iterations, "vs_training"),
        "onnxruntime": time_runners(ort_runners, feed, warmup, iterations, "vs_training"),
    }


def markdown(results: dict, cpu: str) -> str:
    lines = [f"# Deploy speed on {cpu}", "",
             "Median latency in ms, and the ratio to the training form on the same runtime (lower is faster): "
             "the median of per-round ratios (variants timed round-robin), with its bootstrap 95 % confidence "
             "interval. Folded rows run with each runtime's deploy-block options (ONNX Runtime: "
             "`onnx_options(batch)`, the graph `xvol export` writes at that batch; PyTorch eager: "
             "`TORCH_CPU_OPTIONS`); \"default options\" is split without them.", ""]
    for table, by_runtime in results.items():
        runtimes = list(by_runtime)
        lines += [f"## {table}", "", "| variant | " + " | ".join(f"{r} ms | {r} ratio" for r in runtimes) + " |",
                  "|---" * (1 + 2 * len(runtimes)) + "|"]
        for variant in by_runtime[runtimes[0]]:
            cells = []
            for runtime in runtimes:
                s = by_runtime[runtime][variant]
                low, high = s["vs_training_ci95"]
                cells += [f"{s['median_ms']:.2f}", f"{s['vs_training']:.3f} ({low:.3f}-{high:.3f})"]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=30, help="rounds at batch 1 (half at batch 8)")
    parser.add_argument("--quick", action="store_true", help="batch 1 only, fewer iterations")
    args = parser.parse_args()
    iterations = 5 if args.quick else args.iterations

    results = {}
    block = block_variants()
    results["one stage-3 block, 256 ch, 14x14, batch 1"] = measure(block, (1, 256, 14, 14), 5, 10 * iterations)
    variants, auto_layouts = resnet50_variants()
    for batch in (1,) if args.quick else (1, 8):
        runs = iterations if batch == 1 else max(5, iterations // 2)
        results[f"XVol-ResNet-50, 224x224, batch {batch}"] = measure(variants, (batch, 3, 224, 224), 2, runs)

    info = machine()
    chosen = sorted(set(auto_layouts.values()))
    auto_note = f"auto chose {', '.join(chosen)} for the {len(auto_layouts)} X-volution blocks"
    if chosen == ["split"]:
        auto_note += ": folded auto and folded split are the same graph, so their difference is the run's noise"
    print(auto_note)
    for table, by_runtime in results.items():
        print(f"\n{table}")
        for runtime, stats in by_runtime.items():
            print(f"  {runtime}")
            for variant, s in stats.items():
                cv = 100 * s["cv"]
                low, high = s["vs_training_ci95"]
                print(f"    {variant:24} {s['median_ms']:9.2f} ms  {s['vs_training']:6.3f}x "
                      f"[{low:.3f}, {high:.3f}]  (cv {cv:.0f} %)")
    path = write_json("deploy_speed", {"benchmark": "deploy_speed", "machine": info,
                                       "torch_threads": torch.get_num_threads(), "auto_layouts": auto_layouts,
                                       "auto_note": auto_note, "results": results})
    (RESULTS / "deploy_speed.md").write_text(markdown(results, info["cpu"]) + f"\n{auto_note}.\n")
    print(f"\nwrote {path.name} and deploy_speed.md in {RESULTS.name}/")


if __name__ == "__main__":
    main()
