"""INT8 on the trained samples: accuracy of each calibration setting per family, and what the fallback costs.

Every trained MNIST sample (``samples/mnist_*.pth``, one per block family, found by glob) is loaded, folded and
exported to fp32 ONNX the way ``xvol export`` does it (``prepare_export``: static batch 1, the deploy blocks'
options for ONNX Runtime, onnxslim-simplified; its fold verified on 8 held-out images), and the training form is
run once in float64 on the held-out split (``Reference``, outputs only; ``samples/mnist_holdout.npz``, 500 real
digits with labels; ``--holdout N``: the first N). Then:

* fp32: the training form's accuracy (PyTorch fp32), the fp32 graph's on ONNX Runtime and on OpenVINO (f32);
* int8, calibrated on the calibration split (``samples/mnist_calib.npz``, 500 images never trained on) with
  ONNX Runtime's ``quantize_static`` through ``to_int8_qdq``: every calibration method (minmax, percentile,
  entropy) x per-channel or per-tensor weights (``per_channel``, a switch of ``to_int8_qdq`` that ``xvol
  export`` does not expose: it always quantizes per channel) x 8- or 7-bit weights (``int8_layout(target,
  bits)``) x runtime: ONNX Runtime with its own layout (u8, outputs quantized: its integer kernels) and OpenVINO
  with its own (u8, inputs only), each judged on its runtime. The default setting is what ``xvol export
  --precision int8`` writes on this machine: minmax, per-channel, weight bits ``auto``, ONNX Runtime layout.
  Per setting: accuracy against the labels, top-1 agreement and cosine against the float64 training form;
* the float fallback as ``xvol export --int8-fallback --accuracy-budget top1=99.5%`` runs it (default setting,
  ``quantize_with_fallback``): the library's budget is top-1 *agreement* with the float64 training form on the
  held-out images, not accuracy against the labels; 99.5 % agreement bounds the accuracy drop by 0.5 point (each
  changed prediction moves accuracy by at most one image). The fallback is tuned on the same held-out images it
  is judged on, as ``xvol export --data`` does. How many layers stay in float, that graph's accuracy, and its
  latency on ONNX Runtime against the all-int8 graph and the fp32 graph at batch 1 and 8 (graphs exported at
  that batch, the same layers in float; round-robin, paired ratios with bootstrap 95 % intervals, few rounds).

    python benchmarks/int8_families.py [--families repvgg,acb,...] [--holdout 500] [--calib 500]
                                       [--methods minmax,percentile,entropy] [--budget top1=99.5%]
                                       [--rounds 40] [--rounds-b8 20] [--warmup 3] [--name int8_families]

Prints a table per family and a summary; writes benchmarks/results/NAME.json and NAME.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xvol_export.compare import compare_arrays  # noqa: E402
from xvol_export.env import cpu_isa  # noqa: E402
from xvol_export.export.int8 import (  # noqa: E402
    CALIBRATION_METHODS,
    Int8Options,
    int8_layout,
    load_calibration,
    parse_budget,
    quantize_once,
    quantize_with_fallback,
    to_int8_qdq,
)
from xvol_export.export.onnx_graph import check_graph, runnable  # noqa: E402
from xvol_export.inputs import load_npz  # noqa: E402
from xvol_export.jobs.export import ExportSettings, prepare_export  # noqa: E402
from xvol_export.runners import OnnxRuntimeRunner, OpenVinoRunner  # noqa: E402
from xvol_export.utils import StepClock  # noqa: E402
from xvol_export.verify import Reference  # noqa: E402
from xvol_export.verify.outputs import run_batches  # noqa: E402

from _common import RESULTS, SAMPLES, machine, time_runners, write_json  # noqa: E402

RUNTIMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
WITHIN = 1.0  # points: the acceptance, a setting within 1 point of fp32 on ONNX Runtime


def log(start: float, message: str) -> None:
    print(f"[{time.perf_counter() - start:6.0f} s] {message}", flush=True)


def run_graph(graph: onnx.ModelProto, inputs: np.ndarray, backend: str) -> np.ndarray:
    """The graph's first output on ``inputs``, on ONNX Runtime or on OpenVINO (f32, as xvol runs int8 IRs)."""
    with runnable(graph) as source:
        runner = (OpenVinoRunner(source, "graph", inference_precision="f32") if backend == "openvino"
                  else OnnxRuntimeRunner(source, "graph"))
        with runner:
            return next(iter(run_batches(runner, inputs, 50).values()))


