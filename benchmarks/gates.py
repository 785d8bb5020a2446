"""The default gates' confusion table: honest folds and graphs must PASS, faults must FAIL, and by what margin.

Honest cases, each at every seed and thread count, judged by the default gate of their precision exactly
as ``xvol fold``/``xvol export`` judge them (:func:`xvol_export.verify.verify` on a
:class:`~xvol_export.verify.Reference` of the training form with its float64 fold):

* models: each built-in family's example blocks (random BatchNorm statistics, a quarter of the gammas
  negative, odd input sizes 7x9), the test suite's mixed models (every family in one network; two outputs;
  a pre-activation network whose BatchNorms stay; a two-head user model with a hook block, a grouped
  ConvTranspose + BN and a Linear + BN1d), the digits sample (its held-out digits, and random 8x8 inputs at
  batch 4), every trained MNIST sample (``samples/mnist_*.pth``: one network per family and the plain ResNet
  control, trained weights and statistics; 32 held-out digits drawn with the seed), XVol-ResNet-50 and
  RepVGG-A0 at 64x64 with BatchNorm statistics calibrated on photo crops;
  weights from the seed, inputs drawn with the seed (photo crops and digits: a seeded subset);
* candidates: the fold (the fp32 deploy model in PyTorch), its ONNX fp32 graph on ONNX Runtime (exported
  and simplified as ``xvol export`` does), the same graph on OpenVINO (f32 asked), and its fp16 graph on
  ONNX Runtime against the fp16 gate; PyTorch, ONNX Runtime and OpenVINO at each thread count.

Faults, on the same models and seeds (one thread). In the fold (the fp32 deploy model, and the float64
fold the gate compares it with carrying the same fault, as a buggy fold would give both): one kernel
scaled by 1 + eps (eps = 1e-5, 1e-4, 1e-3); one bias shifted by 1e-4 of its conv's output RMS; the fold
made with BatchNorm eps 1e-3 instead of the stored one; one branch of the first block dropped (its
BatchNorm's gamma and beta zeroed); one kernel rolled by a pixel (padding off by one). In the graph (the
ONNX fp32 graph, as a broken exporter or simplifier would leave it): one Conv weight scaled by 1 + eps, one
Conv bias shifted by 1e-4 of its output RMS. The kernel or bias is drawn with the seed among those that
carry a tenth of the outputs: scaling it by 1 + 1e-2 (shifting it by 1e-2 of its output's RMS) moves the
float64 outputs by at least 1e-3 (a squeeze-excitation gate shut by its ReLU moves nothing: no check could see
a fault there). The fold is judged as ``xvol fold`` judges it, its float64 form included.

The gate ratio of a verdict is the largest value / limit among its conditions (its outputs and blocks):
PASS when it is at most 1. The margin is the largest honest ratio against the smallest faulty one from
eps = 1e-4 up.

    python benchmarks/gates.py [--seeds 20] [--threads 1,2] [--models all] [--faults all]

Prints the tables; writes benchmarks/results/gates.json and gates.md.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))
from photo_data import photo_crops  # noqa: E402

from xvol_export import create_model  # noqa: E402
from xvol_export.checkpoint import load_model  # noqa: E402
from xvol_export.export import onnx_graph  # noqa: E402
from xvol_export.export.precision import to_fp16  # noqa: E402
from xvol_export.fold import RuntimeTarget, families, fold_both, runtime_options, set_runtime_options  # noqa: E402
from xvol_export.inputs import InputData, load_npz  # noqa: E402
from xvol_export.runners import OnnxRuntimeRunner, OpenVinoRunner  # noqa: E402
from xvol_export.testing import randomize_batchnorm, realistic_batchnorm  # noqa: E402
from xvol_export.verify import Reference, VerifyReport, verify, verify_fold  # noqa: E402

from _common import RESULTS, SAMPLES, machine, write_json  # noqa: E402
from mixed_models import FamiliesNet, MixedNet  # noqa: E402
from user_models import preact_net, two_head_net  # noqa: E402

EPSILONS = (1e-5, 1e-4, 1e-3)


# ----------------------------------------------------------------------------------------------- models

def _random_inputs(shape: tuple[int, ...], seed: int) -> InputData:
    g = torch.Generator().manual_seed(10_000 + seed)
    return InputData(torch.randn(shape, generator=g), None, f"random normal {shape}", synthetic=True)


def _random_bn(model: nn.Module, seed: int) -> nn.Module:
    return randomize_batchnorm(model, seed, negative_gamma=0.25).eval()


def _family_cases() -> dict[str, Callable[[int], tuple[nn.Module, InputData]]]:
    cases = {}
    for family in families():
        for index, _ in enumerate(family.examples() if family.examples else []):
            def build(seed, family=family, index=index):
                torch.manual_seed(seed)
                block = _random_bn(family.examples()[index], seed)
                channels = next(m for m in block.modules() if isinstance(m, nn.modules.conv._ConvNd)).in_channels
                return block, _random_inputs((2, channels, 7, 9), seed)
            cases[f"{family.name} example {index}"] = build
    return cases


def _seeded(factory: Callable[[], nn.Module], shape: tuple[int, ...]) -> Callable[[int], tuple[nn.Module, InputData]]:
    def build(seed):
        torch.manual_seed(seed)
        return _random_bn(factory(), seed), _random_inputs(shape, seed)
    return build


def _trained(checkpoint: str, holdout: str, random_shape: tuple[int, ...] | None = None):
    """A committed trained sample on 32 of its held-out images drawn with the seed (or on random inputs)."""
    def build(seed):
        model, _ = load_model(SAMPLES / checkpoint)
        if random_shape is not None:
            return model, _random_inputs(random_shape, seed)
        held = load_npz(SAMPLES / holdout)
        pick = torch.from_numpy(np.random.default_rng(seed).choice(len(held.inputs), 32, replace=False))
        return model, InputData(held.inputs[pick], held.labels[pick], f"32 images of {holdout}")
    return build


def _photo_model(name: str, **config) -> Callable[[int], tuple[nn.Module, InputData]]:
    def build(seed):
        torch.manual_seed(seed)
        model = create_model(name, **config)
        realistic_batchnorm(model, torch.from_numpy(photo_crops("calib")), seed=seed).eval()
        held = photo_crops("holdout")
        pick = np.random.default_rng(seed).choice(len(held), 4, replace=False)
        return model, InputData(torch.from_numpy(held[pick]), None, "4 held-out photo crops")
    return build


def model_cases() -> dict[str, Callable[[int], tuple[nn.Module, InputData]]]:
    return {
        **_family_cases(),
        "FamiliesNet (every family)": _seeded(FamiliesNet, (2, 3, 16, 16)),
        "MixedNet (two outputs)": _seeded(MixedNet, (2, 3, 16, 16)),
        "two-head user model": _seeded(two_head_net, (2, 3, 16, 16)),
        "pre-activation user model": _seeded(preact_net, (2, 3, 16, 16)),
        "digits sample, held out": _trained("digits_xvol_resnet_tiny.pth", "digits_holdout.npz"),
        "digits sample, random 4x1x8x8": _trained("digits_xvol_resnet_tiny.pth", "", random_shape=(4, 1, 8, 8)),
        **{f"trained {path.stem}": _trained(path.name, "mnist_holdout.npz")
           for path in sorted(SAMPLES.glob("mnist_*.pth"))},
        "XVol-ResNet-50 64x64": _photo_model("xvol_resnet50", num_classes=10),
        "RepVGG-A0 64x64": _photo_model("repvgg_a0", num_classes=10),
    }


# ----------------------------------------------------------------------------------------------- faults

def _convs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]


def _outputs64(model: nn.Module, data: InputData) -> torch.Tensor:
    with torch.inference_mode():
        out = model(data.inputs.double())
    return torch.cat([o.flatten() for o in (out if isinstance(out, (tuple, list)) else (out,))])


def _output_rms(model: nn.Module, module: nn.Module, data: InputData) -> float:
    seen = []
    handle = module.register_forward_hook(lambda _m, _a, out: seen.append(out.detach().double()))
    try:
        _outputs64(model, data)
    finally:
        handle.remove()
    return float(torch.sqrt(torch.mean(torch.cat([s.flatten() for s in seen]) ** 2)))


def visible_conv(deploy64: nn.Module, data: InputData, seed: int, bias: bool = False) -> nn.Module | None:
    """A conv, drawn with ``seed``, whose kernel (``bias``: bias) carries a tenth of the outputs: scaling it by
    1 + 1e-2 (shifting its bias by 1e-2 of its output's RMS) moves the float64 outputs by at least 1e-3 relative.
    A kernel that moves them far less (a squeeze-excitation gate shut by its ReLU does not move them at all)
    changes the function on these inputs by less than its own scaling, which no check could tell from
    rounding once it is below it."""
    convs = [m for _, m in _convs(deploy64) if not bias or m.bias is not None]
    truth = _outputs64(deploy64, data)
    for index in np.random.default_rng(seed).permutation(len(convs)):
        conv = convs[index]
        param = conv.bias if bias else conv.weight
        saved = param.detach().clone()
        with torch.no_grad():
            if bias:
                param.add_(1e-2 * _output_rms(deploy64, conv, data))
            else:
                param.mul_(1 + 1e-2)
        moved = float((_outputs64(deploy64, data) - truth).norm() / truth.norm())
        with torch.no_grad():
            param.copy_(saved)
        if moved >= 1e-3:
            return conv
    return None


def scale_kernel(eps: float):
    def apply(deploy64: nn.Module, _model, data: InputData, seed: int):
        conv = visible_conv(deploy64, data, seed)
        if conv is None:
            return None
        with torch.no_grad():
            conv.weight.mul_(1 + eps)
        return deploy64
    return apply


def shift_bias(deploy64: nn.Module, _model, data: InputData, seed: int):
    conv = visible_conv(deploy64, data, seed, bias=True)
    if conv is None:
        return None
    rms = _output_rms(deploy64, conv, data)
    with torch.no_grad():
        conv.bias.add_(1e-4 * rms)
    return deploy64


def roll_kernel(deploy64: nn.Module, _model, _data, seed: int):
    convs = [m for _, m in _convs(deploy64) if m.weight.shape[-1] > 1]
    if not convs:
        return None  # only 1x1 kernels: no padding to get wrong
    conv = convs[np.random.default_rng(seed).integers(len(convs))]
    with torch.no_grad():
        conv.weight.copy_(torch.roll(conv.weight, 1, dims=-1))
    return deploy64


def bn_eps(_deploy64, model: nn.Module, data: InputData, _seed):
    wrong = copy.deepcopy(model)
    for m in wrong.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = 1e-3
    return fold_both(wrong, input_shape=(1, *data.inputs.shape[1:]), dtype="fp32")[1]


def drop_branch(_deploy64, model: nn.Module, data: InputData, _seed):
    from xvol_export.verify.run import block_names

    blocks = block_names(model)
    wrong = copy.deepcopy(model)
    norms = [m for n, m in wrong.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
             and any(n.startswith(f"{b}.") or not b for b in blocks)]
    if not norms:
        return None  # no multi-branch block: no branch to drop
    with torch.no_grad():
        norms[0].weight.zero_()
        norms[0].bias.zero_()
    return fold_both(wrong, input_shape=(1, *data.inputs.shape[1:]), dtype="fp32")[1]


FOLD_FAULTS = {
    **{f"kernel x (1 + {eps:g})": scale_kernel(eps) for eps in EPSILONS},
    "bias + 1e-4 RMS": shift_bias,
    "BN eps 1e-3": bn_eps,
    "branch dropped": drop_branch,
    "padding off by one": roll_kernel,
}


def _initializer(graph: onnx.ModelProto, value: torch.Tensor):
    """The graph's initializer holding ``value`` (as fp32), found by its contents."""
    wanted = value.detach().float().numpy()
    for init in graph.graph.initializer:
        if tuple(init.dims) == wanted.shape and np.array_equal(numpy_helper.to_array(init), wanted):
            return init
    return None


def graph_fault(graph: onnx.ModelProto, deploy64: nn.Module, data: InputData, seed: int, eps: float | None):
    """A copy of ``graph`` with one visible Conv's weight scaled by ``1 + eps`` (``eps`` None: its bias shifted
    by 1e-4 of its output's RMS), as a broken exporter or simplifier would leave it, and the fault's effect (the
    float64 outputs' relative change with the same change made to the float64 deploy form); None if none is
    found."""
    conv = visible_conv(deploy64, data, seed, bias=eps is None)
    if conv is None:
        return None
    graph = copy.deepcopy(graph)
    init = _initializer(graph, conv.weight if eps is not None else conv.bias)
    if init is None:
        return None
    shift = 1e-4 * _output_rms(deploy64, conv, data) if eps is None else 0.0
    value = numpy_helper.to_array(init).astype(np.float64)
    value = value * (1 + eps) if eps is not None else value + shift
    init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
    before = _outputs64(deploy64, data)
    param = conv.weight if eps is not None else conv.bias
    saved = param.detach().clone()
    with torch.no_grad():
        param.mul_(1 + eps) if eps is not None else param.add_(shift)
    effect = float((_outputs64(deploy64, data) - before).norm() / before.norm())
    with torch.no_grad():
        param.copy_(saved)
    return graph, effect


GRAPH_FAULTS = {**{f"graph Conv weight x (1 + {eps:g})": eps for eps in EPSILONS}, "graph Conv bias + 1e-4 RMS": None}


# ----------------------------------------------------------------------------------------------- judging

def gate_ratio(report: VerifyReport) -> tuple[float, str]:
    """The largest value / limit among the report's conditions, and where; > 1 is a FAIL."""
    worst, where = 0.0, ""
    checks = ([(c.name, c) for c in report.checks] + [(b.name, b.isolated) for b in report.blocks]
              + [(c.name, c) for c in report.fold_exactness])
    for name, check in checks:
        for condition in check.conditions:
            if condition.at_least:
                ratio = condition.limit / condition.value if condition.value else math.inf
            elif condition.limit > 0:
                ratio = (condition.value if condition.value is not None else math.inf) / condition.limit
            else:
                ratio = 0.0 if condition.passed else math.inf
            if ratio > worst:
                worst, where = ratio, f"{name}: {condition.figure}"
    return worst, where


@dataclass
class Graphs:
    fp32: onnx.ModelProto
    fp16: onnx.ModelProto


def export_graphs(deploy: nn.Module, data: InputData) -> Graphs:
    shape = tuple(data.inputs.shape)
    options = runtime_options(deploy, RuntimeTarget("onnxruntime", "cpu", shape[0], False))
    raw = onnx_graph.check_graph(onnx_graph.export_onnx(set_runtime_options(deploy, **options).float(), shape))
    graph = onnx_graph.check_graph(onnx_graph.simplify(raw))
    return Graphs(graph, onnx_graph.check_graph(to_fp16(graph)))


def judge(reference: Reference, kind: str, deploy: nn.Module, deploy64: nn.Module, graph: onnx.ModelProto | None,
          threads: int) -> tuple[bool, float, str, float]:
    if kind == "fold":
        report = verify_fold(reference, deploy, deploy64)
    elif kind == "openvino fp32":
        report = verify(reference, OpenVinoRunner(graph.SerializeToString(), inference_precision="f32",
                                                  threads=threads), precision="fp32")
    else:
        report = verify(reference, OnnxRuntimeRunner(graph.SerializeToString(), threads=threads),
                        precision="fp16" if kind == "onnx fp16" else "fp32")
    ratio, where = gate_ratio(report)
    return report.passed, ratio, where, report.checks[0].candidate.rel_l2


def run(args) -> dict:
    cases = model_cases()
    chosen = list(cases) if args.models == "all" else [m for m in cases if any(k in m for k in args.models.split(","))]
    threads = sorted({int(t) for t in args.threads.split(",")}, reverse=True)  # one thread last: faults reuse it
    rows: list[dict] = []
    started = time.perf_counter()

    def record(case, seed, t, fault, kind, verdict, effect=0.0):
        passed, ratio, where, error = verdict
        rows.append({"model": case, "seed": seed, "threads": t, "case": fault, "candidate": kind,
                     "passed": passed, "ratio": ratio, "where": where, "rel_l2": error, "effect": effect})

    for case in chosen:
        case_start = time.perf_counter()
        for seed in range(args.seeds):
            torch.set_num_threads(threads[0])
            model, data = cases[case](seed)
            deploy, deploy64, _ = fold_both(model, input_shape=(1, *data.inputs.shape[1:]), dtype="fp32")
            graphs = export_graphs(deploy, data)
            for t in threads:
                torch.set_num_threads(t)
                reference = Reference(model, data, "training form", deploy=deploy64)
                for kind, graph in (("fold", None), ("onnx fp32", graphs.fp32), ("openvino fp32", graphs.fp32),
                                    ("onnx fp16", graphs.fp16)):
                    record(case, seed, t, "honest", kind, judge(reference, kind, deploy, deploy64, graph, t))
            if args.faults == "none":
                continue
            t = threads[-1]
            for fault, eps in GRAPH_FAULTS.items():
                made = graph_fault(graphs.fp32, deploy64, data, seed, eps)
                if made is not None:
                    record(case, seed, t, fault, "onnx fp32",
                           judge(reference, "onnx fp32", deploy, deploy64, made[0], t), made[1])
            for fault, apply in FOLD_FAULTS.items():
                wrong64 = apply(copy.deepcopy(deploy64), model, data, seed)
                if wrong64 is None:
                    continue
                # a buggy fold gives its float64 form the same fault
                truth = _outputs64(deploy64, data)
                effect = float((_outputs64(wrong64, data) - truth).norm() / truth.norm())
                record(case, seed, t, fault, "fold",
                       judge(reference, "fold", copy.deepcopy(wrong64).float(), wrong64, None, t), effect)
        print(f"{case}: {args.seeds} seeds in {time.perf_counter() - case_start:.0f} s", file=sys.stderr, flush=True)
    return {"rows": rows, "seconds": time.perf_counter() - started}


def _tally(rows: list[dict], fields: tuple[str, ...]) -> list[dict]:
    """Rows grouped by ``fields``: runs, failed, failure rate and the median, smallest and largest gate ratio."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[f] for f in fields), []).append(r)
    out = []
    for key, group in groups.items():
        ratios = [r["ratio"] for r in group]
        failed = sum(not r["passed"] for r in group)
        out.append({**dict(zip(fields, key, strict=True)), "runs": len(group), "failed": failed,
                    "failure_rate": failed / len(group), "median_ratio": statistics.median(ratios),
                    "min_ratio": min(ratios), "max_ratio": max(ratios)})
    return out


def summarize(rows: list[dict]) -> dict:
    honest = [r for r in rows if r["case"] == "honest"]
    faulty = [r for r in rows if r["case"] != "honest"]
    worst_honest = max(honest, key=lambda r: r["ratio"], default=None)
    strong = [r for r in faulty if not r["case"].endswith("1e-05)")]
    weakest_fault = min(strong, key=lambda r: r["ratio"], default=None)
    honest_error = {}
    for r in honest:
        if r["candidate"] == "onnx fp32":
            honest_error.setdefault(r["model"], []).append(r["rel_l2"])
    missed = [{**r, "honest_onnx_rel_l2": statistics.median(honest_error.get(r["model"], [float("nan")]))}
              for r in strong if r["passed"]]
    return {
        "honest_by_model": _tally(honest, ("model",)),
        "table": _tally(rows, ("case", "candidate")),
        "honest_failures": [r for r in honest if not r["passed"]],
        "largest_honest_ratio": worst_honest,
        "smallest_fault_ratio_from_1e-4": weakest_fault,
        "missed_faults_from_1e-4": missed,
    }


def _rate(row: dict) -> str:
    """The failure rate: exactly 0 % or 100 %, else with the count, so 419 of 420 never reads as 100 %."""
    if row["failed"] in (0, row["runs"]):
        return f"{100 * row['failure_rate']:.0f} %"
    return f"{100 * row['failure_rate']:.1f} % ({row['failed']} of {row['runs']})"


def markdown(summary: dict, meta: dict, args) -> str:
    lines = [f"# Gate confusion table on {meta['machine']['cpu']}", "",
             f"{args.seeds} seeds per model, threads {args.threads}; ISA {meta['isa']}. Gate ratio: the largest "
             "value / limit among a verdict's conditions (PASS at most 1). Honest rows must fail 0 %; fault rows "
             "from eps = 1e-4 up must fail 100 %.", "",
             "| case | candidate | runs | failed | median ratio | min ratio | max ratio |",
             "|---|---|---|---|---|---|---|"]
    for row in summary["table"]:
        lines.append(f"| {row['case']} | {row['candidate']} | {row['runs']} | {_rate(row)} | "
                     f"{row['median_ratio']:.3g} | {row['min_ratio']:.3g} | {row['max_ratio']:.3g} |")
    honest, fault = summary["largest_honest_ratio"], summary["smallest_fault_ratio_from_1e-4"]
    lines += ["", "Margin: largest honest ratio "
              + (f"{honest['ratio']:.3g} ({honest['model']}, {honest['candidate']}, seed {honest['seed']}, "
                 f"{honest['threads']} thread(s), {honest['where']})" if honest else "-")
              + "; smallest fault ratio from eps = 1e-4 "
              + (f"{fault['ratio']:.3g} ({fault['model']}, {fault['case']}, seed {fault['seed']}, {fault['where']})"
                 if fault else "-") + "."]
    lines += ["", "Honest verdicts per model (every candidate, seed and thread count):", "",
              "| model | runs | failed | median ratio | max ratio |", "|---|---|---|---|---|"]
    lines += [f"| {row['model']} | {row['runs']} | {row['failed']} | {row['median_ratio']:.3g} | "
              f"{row['max_ratio']:.3g} |" for row in summary["honest_by_model"]]
    lines.append("")
    for miss in summary["missed_faults_from_1e-4"]:
        lines.append(f"- missed: {miss['model']}, seed {miss['seed']}, {miss['case']} ({miss['candidate']}): the "
                     f"fault moves the float64 outputs by {miss['effect']:.2g}, "
                     f"{miss['effect'] / miss['honest_onnx_rel_l2']:.2g}x the honest ONNX fp32 graph's own error "
                     f"({miss['honest_onnx_rel_l2']:.2g}); gate ratio {miss['ratio']:.3g}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--models", default="all", help="all, or comma-separated parts of model names")
    parser.add_argument("--faults", default="all", choices=("all", "none"))
    parser.add_argument("--name", default="gates", help="results file name (without suffix)")
    args = parser.parse_args()
    from xvol_export.env import cpu_isa

    result = run(args)
    summary = summarize(result["rows"])
    meta = {"machine": machine(), "isa": cpu_isa(), "seeds": args.seeds, "threads": args.threads,
            "seconds": result["seconds"]}
    text = markdown(summary, meta, args)
    print(text)
    write_json(args.name, {**meta, **summary, "rows": result["rows"]})
    (RESULTS / f"{args.name}.md").write_text(text)


if __name__ == "__main__":
    main()
