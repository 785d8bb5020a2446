"""INT8 benchmark: calibration methods, per-layer sensitivity and float fallback on two ResNet-50s.

XVol-ResNet-50 (``create_model("xvol_resnet50")``, X-volution in stage 3) and the plain ResNet-50
(``stages=()``), weights from torch seed 0, with realistic BatchNorm statistics
(``_common.realistic_model``: seeded gamma/beta, statistics from 64 calibration photo crops). Each is
folded and exported to fp32 ONNX the way ``xvol export`` does it at batch 1 (static 1x3xSxS, one-hot
shift convs in the aggregate, checked, simplified with onnxslim). For each calibration method
(``xvol_export.export.int8``, calibrated once on the calibration crops):

* cosine, top-1 agreement and relative L2 of the all-INT8 graph against the training form run in
  float64 on held-out crops (the other half of the photos);
* the per-layer sensitivity (each quantizable layer alone quantized, alone in float), measured on
  the first ``--sensitivity-images`` held-out crops (2 + 2 x layers graph variants each);
* ``quantize_with_fallback`` to ``--budget`` (default cosine=0.99), judged on all held-out crops:
  how many layers it keeps in float, which, and the figures;
* each target's Q/DQ layout (``int8_layout``: TensorRT, ONNX Runtime, OpenVINO) at 8- and 7-bit weights,
  judged on the runtime it is for (under ``ONEDNN_MAX_CPU_ISA=AVX2``, OpenVINO as on an AVX2 CPU).

Plus one check at this scale: the graph with the minmax ranking's first layer in float, cut from the
Q/DQ graph, against quantize_static's own ``nodes_to_exclude`` graph (same calibration).

    python benchmarks/int8.py [--size 128] [--calib 64] [--holdout 32] [--sensitivity-images 12]
                              [--methods minmax,percentile,entropy] [--models xvol,plain]

Prints a table per model and writes benchmarks/results/int8.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xvol_export import fold  # noqa: E402
from xvol_export.export import onnx_graph  # noqa: E402
from xvol_export.export.int8 import (  # noqa: E402
    evaluate,
    keep_in_float,
    layer_sensitivity,
    parse_budget,
    quantize_once,
    quantize_with_fallback,
)
from xvol_export.export.precision import (  # noqa: E402
    CALIBRATION_METHODS,
    INT8_TARGETS,
    int8_layout,
    to_int8_qdq,
)
from xvol_export.fold.families.xvolution import onnx_options, shift_conv_names  # noqa: E402

from _common import machine, photo_crops, realistic_model, write_json  # noqa: E402

MODELS = {
    "xvol": ("XVol-ResNet-50", "xvol_resnet50", {}),
    "plain": ("ResNet-50", "xvol_resnet50", {"stages": ()}),
}


def log(start: float, message: str) -> None:
    print(f"[{time.perf_counter() - start:6.0f} s] {message}", flush=True)


def run_graph(graph, x: np.ndarray) -> np.ndarray:
    with onnx_graph.runnable(graph) as source:
        session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


def only_int8(base, part: str):
    """The all-INT8 graph with only its weights (``part="weights"``) or only its activations quantized."""
    graph = base.variant()
    g = graph.graph
    producer = {out: node for node in g.node for out in node.output}
    inits = {init.name for init in g.initializer}
    fp32_nodes = {node.name: node for node in base.fp32.graph.node}
    fp32_inits = {init.name: init for init in base.fp32.graph.initializer}
    for node in g.node:
        for index, tensor in enumerate(node.input):
            dq = producer.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if part == "weights" and q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]  # activation pairs dropped
            elif part == "activations" and dq.input[0] in inits and node.name in fp32_nodes:
                node.input[index] = fp32_nodes[node.name].input[index]  # float weights back
                if node.input[index] not in inits:
                    g.initializer.append(fp32_inits[node.input[index]])
                    inits.add(node.input[index])
    return keep_in_float(graph, base.fp32, [])  # drops the Q/DQ nodes and initializers left unread


def bench_model(key: str, args, calib: np.ndarray, holdout: np.ndarray, start: float) -> dict:
    label, factory, kwargs = MODELS[key]
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    torch.manual_seed(0)
    model = realistic_model(factory, args.size, seed=0, **kwargs)
    timings["model"] = time.perf_counter() - clock
    clock = time.perf_counter()
    with torch.no_grad():
        truth = copy.deepcopy(model).double()(torch.from_numpy(holdout).double()).numpy()
    timings["float64_truth"] = time.perf_counter() - clock
    clock = time.perf_counter()
    deploy = fold(model, **onnx_options(batch=1))[0].eval()
    raw = onnx_graph.check_graph(onnx_graph.export_onnx(deploy, (1, 3, args.size, args.size)))
    graph = onnx_graph.check_graph(onnx_graph.simplify(raw, "onnxslim"))
    timings["fold_export_simplify"] = time.perf_counter() - clock
    fp32 = evaluate(graph, holdout, truth)
    log(start, f"{label}: built, exported ({len(graph.graph.node)} nodes); fp32 graph cosine {fp32.cosine:.8f}")

    budget = parse_budget(args.budget)
    n = args.sensitivity_images
    methods: dict[str, dict] = {}
    first_ranking: list[str] = []
    for method in args.methods:
        base = quantize_once(graph, calib, method=method)
        all_int8 = evaluate(base.quantized, holdout, truth)
        log(start, f"{label} {method}: calibrated in {base.calibration_s:.1f} s, {len(base.layers)} layers; "
                   f"all INT8 cosine {all_int8.cosine:.4f}, top-1 {all_int8.top1_agreement:.3f}")
        methods[method] = {"calibration_s": base.calibration_s, "all_int8": all_int8.to_dict()}
        if method == args.methods[0]:
            first_base = base
            methods[method]["int8_parts"] = {part: evaluate(only_int8(base, part), holdout, truth).to_dict()
                                             for part in ("weights", "activations")}
        if method not in args.fallback_methods:
            continue
        clock = time.perf_counter()
        sensitivity = layer_sensitivity(graph, calib, holdout[:n], truth[:n], method=method, base=base)
        sensitivity_s = time.perf_counter() - clock
        log(start, f"{label} {method}: sensitivity in {sensitivity_s:.0f} s ({sensitivity.variant_s:.2f} s a variant)")
        clock = time.perf_counter()
        fallback = quantize_with_fallback(graph, calib, holdout, truth, budget, method=method, sensitivity=sensitivity)
        fallback_s = time.perf_counter() - clock
        log(start, f"{label} {method}: fallback in {fallback_s:.0f} s: {fallback.summary()}")
        methods[method].update({
            "sensitivity": sensitivity.to_dict(),
            "sensitivity_s": sensitivity_s,
            "fallback": fallback.to_dict(),
            "fallback_s": fallback_s,
            "layers_kept_float": len(fallback.kept_float),
        })
        if method == args.methods[0]:
            first_ranking = sensitivity.ranking

    # Each target's layout at 8- and 7-bit weights, judged on the runtime it is for (this machine's ISA; run
    # under ONEDNN_MAX_CPU_ISA=AVX2 to see OpenVINO on an AVX2 CPU).
    layouts = {}
    for target in INT8_TARGETS:
        for bits in (8, 7):
            layout = int8_layout(target, bits)
            quantized = to_int8_qdq(graph, calib, "input", calibrate_method=args.methods[0], layout=layout)
            runtime = "openvino" if target == "openvino" else "onnxruntime"
            layouts[f"{target}, {bits}-bit weights"] = {
                "layout": layout.to_dict(), "runtime": runtime,
                **evaluate(quantized, holdout, truth, backend=runtime).to_dict()}
    log(start, f"{label}: layouts " + "; ".join(f"{k} rel L2 {v['rel_l2']:.3f}" for k, v in layouts.items()))

    # Surgery against quantize_static at this scale: the first method, the most sensitive layer in float.
    clock = time.perf_counter()
    layer = first_ranking[0] if first_ranking else first_base.layers[0]
    cut = run_graph(first_base.variant([layer]), holdout[:8])
    own = run_graph(to_int8_qdq(graph, calib, "input", calibrate_method=first_base.method, nodes_to_exclude=[layer]),
                    holdout[:8])
    surgery = {"method": first_base.method, "layer": layer, "images": 8,
               "max_abs_difference": float(np.abs(cut - own).max()), "seconds": time.perf_counter() - clock}
    log(start, f"{label}: surgery vs quantize_static(nodes_to_exclude=[{layer}]): max |diff| "
               f"{surgery['max_abs_difference']:.2e}")
    return {
        "model": label,
        "factory": factory,
        "kwargs": {k: list(v) for k, v in kwargs.items()},
        "graph": {"nodes": len(graph.graph.node), "quantizable_layers": len(first_base.layers),
                  "shift_convs": len(shift_conv_names(graph)), "input_shape": [1, 3, args.size, args.size]},
        "fp32_graph": fp32.to_dict(),
        "methods": methods,
        "layouts": layouts,
        "surgery_check": surgery,
        "timings_s": timings,
    }


def print_model(row: dict, budget: str, top: int) -> None:
    print(f"\n{row['model']} ({row['graph']['quantizable_layers']} quantizable layers, "
          f"{row['graph']['nodes']} nodes; fp32 graph cosine {row['fp32_graph']['cosine']:.8f})")
    print(f"{'method':11} {'cosine':>8} {'top-1':>6} {'rel L2':>7} {'calib s':>8} "
          f"{'float for ' + budget:>22} {'cosine then':>11} {'top-1 then':>10}")
    for method, m in row["methods"].items():
        f, fb = m["all_int8"], m.get("fallback")
        line = (f"{method:11} {f['cosine']:8.4f} {f['top1_agreement']:6.3f} {f['rel_l2']:7.3f} "
                f"{m['calibration_s']:8.1f}")
        if fb is not None:
            kept = f"{m['layers_kept_float']} of {row['graph']['quantizable_layers']}"
            kept += "" if fb["met"] else ", not met"
            line += f" {kept:>22} {fb['after']['cosine']:11.4f} {fb['after']['top1_agreement']:10.3f}"
        else:
            line += f" {'(not run)':>22}"
        print(line)
    for name, f in row.get("layouts", {}).items():
        print(f"  layout {name:36} on {f['runtime']:11}: cosine {f['cosine']:.4f}, top-1 {f['top1_agreement']:.3f}, "
              f"rel L2 {f['rel_l2']:.3f}")
    for method, m in row["methods"].items():
        for part, f in m.get("int8_parts", {}).items():
            print(f"  {method}, only the {part} in INT8: cosine {f['cosine']:.4f}, top-1 {f['top1_agreement']:.3f}, "
                  f"rel L2 {f['rel_l2']:.3f}")
    for method, m in row["methods"].items():
        if "sensitivity" not in m:
            continue
        s = m["sensitivity"]
        layers = {item["name"]: item for item in s["layers"]}
        print(f"  {method}: the {top} most sensitive of {len(s['layers'])} layers (on {s['eval_images']} crops, "
              f"all INT8 cosine {s['all_quantized']['cosine']:.4f}; {s['variant_s']:.2f} s a variant)")
        print(f"    {'':62} {'cosine, alone in float':>22} {'alone quantized':>16}")
        for rank, name in enumerate(s["ranking"][:top], 1):
            item = layers[name]
            print(f"    {rank:2d}. {name:58} {item['float_alone']['cosine']:22.4f} "
                  f"{item['quantized_alone']['cosine']:16.4f}")
        steps = m["fallback"]["steps"]
        if steps:
            marks = [steps[i] for i in sorted({min(len(steps), k) - 1 for k in (1, 5, 10, 20, 40, len(steps))})]
            print("    fallback, cosine after k layers in float: "
                  + ", ".join(f"{step['float_layers']}: {step['cosine']:.4f}" for step in marks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--calib", type=int, default=64, help="calibration crops")
    parser.add_argument("--holdout", type=int, default=32, help="held-out crops for the figures and the fallback")
    parser.add_argument("--sensitivity-images", type=int, default=12, help="held-out crops for the sensitivity")
    parser.add_argument("--methods", default=",".join(CALIBRATION_METHODS))
    parser.add_argument("--fallback-methods", default="minmax",
                        help="methods that also get the sensitivity and the fallback (the costly part)")
    parser.add_argument("--models", default="xvol,plain")
    parser.add_argument("--budget", default="cosine=0.99")
    parser.add_argument("--top", type=int, default=10, help="sensitive layers printed per method")
    parser.add_argument("--name", default="int8", help="results file name (without suffix)")
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    args.fallback_methods = [m for m in args.fallback_methods.split(",") if m in args.methods]
    start = time.perf_counter()
    calib = photo_crops(args.size, args.calib, "calib")
    holdout = photo_crops(args.size, args.holdout, "holdout")
    settings = {
        "image_size": args.size, "calibration_crops": args.calib, "holdout_crops": args.holdout,
        "sensitivity_crops": args.sensitivity_images, "budget": args.budget, "methods": args.methods,
        "fallback_methods": args.fallback_methods,
        "export": "torchscript opset 17, static batch 1 (one-hot shift convs), onnxslim",
        "reference": "training form in float64 on the held-out crops", "torch_seed": 0,
    }
    print(f"INT8 calibration, sensitivity and fallback at {args.size}x{args.size}: {args.calib} calibration crops, "
          f"{args.holdout} held-out crops (sensitivity on the first {args.sensitivity_images}), budget {args.budget}; "
          f"on {machine()['cpu']}, {torch.get_num_threads()} threads", flush=True)
    rows = [bench_model(key, args, calib, holdout, start) for key in args.models.split(",")]
    wall = time.perf_counter() - start
    for row in rows:
        print_model(row, args.budget, args.top)
    path = write_json(args.name, {"benchmark": "int8", "settings": settings, "machine": machine(), "wall_s": wall,
                               "models": rows})
    print(f"\n{wall / 60:.1f} min; wrote benchmarks/results/{Path(path).name}")


if __name__ == "__main__":
    main()