def figures(output: np.ndarray, truth: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy against the labels, and agreement with the float64 training form (what the library measures)."""
    stats = compare_arrays(truth, output, None, quantiles=False)
    return {"accuracy": float((output.argmax(1) == labels).mean()), "top1_agreement": stats.top1_agreement,
            "cosine": stats.cosine, "rel_l2": stats.rel_l2}


def settings_grid(methods: list[str]) -> list[dict]:
    return [{"method": m, "per_channel": pc, "weight_bits": bits, "runtime": rt}
            for m in methods for pc in (True, False) for bits in (8, 7) for rt in RUNTIMES]


def setting_label(s: dict) -> str:
    return (f"{s['method']}, {'per-channel' if s['per_channel'] else 'per-tensor'}, {s['weight_bits']}-bit, "
            f"{RUNTIMES[s['runtime']]}")


def prepared_at(sample: Path, holdout: Path, batch: int):
    prepared = prepare_export(sample, ExportSettings(data=holdout, batch=batch))
    label, graph = prepared.candidates(StepClock({}))[0]
    return prepared, check_graph(graph), label


def latency(graphs: dict[str, onnx.ModelProto], batch: int, args, folder: Path) -> dict:
    """fp32, all-int8 and fallback graphs (and the repair fallback's) on ONNX Runtime, round-robin: ratios to fp32,
    then the fallback graphs' to the all-int8 graph (default setting)."""
    paths = {}
    for name, graph in graphs.items():
        paths[name] = folder / f"{name}.b{batch}.onnx"
        onnx.save(graph, paths[name])
    feed = np.random.default_rng(0).standard_normal((batch, 1, 32, 32), dtype=np.float32)
    rounds = args.rounds if batch == 1 else args.rounds_b8
    out = {}
    for first, key in (("fp32", "vs_fp32"), ("int8", "vs_int8")):
        order = [first, *(name for name in graphs if name not in ("fp32", first))]
        runners = {name: OnnxRuntimeRunner(paths[name], name, allow_spinning=False) for name in order}
        timing = time_runners(runners, feed, args.warmup, rounds, key, batch)
        for runner in runners.values():
            runner.deactivate()
        for name, t in timing.items():
            entry = out.setdefault(name, {})
            entry.setdefault("median_ms", t["median_ms"])
            entry.setdefault("cv", t["cv"])
            entry.setdefault("rounds", t["rounds"])
            entry[key], entry[f"{key}_ci95"] = t[key], t[f"{key}_ci95"]
    return out


def bench_family(sample: Path, args, holdout_path: Path, small_path: Path, calib: np.ndarray, labels: np.ndarray,
                 folder: Path, start: float) -> dict:
    family = sample.stem.removeprefix("mnist_")
    clock = time.perf_counter()
    # prepare_export's own reference on a few images (its fold verification records every block in float64, which
    # costs half a minute on 500 images and which this benchmark does not read); the outputs' float64 reference
    # on the held-out images is the same Reference without the blocks.
    prepared, graph, simplifier = prepared_at(sample, small_path, 1)
    reference = Reference(prepared.model, load_npz(holdout_path), "training form", per_block=False)
    inputs = reference.data.inputs.numpy()
    truth = reference.truth.values["output"]
    training = figures(reference.baseline("fp32", blocks=False).values["output"], truth, labels)
    fp32 = {rt: figures(run_graph(graph, inputs, rt), truth, labels) for rt in RUNTIMES}
    prepare_s = time.perf_counter() - clock
    log(start, f"{family}: prepared in {prepare_s:.1f} s; training form {100 * training['accuracy']:.2f} %, fp32 "
               f"graph {100 * fp32['onnxruntime']['accuracy']:.2f} % (ORT), "
               f"{100 * fp32['openvino']['accuracy']:.2f} % (OpenVINO)")

    default = Int8Options()  # what `xvol export --precision int8` uses
    default_layout = default.layout("onnx")
    rows = []
    clock = time.perf_counter()
    for s in settings_grid(args.methods):
        layout = int8_layout(s["runtime"], s["weight_bits"])
        q = time.perf_counter()
        int8 = check_graph(to_int8_qdq(graph, calib, "input", per_channel=s["per_channel"],
                                       calibrate_method=s["method"], layout=layout))
        q = time.perf_counter() - q
        f = figures(run_graph(int8, inputs, s["runtime"]), truth, labels)
        drop = 100 * (fp32["onnxruntime"]["accuracy"] - f["accuracy"])
        is_default = (s["method"] == default.method and s["per_channel"] and s["runtime"] == default_layout.target
                      and s["weight_bits"] == default_layout.weight_bits)
        rows.append({**s, "label": setting_label(s), "default": is_default, "quantize_s": q,
                     "drop_points": drop, **f})
    grid_s = time.perf_counter() - clock
    log(start, f"{family}: {len(rows)} int8 settings in {grid_s:.0f} s; accuracy "
               f"{100 * min(r['accuracy'] for r in rows):.1f} to {100 * max(r['accuracy'] for r in rows):.1f} %")

    # The fallback as `xvol export --int8-fallback --accuracy-budget` runs it: the default setting.
    clock = time.perf_counter()
    budget = parse_budget(args.budget)
    base = quantize_once(graph, calib, method=default.method, layout=default_layout)
    fallback = quantize_with_fallback(graph, calib, inputs, truth, budget, method=default.method,
                                      layout=default_layout, sensitivity=None)
    kept = [item["name"] for item in fallback.kept_float]
    fb_graph = check_graph(fallback.graph)
    fb_figures = figures(run_graph(fb_graph, inputs, "onnxruntime"), truth, labels)
    all_int8 = figures(run_graph(base.variant(), inputs, "onnxruntime"), truth, labels)
    fallback_s = time.perf_counter() - clock
    log(start, f"{family}: fallback in {fallback_s:.1f} s: {fallback.summary()}; accuracy "
               f"{100 * all_int8['accuracy']:.2f} -> {100 * fb_figures['accuracy']:.2f} %")

    # Where a per-channel ONNX Runtime setting collapses (more than WITHIN points lost), the same fallback on the
    # worst of them: does keeping layers in float repair it?
    clock = time.perf_counter()
    fp32_acc = fp32["onnxruntime"]["accuracy"]
    worst = min((r for r in rows if r["runtime"] == "onnxruntime" and r["per_channel"]), key=lambda r: r["accuracy"])
    repair = repair_graph = repair_layout = None
    if 100 * (fp32_acc - worst["accuracy"]) > WITHIN + 1e-9:
        repair_layout = int8_layout("onnxruntime", worst["weight_bits"])
        result = quantize_with_fallback(graph, calib, inputs, truth, budget, method=worst["method"],
                                        layout=repair_layout)
        repair_graph = check_graph(result.graph)
        repair = {**result.to_dict(), "setting": worst["label"], "kept_float_count": len(result.kept_float),
                  "accuracy_before": worst["accuracy"],
                  "accuracy_after": figures(run_graph(repair_graph, inputs, "onnxruntime"), truth, labels)["accuracy"]}
        log(start, f"{family}: fallback on the worst setting ({worst['label']}) in {time.perf_counter() - clock:.1f} "
                   f"s: {result.summary()}; accuracy {100 * worst['accuracy']:.2f} -> "
                   f"{100 * repair['accuracy_after']:.2f} %")
    repair_s = time.perf_counter() - clock

    clock = time.perf_counter()
    graphs = {"fp32": graph, "int8": base.variant(), "fallback": fb_graph}
    if repair is not None and repair["kept_float_count"]:
        graphs["repair"] = repair_graph
    timing = {"1": latency(graphs, 1, args, folder)}
    _, graph8, _ = prepared_at(sample, small_path, 8)  # only its graph is needed
    base8 = quantize_once(graph8, calib, method=default.method, layout=default_layout)
    same_layers = sorted(base8.layers) == sorted(base.layers)
    if same_layers:
        graphs8 = {"fp32": graph8, "int8": base8.variant(), "fallback": base8.variant(kept)}
        if "repair" in graphs:
            repair8 = quantize_once(graph8, calib, method=worst["method"], layout=repair_layout)
            graphs8["repair"] = repair8.variant([item["name"] for item in repair["kept_float"]])
        timing["8"] = latency(graphs8, 8, args, folder)
    latency_s = time.perf_counter() - clock
    log(start, f"{family}: latency in {latency_s:.0f} s; fallback / int8 at batch 1 "
               f"{timing['1']['fallback']['vs_int8']:.2f}, / fp32 {timing['1']['fallback']['vs_fp32']:.2f}")
    return {
        "family": family,
        "checkpoint": f"samples/{sample.name}",
        "graph": {"nodes": len(graph.graph.node), "simplifier": simplifier, "quantizable_layers": len(base.layers),
                  "deploy_options": prepared.deploy_options},
        "images": len(inputs),
        "training_form": training,
        "fp32_graph": fp32,
        "default_int8": {"method": default.method, "layout": default_layout.to_dict()},
        "settings": rows,
        "fallback": {**fallback.to_dict(), "kept_float_count": len(kept), "accuracy_after": fb_figures["accuracy"],
                     "accuracy_before": all_int8["accuracy"], "batch8_same_layers": same_layers},
        "repair_fallback": repair,
        "latency": timing,
        "timings_s": {"prepare": prepare_s, "settings": grid_s, "fallback": fallback_s, "repair_fallback": repair_s,
                      "latency": latency_s},
    }


def summarize(row: dict) -> dict:
    """The summary line of one family: the best setting (accuracy, then agreement), ORT's best, the fallbacks."""
    fp32 = row["fp32_graph"]["onnxruntime"]["accuracy"]
    rank = lambda r: (r["accuracy"], r["top1_agreement"], r["default"])  # noqa: E731
    best = max(row["settings"], key=rank)
    ort = [r for r in row["settings"] if r["runtime"] == "onnxruntime"]
    default = next((r for r in row["settings"] if r["default"]), None)
    fb, repair = row["fallback"], row["repair_fallback"]
    # the fallback graph timed in the summary: the default setting's when it keeps a layer in float, else the
    # repair fallback's when that keeps one; else the default's (then the all-int8 graph itself)
    timed = "repair" if not fb["kept_float_count"] and "repair" in row["latency"]["1"] else "fallback"
    return {
        "family": row["family"], "fp32_accuracy": fp32, "training_accuracy": row["training_form"]["accuracy"],
        "best": best["label"], "best_accuracy": best["accuracy"], "best_drop_points": 100 * (fp32 - best["accuracy"]),
        "best_ort": max(ort, key=rank)["label"], "best_ort_accuracy": max(ort, key=rank)["accuracy"],
        "default_accuracy": default["accuracy"] if default else None,
        "worst": min(row["settings"], key=rank)["label"],
        "worst_accuracy": min(r["accuracy"] for r in row["settings"]),
        "ort_within_1_point": [r["label"] for r in ort if 100 * (fp32 - r["accuracy"]) <= WITHIN + 1e-9],
        "ort_settings": len(ort),
        "fallback_kept": fb["kept_float_count"], "quantizable_layers": row["graph"]["quantizable_layers"],
        "fallback_met": fb["met"], "fallback_accuracy": fb["accuracy_after"],
        "repair": None if repair is None else {k: repair[k] for k in ("setting", "kept_float_count", "met",
                                                                       "accuracy_before", "accuracy_after")},
        "timed_fallback": timed,
        "latency": {b: {"fallback_vs_int8": t[timed]["vs_int8"], "fallback_vs_int8_ci95": t[timed]["vs_int8_ci95"],
                        "fallback_vs_fp32": t[timed]["vs_fp32"], "fallback_vs_fp32_ci95": t[timed]["vs_fp32_ci95"],
                        "int8_vs_fp32": t["int8"]["vs_fp32"], "int8_vs_fp32_ci95": t["int8"]["vs_fp32_ci95"]}
                    for b, t in row["latency"].items()},
    }


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def ratio(entry: dict, key: str) -> str:
    low, high = entry[f"{key}_ci95"]
    return f"{entry[key]:.2f} ({low:.2f}-{high:.2f})"


def family_table(row: dict, md: bool) -> list[str]:
    """Accuracy (%) per method and weight granularity (rows) and bits x runtime (columns)."""
    cols = [(bits, rt) for rt in RUNTIMES for bits in (8, 7)]
    heads = [f"{RUNTIMES[rt]} {bits}-bit" for bits, rt in cols]
    cells = {}
    for r in row["settings"]:
        mark = "*" if r["default"] else ""
        cells[(r["method"], r["per_channel"], r["weight_bits"], r["runtime"])] = f"{pct(r['accuracy'])}{mark}"
    lines = []
    if md:
        lines += ["| method | weights | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(heads)]
    else:
        lines.append(f"  {'method':10} {'weights':11} " + " ".join(f"{h:>18}" for h in heads))
    for method in dict.fromkeys(r["method"] for r in row["settings"]):
        for pc in (True, False):
            values = [cells[(method, pc, bits, rt)] for bits, rt in cols]
            weights = "per-channel" if pc else "per-tensor"
            if md:
                lines.append(f"| {method} | {weights} | " + " | ".join(values) + " |")
            else:
                lines.append(f"  {method:10} {weights:11} " + " ".join(f"{v:>18}" for v in values))
    return lines


def print_family(row: dict) -> None:
    fp32, fb = row["fp32_graph"], row["fallback"]
    print(f"\n{row['family']} ({row['graph']['quantizable_layers']} quantizable layers, {row['images']} held-out "
          f"images): training form {pct(row['training_form']['accuracy'])} %, fp32 graph "
          f"{pct(fp32['onnxruntime']['accuracy'])} % on ONNX Runtime, {pct(fp32['openvino']['accuracy'])} % on "
          "OpenVINO; int8 accuracy (%, * the default):")
    print("\n".join(family_table(row, md=False)))
    print(f"  fallback ({fb['summary']}): {fb['kept_float_count']} layer(s) in float, accuracy "
          f"{pct(fb['accuracy_before'])} -> {pct(fb['accuracy_after'])} %")
    repair = row["repair_fallback"]
    if repair is not None:
        print(f"  fallback on {repair['setting']} ({repair['summary']}): {repair['kept_float_count']} layer(s) in "
              f"float, accuracy {pct(repair['accuracy_before'])} -> {pct(repair['accuracy_after'])} %")
    for batch, t in row["latency"].items():
        print(f"  batch {batch}: " + "; ".join(
            f"{name} {v['median_ms']:.3f} ms" + ("" if name == "fp32" else f", {ratio(v, 'vs_fp32')} x fp32")
            + ("" if name in ("fp32", "int8") else f", {ratio(v, 'vs_int8')} x int8") for name, v in t.items()))


SUMMARY_HEAD = ("family", "fp32 acc. %", "best int8 setting", "its acc. %", "drop (points)", "ORT within 1 point",
                "fallback (default setting): layers in float", "fallback on the worst ORT setting",
                "int8 / fp32, b1", "fallback / int8, b1", "fallback / fp32, b1", "int8 / fp32, b8",
                "fallback / int8, b8", "fallback / fp32, b8")


def summary_cells(s: dict) -> list[str]:
    within = f"yes ({len(s['ort_within_1_point'])} of {s['ort_settings']})" if s["ort_within_1_point"] else "no"
    kept = (f"{s['fallback_kept']} of {s['quantizable_layers']}, {pct(s['fallback_accuracy'])} %"
            + ("" if s["fallback_met"] else " (not met)"))
    r = s["repair"]
    repair = "none collapses" if r is None else (
        f"{r['setting'].split(',')[0]}: {r['kept_float_count']} of {s['quantizable_layers']}, "
        f"{pct(r['accuracy_before'])} -> {pct(r['accuracy_after'])} %" + ("" if r["met"] else " (not met)"))
    cells = [s["family"], pct(s["fp32_accuracy"]), s["best"], pct(s["best_accuracy"]), f"{s['best_drop_points']:.1f}",
             within, kept, repair]
    mark = " r" if s["timed_fallback"] == "repair" else ""
    for b in ("1", "8"):
        lat = s["latency"].get(b)
        cells += ([ratio(lat, "int8_vs_fp32"), ratio(lat, "fallback_vs_int8") + mark,
                   ratio(lat, "fallback_vs_fp32") + mark] if lat else ["-", "-", "-"])
    return cells


def summary_markdown(summaries: list[dict]) -> list[str]:
    return (["| " + " | ".join(SUMMARY_HEAD) + " |", "|---|---:|---|---:|---:|---|---|---|" + "---:|" * 6]
            + ["| " + " | ".join(summary_cells(s)) + " |" for s in summaries])


def verdicts(rows: list[dict], summaries: list[dict]) -> list[str]:
    """Where each family collapses, and whether the fallback repairs it, in words."""
    out = []
    for row, s in zip(rows, summaries, strict=True):
        fp32 = s["fp32_accuracy"]
        collapsed = [r for r in row["settings"] if 100 * (fp32 - r["accuracy"]) > WITHIN + 1e-9]
        if not collapsed:
            line = (f"**{s['family']}**: no collapse; every setting stays within {WITHIN:g} point of fp32 "
                    f"(worst {pct(s['worst_accuracy'])} %, {s['worst']}).")
        else:
            worst = min(collapsed, key=lambda r: r["accuracy"])
            line = (f"**{s['family']}**: {len(collapsed)} of {len(row['settings'])} settings lose more than "
                    f"{WITHIN:g} point (worst {pct(worst['accuracy'])} %, {worst['label']}; fp32 {pct(fp32)} %): "
                    + "; ".join(f"{r['label']} {pct(r['accuracy'])} %" for r in collapsed) + ".")
        fb = row["fallback"]
        if fb["kept_float_count"] == 0:
            line += (f" The default int8 graph ({pct(s['default_accuracy'])} %) meets the budget as it is: the "
                     "fallback keeps no layer in float.")
        else:
            line += (f" The default setting's fallback keeps {fb['kept_float_count']} of {s['quantizable_layers']} "
                     f"layers in float ({'met' if fb['met'] else 'not met'}): {pct(fb['accuracy_before'])} -> "
                     f"{pct(fb['accuracy_after'])} %.")
        repair = row["repair_fallback"]
        if repair is not None:
            repaired = 100 * (fp32 - repair["accuracy_after"]) <= WITHIN + 1e-9
            kept = ", ".join(f"`{k['name']}`" for k in repair["kept_float"]) or "none"
            line += (f" On the collapsing {repair['setting']}, the fallback keeps {repair['kept_float_count']} "
                     f"layer(s) in float ({kept}; budget {'met' if repair['met'] else 'not met'}): "
                     f"{pct(repair['accuracy_before'])} -> {pct(repair['accuracy_after'])} %, "
                     + (f"repaired (within {WITHIN:g} point of fp32)." if repaired else "not repaired."))
        out.append(line)
    return out


def markdown(rows: list[dict], summaries: list[dict], settings: dict, info: dict, wall: float) -> str:
    lines = [f"# INT8 on the trained samples, on {info['cpu']} ({cpu_isa()})", "",
             f"Held-out split: {settings['holdout_images']} real MNIST digits (`samples/mnist_holdout.npz`), "
             f"calibration: {settings['calibration_images']} others (`samples/mnist_calib.npz`). Accuracy against "
             "the labels; drops in points against the fp32 graph on ONNX Runtime. The default setting (*) is what "
             f"`xvol export --precision int8` writes here: {settings['default_int8']}. Per-tensor weights come from "
             "`to_int8_qdq(per_channel=False)`, a switch of the int8 API that `xvol export` and `Int8Options` do "
             "not expose (they always quantize weights per output channel). Run time "
             f"{wall / 60:.1f} min. {settings['rounds']}.", "",
             "## Summary", "", *summary_markdown(summaries), "",
             f"Fallback: {settings['fallback']}", "",
             "Latency ratios: median of per-round ratios on ONNX Runtime (lower is faster), bootstrap 95 % interval; "
             "fp32, the all-int8 graph (default setting) and the fallback graph, each exported at that batch. The "
             "fallback timed is the default setting's when it keeps a layer in float, else (marked r) the one on the "
             "worst setting; when neither keeps a layer, the fallback graph is the all-int8 graph itself and "
             "its ratio to it shows the noise.", "",
             "## Where a family collapses", "", *[f"- {v}" for v in verdicts(rows, summaries)], ""]
    for row in rows:
        fp32, fb = row["fp32_graph"], row["fallback"]
        lines += [f"## {row['family']}", "",
                  f"{row['graph']['quantizable_layers']} quantizable layers. Training form "
                  f"{pct(row['training_form']['accuracy'])} %, fp32 graph {pct(fp32['onnxruntime']['accuracy'])} % "
                  f"on ONNX Runtime and {pct(fp32['openvino']['accuracy'])} % on OpenVINO. int8 accuracy, %:", "",
                  *family_table(row, md=True), "",
                  f"Fallback: {fb['summary']}; kept in float: "
                  f"{', '.join('`' + k['name'] + '`' for k in fb['kept_float']) or 'none'}; accuracy "
                  f"{pct(fb['accuracy_before'])} -> {pct(fb['accuracy_after'])} %.", ""]
        repair = row["repair_fallback"]
        if repair is not None:
            lines += [f"Fallback on the worst per-channel ONNX Runtime setting ({repair['setting']}): "
                      f"{repair['summary']}; kept in float: "
                      f"{', '.join('`' + k['name'] + '`' for k in repair['kept_float']) or 'none'}; accuracy "
                      f"{pct(repair['accuracy_before'])} -> {pct(repair['accuracy_after'])} %.", ""]
        lines += ["Latency on ONNX Runtime (median ms; ratios with 95 % intervals; `repair`: the fallback graph of "
                  "the worst setting, against the default all-int8 graph):", "",
                  "| batch | graph | median ms | / fp32 | / int8 |", "|---|---|---:|---:|---:|"]
        for batch, t in row["latency"].items():
            for name, v in t.items():
                lines.append(f"| {batch} | {name} | {v['median_ms']:.3f} | "
                             f"{'1' if name == 'fp32' else ratio(v, 'vs_fp32')} | "
                             f"{'1' if name == 'int8' else '-' if name == 'fp32' else ratio(v, 'vs_int8')} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="", help="comma-separated (default: every samples/mnist_*.pth)")
    parser.add_argument("--holdout", type=int, default=500, help="held-out images (the first N of the split)")
    parser.add_argument("--calib", type=int, default=500, help="calibration images (the first N of the split)")
    parser.add_argument("--methods", default=",".join(CALIBRATION_METHODS))
    parser.add_argument("--budget", default="top1=99.5%", help="the fallback's --accuracy-budget")
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds at batch 1")
    parser.add_argument("--rounds-b8", type=int, default=20, help="timed rounds at batch 8")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--name", default="int8_families", help="results file name (without suffix)")
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    samples = sorted(SAMPLES.glob("mnist_*.pth"))
    if args.families:
        wanted = args.families.split(",")
        samples = [s for s in samples if s.stem.removeprefix("mnist_") in wanted]
    if not samples:
        parser.error("no trained sample matches --families")
    start = time.perf_counter()
    data = np.load(SAMPLES / "mnist_holdout.npz")
    labels = data["labels"][:args.holdout]
    calib = load_calibration(SAMPLES / "mnist_calib.npz", 1)[:args.calib]
    info = machine()
    budget = parse_budget(args.budget)
    default = Int8Options()
    layout = default.layout("onnx")
    settings = {
        "families": [s.stem.removeprefix("mnist_") for s in samples], "holdout_images": len(labels),
        "calibration_images": len(calib), "methods": args.methods, "budget": budget.to_dict(),
        "default_int8": f"{default.method}, per-channel, {layout.weight_bits}-bit weights (auto), ONNX Runtime "
                        f"layout ({layout.activations} activations, outputs quantized)",
        "fallback": f"`quantize_with_fallback` with the default setting to {budget.describe()} against the float64 "
                    "training form on the held-out images (the library measures top-1 agreement, not accuracy: "
                    "99.5 % agreement bounds the accuracy drop by 0.5 point); the layers it keeps in float are "
                    "the same at batch 8.",
        "rounds": f"{args.rounds} timed rounds at batch 1 and {args.rounds_b8} at batch 8 after {args.warmup} "
                  f"warm-up rounds, on {info['threads']} shared cores: few (the models are tiny); read the intervals",
        "export": "prepare_export: torchscript, static batch, onnxslim (as xvol export), its fold verified on 8 "
                  "held-out images",
        "reference": "training form in float64 on the held-out images"
    }
    print(f"INT8 on {len(samples)} trained samples: {len(labels)} held-out images, {len(calib)} calibration images, "
          f"methods {args.methods}, budget {budget.describe()}; on {info['cpu']}, {info['threads']} threads",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="xvol-int8-families-") as tmp:
        folder = Path(tmp)
        holdout_path = folder / "holdout.npz"
        np.savez(holdout_path, input=data["input"][:args.holdout], labels=labels)
        small_path = folder / "small.npz"
        np.savez(small_path, input=data["input"][:8], labels=data["labels"][:8])
        rows = [bench_family(s, args, holdout_path, small_path, calib, labels, folder, start) for s in samples]
    summaries = [summarize(r) for r in rows]
    wall = time.perf_counter() - start
    for row in rows:
        print_family(row)
    print("\nSummary (accuracy on the held-out images; ratios on ONNX Runtime, median (95 % CI)):")
    for s in summaries:  # one block per family: the columns are too many for one line
        print("  " + "; ".join(f"{h}: {c}" for h, c in zip(SUMMARY_HEAD, summary_cells(s), strict=True)))
    for line in verdicts(rows, summaries):
        print(f"- {line.replace('**', '')}")
    path = write_json(args.name, {"benchmark": "int8_families", "settings": settings, "machine": info, "wall_s": wall,
                                  "summary": summaries, "families": rows})
    (RESULTS / f"{args.name}.md").write_text(markdown(rows, summaries, settings, info, wall))
    print(f"\n{wall / 60:.1f} min; wrote {Path(path).name} and {args.name}.md in {RESULTS.name}/")


if __name__ == "__main__":
    main()
