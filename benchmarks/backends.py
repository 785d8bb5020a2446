"""Backends: one exported graph on ONNX Runtime and on OpenVINO, at each precision, timed interleaved.

XVol-ResNet-50 (``create_model("xvol_resnet50")``, X-volution in stage 3) and the plain ResNet-50
(``stages=()``: the registry's ResNet-50 with the X-volution blocks off), weights from torch seed 0,
with BatchNorm as training sets it (``_common.realistic_model``: ``realistic_batchnorm`` on 64
calibration crops of the scikit-learn photos, made at 224x224 by ``samples/make_photo_crops.py``, the
same photos and halves as ``tests/data/photo_crops.npz``, which holds them at 64x64). Each is folded
and exported the way ``xvol export`` does it at that batch (static NxCx224x224, ``onnx_options(batch)``,
checked, onnxslim), and as int8 Q/DQ graphs in each target's layout (``to_int8_qdq`` with ``int8_layout``:
minmax, calibrated on the calibration crops, weight bits chosen for this machine's ISA as ``auto`` does).
At batch 1 and 8, round-robin, one call each per round:

* ONNX Runtime: the fp32 graph, the int8 graph laid out for TensorRT (s8 activations on inputs: what ONNX
  Runtime then runs is a float simulation) and the one laid out for ONNX Runtime (u8, outputs quantized:
  integer kernels); all graph optimizations, idle threads sleeping;
* OpenVINO: the fp32 graph with INFERENCE_PRECISION_HINT f32 and bf16 (read back from the compiled
  model and reported), the TensorRT-layout int8 graph and the OpenVINO-layout one (f32 hint: their float
  parts in f32).

Run it under ``ONEDNN_MAX_CPU_ISA=AVX2`` (``--name backends_avx2``) to see an AVX2 CPU's int8 on OpenVINO
(oneDNN honours the cap; ONNX Runtime's own kernels do not, so its figures stay this CPU's).

Each ratio is the median of the per-round ratios to ONNX Runtime fp32, with a bootstrap 95 %
interval. Each variant's error is measured against the training form run in float64 on held-out
crops (the other half of the photos): relative L2 and top-1 agreement, next to the fp32 training
form's own (the floor an fp32 graph cannot beat).

    python benchmarks/backends.py [--iterations 12] [--holdout 16] [--calib 32] [--batches 1,8]
                                  [--models xvol,plain] [--name backends]

Prints a table per model and batch; writes benchmarks/results/NAME.json and NAME.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xvol_export import fold  # noqa: E402
from xvol_export.compare import compare_arrays  # noqa: E402
from xvol_export.env import cpu_isa  # noqa: E402
from xvol_export.export import onnx_graph  # noqa: E402
from xvol_export.export.precision import INT8_TARGETS, int8_layout, to_int8_qdq  # noqa: E402
from xvol_export.fold import set_runtime_options  # noqa: E402
from xvol_export.fold.families.xvolution import onnx_options  # noqa: E402
from xvol_export.inputs import InputData  # noqa: E402
from xvol_export.runners import OnnxRuntimeRunner, OpenVinoRunner, Runner  # noqa: E402
from xvol_export.verify import Reference, run_batches  # noqa: E402

from _common import RESULTS, machine, photo_crops, realistic_model, time_runners, write_json  # noqa: E402

MODELS = {
    "xvol": ("XVol-ResNet-50", "xvol_resnet50", {}),
    "plain": ("ResNet-50", "xvol_resnet50", {"stages": ()}),
}
SIZE = 224
BASELINE = "ORT fp32"


def log(start: float, message: str) -> None:
    print(f"[{time.perf_counter() - start:6.0f} s] {message}", flush=True)


def variants(fp32: Path, int8: dict[str, Path]) -> dict[str, Runner]:
    """The timed variants, ONNX Runtime fp32 first (the baseline of every ratio)."""
    return {
        BASELINE: OnnxRuntimeRunner(fp32, BASELINE, allow_spinning=False),
        "ORT int8 (TensorRT layout)": OnnxRuntimeRunner(int8["tensorrt"], "ORT int8 trt", allow_spinning=False),
        "ORT int8": OnnxRuntimeRunner(int8["onnxruntime"], "ORT int8", allow_spinning=False),
        "OV f32": OpenVinoRunner(fp32, "OV f32", inference_precision="f32"),
        "OV bf16": OpenVinoRunner(fp32, "OV bf16", inference_precision="bf16"),
        "OV int8 (TensorRT layout)": OpenVinoRunner(int8["tensorrt"], "OV int8 trt", inference_precision="f32"),
        "OV int8": OpenVinoRunner(int8["openvino"], "OV int8", inference_precision="f32"),
    }


def errors(runner: Runner, holdout: np.ndarray, truth: np.ndarray) -> dict:
    """Relative L2, max error / RMS, cosine and top-1 agreement against the float64 training form."""
    stats = compare_arrays(truth, run_batches(runner, holdout)["output"], None)
    return {"rel_l2": stats.rel_l2, "max_error_rms": stats.max_error_rms, "cosine": stats.cosine,
            "top1_agreement": stats.top1_agreement}


def bench_model(key: str, args, calib: np.ndarray, holdout: np.ndarray, folder: Path, start: float) -> dict:
    label, factory, kwargs = MODELS[key]
    torch.manual_seed(0)
    model = realistic_model(factory, SIZE, seed=0, **kwargs)
    reference = Reference(model, InputData(torch.from_numpy(holdout), None, "held-out photo crops"), label,
                          per_block=False)
    truth = reference.truth.values["output"]
    training_fp32 = compare_arrays(truth, reference.baseline("fp32").values["output"], None)
    deploy, _ = fold(model)
    log(start, f"{label}: built, float64 reference on {len(holdout)} held-out crops, folded")
    row = {"model": label, "factory": factory, "kwargs": dict(kwargs),
           "training_form_fp32": {"rel_l2": training_fp32.rel_l2, "max_error_rms": training_fp32.max_error_rms,
                                  "cosine": training_fp32.cosine, "top1_agreement": training_fp32.top1_agreement},
           "batches": {}}
    for batch in args.batches:
        shape = (batch, 3, SIZE, SIZE)
        options = onnx_options(batch)
        graph = onnx_graph.check_graph(onnx_graph.simplify(onnx_graph.export_onnx(
            set_runtime_options(deploy, **options), shape)))
        fp32_path = folder / f"{key}.b{batch}.onnx"
        onnx.save(graph, fp32_path)
        int8_paths, layouts = {}, {}
        for target in INT8_TARGETS:
            layouts[target] = int8_layout(target)
            int8_paths[target] = folder / f"{key}.b{batch}.int8.{target}.onnx"
            onnx.save(onnx_graph.check_graph(to_int8_qdq(graph, calib, "input", batch_size=batch,
                                                         layout=layouts[target])), int8_paths[target])
        runners = variants(fp32_path, int8_paths)
        figures = {name: errors(runner, holdout, truth) for name, runner in runners.items()}
        log(start, f"{label} batch {batch}: exported ({len(graph.graph.node)} nodes), int8 calibrated, errors "
                   f"measured; timing {args.iterations if batch == 1 else args.iterations_b8} rounds")
        rounds = args.iterations if batch == 1 else args.iterations_b8
        feed = np.random.default_rng(0).standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32)
        timing = time_runners(runners, feed, args.warmup, rounds, "vs_ort_fp32", batch)  # ORT fp32 first
        ran = {name: getattr(runner, "precision", None) for name, runner in runners.items()}
        hints = {name: runner.compiled_precision for name, runner in runners.items()
                 if isinstance(runner, OpenVinoRunner)}
        for runner in runners.values():
            runner.deactivate()
        row["batches"][str(batch)] = {
            "deploy_options": options, "nodes": len(graph.graph.node),
            "int8_layouts": {target: layout.to_dict() for target, layout in layouts.items()},
            "variants": {name: {**timing[name], **figures[name], "precision": ran[name],
                                "openvino_hint_read_back": hints.get(name)} for name in runners},
        }
    return row


def print_table(row: dict) -> None:
    base = row["training_form_fp32"]
    for batch, result in row["batches"].items():
        print(f"\n{row['model']}, {SIZE}x{SIZE}, batch {batch} (training form in fp32 against float64: rel L2 "
              f"{base['rel_l2']:.2e}, top-1 {100 * base['top1_agreement']:.1f} %)")
        print(f"  {'variant':26} {'ran':5} {'median ms':>10} {'items/s':>8} {'vs ORT fp32 [95 % CI]':>26} "
              f"{'rel L2':>9} {'top-1':>7} {'cv':>5}")
        for name, v in result["variants"].items():
            low, high = v["vs_ort_fp32_ci95"]
            print(f"  {name:26} {v['precision']:5} {v['median_ms']:10.2f} {v['items_per_s']:8.1f} "
                  f"{v['vs_ort_fp32']:9.3f}x [{low:.3f}, {high:.3f}] {v['rel_l2']:9.2e} "
                  f"{100 * v['top1_agreement']:6.1f}% {100 * v['cv']:4.0f}%")


def markdown(rows: list[dict], settings: dict, cpu: str) -> str:
    lines = [f"# Backends on {cpu}", "",
             "int8 layouts (weight bits as `auto` chose them for this ISA): " + "; ".join(
                 f"{t}: {lay['activations']}, {lay['weight_bits']}-bit weights"
                 + (", outputs quantized" if lay["quantize_outputs"] else "")
                 for t, lay in next(iter(rows[0]["batches"].values()))["int8_layouts"].items()) + ".", "",
             "One exported graph per model and batch (as `xvol export` writes it) on ONNX Runtime and OpenVINO, "
             "timed round-robin. Ratio: median of the per-round latency ratios to ONNX Runtime fp32 (lower is "
             "faster), bootstrap 95 % interval. Errors against the training form in float64 on "
             f"{settings['holdout_crops']} held-out photo crops. {settings['rounds']}.", ""]
    for row in rows:
        base = row["training_form_fp32"]
        for batch, result in row["batches"].items():
            lines += [f"## {row['model']}, batch {batch}", "",
                      f"Training form in fp32: rel L2 {base['rel_l2']:.2e}, top-1 agreement "
                      f"{100 * base['top1_agreement']:.1f} %.", "",
                      "| variant | ran | median ms | items/s | vs ORT fp32 (95 % CI) | rel L2 | top-1 agreement |",
                      "|---|---|---|---|---|---|---|"]
            for name, v in result["variants"].items():
                low, high = v["vs_ort_fp32_ci95"]
                lines.append(f"| {name} | {v['precision']} | {v['median_ms']:.2f} | {v['items_per_s']:.1f} | "
                             f"{v['vs_ort_fp32']:.3f} ({low:.3f}-{high:.3f}) | {v['rel_l2']:.2e} | "
                             f"{100 * v['top1_agreement']:.1f} % |")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=12, help="timed rounds at batch 1")
    parser.add_argument("--iterations-b8", type=int, default=6, help="timed rounds at batch 8 (and above)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--holdout", type=int, default=16, help="held-out crops for the errors")
    parser.add_argument("--calib", type=int, default=32, help="calibration crops for int8")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--models", default="xvol,plain")
    parser.add_argument("--name", default="backends", help="results file name (without suffix)")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    start = time.perf_counter()
    calib = photo_crops(SIZE, args.calib, "calib")
    holdout = photo_crops(SIZE, args.holdout, "holdout")
    info = machine()
    rounds = (f"{args.iterations} timed rounds at batch 1 and {args.iterations_b8} at batch 8 after {args.warmup} "
              f"warm-up rounds: few, to keep the run short on {info['threads']} shared cores; the intervals say how "
              "far to trust each ratio")
    settings = {"image_size": SIZE, "batches": args.batches, "holdout_crops": args.holdout,
                "calibration_crops": args.calib,
                "int8": "to_int8_qdq in each target's int8_layout (weight bits auto for this ISA), minmax, "
                        "per-channel weights",
                "export": "torchscript opset 17, static batch, onnx_options(batch), onnxslim", "rounds": rounds,
                "reference": "training form in float64 on the held-out crops", "torch_seed": 0}
    print(f"Backends at {SIZE}x{SIZE}, batches {args.batches}, on {cpu_isa()}: {rounds}.", flush=True)
    with tempfile.TemporaryDirectory(prefix="xvol-backends-") as tmp:
        rows = [bench_model(key, args, calib, holdout, Path(tmp), start) for key in args.models.split(",")]
    wall = time.perf_counter() - start
    for row in rows:
        print_table(row)
    path = write_json(args.name, {"benchmark": "backends", "settings": settings, "machine": info, "wall_s": wall,
                                  "models": rows})
    (RESULTS / f"{args.name}.md").write_text(markdown(rows, settings, cpu_isa()))
    print(f"\n{wall / 60:.1f} min; wrote {Path(path).name} and {args.name}.md in {RESULTS.name}/")


if __name__ == "__main__":
    main()
