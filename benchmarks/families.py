"""Block families: fold time, fp32 error, what stays unfolded, and deploy/training latency, model by model.

Three models, weights from torch seed 0, BatchNorm as training sets it (random gamma/beta, statistics
calibrated on 64 calibration photo crops: ``_common.realistic_model`` / ``realistic_batchnorm``):
RepVGG-A0 and MobileOne-S0 from xvol's registry at 224x224, and a small mixed model with one block of
every built-in family (X-volution, RepVGG, ACB, DBB, MobileOne, dilated re-param) between a stem conv+BN,
a BatchNorm after a residual add (no conv to absorb it: it stays) and a linear+BN1d head, at 64x64 (the
model of ``tests/test_families.py``, copied here so the benchmark does not import the tests). Per model:

* fold time: ``fold(model, input_shape=(1, 3, H, W))`` of the fp32 model, timed round-robin
  (``time_interleaved``) with the two float64 profiling forwards the fold runs inside it (training form
  and deploy form at the input shape: the fold's own cost model), so their share can be told apart;
* BatchNorms left in the deploy model and the report's ``left`` entries (what stays, and why);
* errors on held-out photo crops (the other half of the photos), relative L2: the fp32 deploy model
  against the training form in float64 (the truth) and against the fp32 training form, next to the fp32
  training form's own error against float64 (the baseline: what fp32 arithmetic costs the network); also the fold's
  exactness (its deploy model kept in float64, ``dtype=torch.float64``) and the two ONNX graphs' errors;
* latency at batch 1, training form against deploy form on each runtime, alternating call by call
  with the order flipped every round: PyTorch eager (fp32, the deploy model with
  ``set_runtime_options(deploy, RuntimeTarget("torch", "cpu", 1))``) and ONNX Runtime (both forms
  exported at batch 1 as ``xvol export`` does it: TorchScript exporter, checked, onnxslim; the deploy
  form with the onnxruntime runtime options; all graph optimizations, 2 intra-op threads, idle threads
  sleeping). Each runtime is timed in its own loop: PyTorch's OpenMP threads keep spinning after a call
  and would slow an ONNX Runtime call right after it on 2 cores. The ratio is the median of the per-round
  ratios deploy / training with a bootstrap 95 % interval; "faster" when the interval lies below 1,
  "slower" above 1, "equal within noise" otherwise.

    python benchmarks/families.py [--models repvgg_a0,mobileone_s0,mixed] [--rounds 300] [--fold-runs 5]
                                  [--holdout 8] [--threads 2]

Prints two tables; writes benchmarks/results/families.json and families.md.
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))  # the mixed model the tests use
from xvol_export.export import onnx_graph  # noqa: E402
from xvol_export.fold import RuntimeTarget, fold, runtime_options, set_runtime_options  # noqa: E402
from xvol_export.fold.profile import profile_model  # noqa: E402
from xvol_export.runners import OnnxRuntimeRunner, Runner, TorchRunner  # noqa: E402
from xvol_export.testing import check_not_degenerate, input_dependence, realistic_batchnorm  # noqa: E402

from _common import RESULTS, machine, paired_ratio, photo_crops, realistic_model, time_interleaved, write_json  # noqa: E402
from mixed_models import FamiliesNet  # noqa: E402

MODELS = {"repvgg_a0": ("RepVGG-A0", 224), "mobileone_s0": ("MobileOne-S0", 224), "mixed": ("mixed model", 64)}
SEED = 0


def build(key: str, size: int) -> nn.Module:
    torch.manual_seed(SEED)
    if key != "mixed":
        return realistic_model(key, size, seed=SEED)
    model = realistic_batchnorm(FamiliesNet(), photo_crops(size, 64, "calib"), seed=SEED).eval()
    with torch.inference_mode():
        check_not_degenerate(model(torch.from_numpy(photo_crops(size, 16, "holdout"))), label="mixed model")
    return model


def rel_l2(candidate, truth: torch.Tensor) -> float:
    candidate = torch.as_tensor(np.asarray(candidate)) if not isinstance(candidate, torch.Tensor) else candidate
    return float((candidate.double() - truth).norm() / truth.norm())


def log(start: float, message: str) -> None:
    print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)


def paired(training: Runner, deploy: Runner, feed: np.ndarray, warmup: int, rounds: int) -> dict:
    """Alternate the two runners call by call, order flipped every round; the paired ratio deploy / training."""
    for runner in (training, deploy):
        runner.activate()
        runner.bind({runner.input_names()[0]: feed})
        for _ in range(warmup):
            runner.timed_call()
    times: dict[str, list[float]] = {"training": [], "deploy": []}
    order = (("training", training), ("deploy", deploy))
    for index in range(rounds):
        for name, runner in order if index % 2 == 0 else order[::-1]:
            times[name].append(runner.timed_call().host_ms)
    ratio, (low, high) = paired_ratio(times["deploy"], times["training"])
    verdict = "faster" if high < 1 else "slower" if low > 1 else "equal within noise"
    return {"rounds": rounds, "training_median_ms": statistics.median(times["training"]),
            "deploy_median_ms": statistics.median(times["deploy"]), "training_min_ms": min(times["training"]),
            "deploy_min_ms": min(times["deploy"]), "ratio": ratio, "ratio_ci95": [low, high], "verdict": verdict}


def onnx_bytes(model: nn.Module, shape: tuple[int, ...]) -> bytes:
    return onnx_graph.check_graph(onnx_graph.simplify(onnx_graph.export_onnx(model, shape))).SerializeToString()


def ort_outputs(graph: bytes, crops: np.ndarray, threads: int) -> np.ndarray:
    runner = OnnxRuntimeRunner(graph, threads=threads)
    name = runner.input_names()[0]
    return np.concatenate([next(iter(runner.infer({name: crops[i:i + 1]}).values())) for i in range(len(crops))])


def bench_model(key: str, args, start: float) -> dict:
    label, size = MODELS[key]
    shape = (1, 3, size, size)
    model = build(key, size)
    model64 = copy.deepcopy(model).double()
    log(start, f"{label}: built at {size}x{size}, BatchNorm calibrated on 64 photo crops")

    deploy, report = fold(model, input_shape=shape)
    deploy64, _ = fold(model, input_shape=shape, dtype=torch.float64)
    timing = time_interleaved({"fold": lambda: fold(model, input_shape=shape),
                               "profile training form (float64)": lambda: profile_model(model64, shape),
                               "profile deploy form (float64)": lambda: profile_model(deploy64, shape)},
                              iterations=args.fold_runs, warmup=1)
    fold_ms, fold_min_ms = timing["fold"]["median_ms"], timing["fold"]["min_ms"]
    profile_ms = sum(v["median_ms"] for k, v in timing.items() if k.startswith("profile"))
    log(start, f"{label}: fold {fold_ms:.0f} ms (median of {args.fold_runs}, min {fold_min_ms:.0f}; its two profiling "
               f"forwards {profile_ms:.0f} ms), {len(report.blocks)} blocks, {len(report.fused)} norms fused, "
               f"{len(report.remaining_batchnorms)} BatchNorm(s) left")

    crops = photo_crops(size, args.holdout, "holdout")
    inputs = torch.from_numpy(crops)
    eager_deploy = set_runtime_options(deploy, RuntimeTarget("torch", "cpu", 1))
    ort_target = RuntimeTarget("onnxruntime", "cpu", 1)
    ort_deploy = set_runtime_options(deploy, ort_target)
    with torch.inference_mode():
        truth = model64(inputs.double())
        training32 = model(inputs)
        errors = {"fp32_training_vs_float64": rel_l2(training32, truth),
                  "fp32_deploy_vs_float64": rel_l2(deploy(inputs), truth),
                  "fp32_deploy_vs_fp32_training": rel_l2(deploy(inputs), training32.double()),
                  "fp32_eager_deploy_vs_float64": rel_l2(eager_deploy(inputs), truth),
                  "float64_deploy_vs_float64": rel_l2(deploy64(inputs.double()), truth)}
    dependence = input_dependence(truth)
    graphs = {"training": onnx_bytes(model, shape), "deploy": onnx_bytes(ort_deploy, shape)}
    errors["onnx_training_vs_float64"] = rel_l2(ort_outputs(graphs["training"], crops, args.threads), truth)
    errors["onnx_deploy_vs_float64"] = rel_l2(ort_outputs(graphs["deploy"], crops, args.threads), truth)
    log(start, f"{label}: errors on {args.holdout} held-out crops: fp32 training "
               f"{errors['fp32_training_vs_float64']:.2e}, fp32 deploy {errors['fp32_deploy_vs_float64']:.2e} "
               f"vs float64, {errors['fp32_deploy_vs_fp32_training']:.2e} vs fp32; both forms exported to ONNX")

    feed = crops[:1]
    eager = paired(TorchRunner(model, "training"), TorchRunner(eager_deploy, "deploy"), feed, args.warmup, args.rounds)
    log(start, f"{label}: PyTorch eager deploy/training {eager['ratio']:.3f} "
               f"[{eager['ratio_ci95'][0]:.3f}, {eager['ratio_ci95'][1]:.3f}] over {args.rounds} rounds")
    ort = paired(*(OnnxRuntimeRunner(graphs[n], n, threads=args.threads, allow_spinning=False)
                   for n in ("training", "deploy")), feed, args.warmup, args.rounds)
    log(start, f"{label}: ONNX Runtime deploy/training {ort['ratio']:.3f} "
               f"[{ort['ratio_ci95'][0]:.3f}, {ort['ratio_ci95'][1]:.3f}] over {args.rounds} rounds")

    return {"model": label, "key": key, "input_shape": list(shape), "input_dependence": dependence,
            "fold": {"median_ms": fold_ms, "min_ms": fold_min_ms, "runs": args.fold_runs,
                     "profiling_median_ms": profile_ms, "timings": timing},
            "blocks": dict(collections.Counter(b.family for b in report.blocks)),
            "norms_fused": len(report.fused), "remaining_batchnorms": report.remaining_batchnorms,
            "left": report.left, "notes": report.notes, "params": [report.params_before, report.params_after],
            "macs": [report.macs_before, report.macs_after], "errors": errors,
            "runtime_options": {"pytorch eager": runtime_options(deploy, RuntimeTarget("torch", "cpu", 1)),
                                "onnxruntime": runtime_options(deploy, ort_target)},
            "latency": {"pytorch eager": eager, "onnxruntime": ort}}


def ci(result: dict) -> str:
    low, high = result["ratio_ci95"]
    return f"{result['ratio']:.3f} [{low:.3f}, {high:.3f}]"


def error_cells(r: dict) -> list[str]:
    e = r["errors"]
    return [f"{e['fp32_training_vs_float64']:.2e}", f"{e['fp32_deploy_vs_float64']:.2e}",
            f"{e['fp32_deploy_vs_fp32_training']:.2e}", f"{e['float64_deploy_vs_float64']:.1e}",
            f"{e['onnx_deploy_vs_float64']:.2e}"]


def print_tables(rows: list[dict]) -> None:
    print(f"\n{'model':13} {'input':>5} {'fold ms':>8} {'min':>5} {'(profiling)':>11} {'BN left':>7} "
          f"{'fp32 train':>10} {'deploy':>9} {'deploy':>9} {'fp64 fold':>9} {'ORT deploy':>10}")
    print(" " * 13, f"{'':>5} {'median':>8} {'':>5} {'':>11} {'':>7} {'vs fp64':>10} {'vs fp64':>9} {'vs fp32':>9} "
          f"{'vs fp64':>9} {'vs fp64':>10}")
    for r in rows:
        fold_ms = r["fold"]
        errors = error_cells(r)
        print(f"{r['model']:13} {r['input_shape'][-1]:>5} {fold_ms['median_ms']:8.0f} {fold_ms['min_ms']:5.0f} "
              f"{fold_ms['profiling_median_ms']:11.0f} {len(r['remaining_batchnorms']):>7} {errors[0]:>10} "
              f"{errors[1]:>9} {errors[2]:>9} {errors[3]:>9} {errors[4]:>10}")
    for r in rows:
        for entry in r["left"]:
            print(f"  {r['model']}: left {entry['name']} ({entry['reason']})")
    print(f"\n{'model':13} {'runtime':13} {'training ms':>11} {'deploy ms':>9}  {'deploy/training [95 % CI]':25} "
          "verdict")
    for r in rows:
        for runtime, result in r["latency"].items():
            print(f"{r['model']:13} {runtime:13} {result['training_median_ms']:11.2f} "
                  f"{result['deploy_median_ms']:9.2f}  {ci(result):25} {result['verdict']}")


def markdown(rows: list[dict], settings: dict, cpu: str) -> str:
    lines = [f"# Block families on {cpu}", "",
             "Weights from torch seed 0, BatchNorm statistics calibrated on 64 photo crops. Fold time: "
             f"{settings['fold_runs']} runs of `fold(model, input_shape=(1, 3, H, W))` on the fp32 model, median and "
             "min, and the median of its two float64 profiling forwards (part of the fold). Errors: relative L2 on "
             f"{settings['holdout_crops']} held-out photo crops. Latency at batch 1: {settings['rounds']} rounds, "
             "training and deploy form alternating call by call; ratio deploy / training, median of the per-round "
             "ratios with its bootstrap 95 % interval.", "",
             "| model | input | fold ms, median / min (profiling) | BatchNorms left | fp32 training vs float64 | "
             "fp32 deploy vs float64 | fp32 deploy vs fp32 training | float64 fold vs float64 | ONNX deploy vs "
             "float64 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["fold"]
        lines.append(f"| {r['model']} | {r['input_shape'][-1]} | {f['median_ms']:.0f} / {f['min_ms']:.0f} "
                     f"({f['profiling_median_ms']:.0f}) | {len(r['remaining_batchnorms'])} | "
                     + " | ".join(error_cells(r)) + " |")
    left = [f"- {r['model']}: `{entry['name']}` ({entry['reason']})" for r in rows for entry in r["left"]]
    lines += ["", "Left unfolded:", "", *(left or ["- nothing"]), "",
              "| model | runtime | training ms | deploy ms | deploy / training (95 % CI) | verdict |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        for runtime, res in r["latency"].items():
            low, high = res["ratio_ci95"]
            lines.append(f"| {r['model']} | {runtime} | {res['training_median_ms']:.2f} | "
                         f"{res['deploy_median_ms']:.2f} | {res['ratio']:.3f} ({low:.3f}-{high:.3f}) | "
                         f"{res['verdict']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--rounds", type=int, default=300, help="timed rounds per model and runtime")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per variant before the rounds")
    parser.add_argument("--fold-runs", type=int, default=5, help="timed folds per model")
    parser.add_argument("--holdout", type=int, default=8, help="held-out photo crops for the errors")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads and ONNX Runtime intra-op threads")
    args = parser.parse_args()
    keys = args.models.split(",")
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    info = machine()
    load = {"start": list(os.getloadavg())}  # other work on the machine: the timings' context
    print(f"Block families on {info['cpu']}, {args.threads} threads: {', '.join(keys)}; load average "
          f"{load['start'][0]:.2f}", flush=True)
    rows = [bench_model(key, args, start) for key in keys]
    wall = time.perf_counter() - start
    load["end"] = list(os.getloadavg())
    print_tables(rows)
    settings = {"torch_seed": SEED, "holdout_crops": args.holdout, "rounds": args.rounds, "warmup": args.warmup,
                "fold_runs": args.fold_runs, "threads": args.threads, "batch": 1,
                "export": "torchscript opset 17, static batch 1, checked, onnxslim",
                "onnxruntime": "all graph optimizations, intra-op threads as given, idle threads sleeping",
                "reference": "training form in float64 on the held-out crops"}
    path = write_json("families", {"benchmark": "families", "settings": settings, "machine": info,
                                   "load_average_1_5_15_min": load, "wall_s": wall, "models": rows})
    (RESULTS / "families.md").write_text(markdown(rows, settings, info["cpu"]))
    print(f"\n{wall / 60:.1f} min; wrote {path.name} and families.md in {RESULTS.name}/")


if __name__ == "__main__":
    main()
