"""Fold benchmark on XVol-ResNet-50 (224x224, BatchNorm statistics calibrated on photo crops).

Both networks (XVol-ResNet-50 and the plain ResNet-50) get seeded BatchNorm gamma/beta and running
statistics calibrated on 64 photo crops (`_common.realistic_model`); a model whose outputs hardly
depend on its input is refused. Measures, in one run: the library fold's wall time; the
end-to-end error of the fp32 deploy model against the fp32 training form and against a float64
reference, on 8 held-out photo crops, with the training form's input dependence; eager PyTorch
latency (batch 1) of the training form, the dense/split/auto deploy forms and the plain
ResNet-50; and the whole `xvol fold --data` command (load, fold, verify on 2 of the crops,
save) as a user runs it.

    python benchmarks/fold.py [--iterations 20] [--threads N]

Prints a table and writes benchmarks/results/fold.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xvol_export import XVolution, fold  # noqa: E402
from xvol_export.checkpoint import save_checkpoint  # noqa: E402
from xvol_export.fold import fold_xvolution  # noqa: E402
from xvol_export.fold.cost import choose_layout  # noqa: E402
from xvol_export.testing import (
    input_dependence,  # noqa: E402
    randomize_batchnorm,  # noqa: E402
)
from xvol_export.utils import relative_l2  # noqa: E402

from _common import machine, photo_crops, realistic_model, time_interleaved, write_json  # noqa: E402

SHAPE = (1, 3, 224, 224)  # latency
ERROR_BATCH = 8  # held-out photo crops for the error figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = realistic_model("xvol_resnet50", SHAPE[-1], seed=0)
    crops = torch.from_numpy(photo_crops(SHAPE[-1], ERROR_BATCH, "holdout"))
    x = crops[:SHAPE[0]]

    fold_times, deploys = [], {}
    for layout in ("auto", "dense", "split"):
        start = time.perf_counter()
        deploys[layout], report = fold(model, layout=layout)
        fold_times.append(time.perf_counter() - start)
        if layout == "auto":
            auto_report = report

    with torch.inference_mode():
        y32 = model(crops)
        y64 = copy.deepcopy(model).double()(crops.double())
        dependence = input_dependence(y64)
        errors = {}
        for layout, deploy in deploys.items():
            y = deploy(crops)
            errors[layout] = {
                "rel_l2_vs_fp32_training": relative_l2(y, y32),
                "rel_l2_vs_fp64_reference": relative_l2(y, y64),
                "max_abs_vs_fp32_training": float((y - y32).abs().max()),
                "top1_agrees": bool((y.argmax(1) == y32.argmax(1)).all()),
            }
        errors["training_fp32"] = {"rel_l2_vs_fp64_reference": relative_l2(y32, y64)}

    plain = realistic_model("xvol_resnet50", SHAPE[-1], seed=0, stages=())
    plain_folded, _ = fold(plain)
    variants = {
        "training form": model,
        "deploy dense": deploys["dense"],
        "deploy split": deploys["split"],
        "deploy auto": deploys["auto"],
        "plain ResNet-50 (BN folded)": plain_folded,
    }

    def runner(m):
        def run():
            with torch.inference_mode():
                m(x)
        return run

    latency = time_interleaved({k: runner(m) for k, m in variants.items()}, args.iterations)
    base = latency["training form"]["median_ms"]
    for stats in latency.values():
        stats["vs_training"] = stats["median_ms"] / base

    blocks = block_layouts(args.iterations)
    cli = time_cli(model, crops[:2])

    print(f"XVol-ResNet-50 {'x'.join(map(str, SHAPE))} on {machine()['cpu']}, {torch.get_num_threads()} threads")
    print(f"fold (library, median of 3 layouts): {sorted(fold_times)[1]:.2f} s; "
          f"xvol fold command: {cli['wall_s']:.2f} s (load, fold, verify, save)")
    same_as_split = set(auto_report.layouts.values()) == {"split"}
    print(f"auto chose: {sorted(set(auto_report.layouts.values()))}"
          + (" for every block: the same model as split, so their latency gap is noise" if same_as_split else ""))
    classes = int(y64.argmax(1).unique().numel())
    print(f"errors on {ERROR_BATCH} held-out photo crops; input dependence of the logits "
          f"{dependence:.3f} (0 = the same for every input); distinct top-1 classes: {classes}")
    print(f"{'form':32} {'rel L2 vs fp32':>15} {'rel L2 vs fp64':>15}")
    for name, e in errors.items():
        vs32 = e.get("rel_l2_vs_fp32_training")
        print(f"{name:32} {'-' if vs32 is None else f'{vs32:.3g}':>15} {e['rel_l2_vs_fp64_reference']:15.3g}")
    print(f"{'eager latency':32} {'median ms':>10} {'min ms':>8} {'vs training':>12}")
    for name, s in latency.items():
        print(f"{name:32} {s['median_ms']:10.2f} {s['min_ms']:8.2f} {s['vs_training']:12.3f}")

    print(f"{'one block, 256 ch, 14x14':32} {'dense ms':>10} {'split ms':>9} {'auto chose':>11}")
    for b in blocks:
        print(f"{'dilation ' + str(b['dilation']):32} {b['dense_ms']:10.3f} {b['split_ms']:9.3f} {b['auto']:>11}")

    path = write_json("fold", {
        "benchmark": "fold",
        "model": "xvol_resnet50 (stages=(3,)), torch seed 0; BatchNorm gamma/beta seeded (seed 0) and statistics "
                 "calibrated on 64 photo crops (xvol_export.testing.realistic_batchnorm)",
        "input_shape": list(SHAPE),
        "error_inputs": f"{ERROR_BATCH} held-out photo crops, 3x224x224 (samples/make_photo_crops.py)",
        "input_dependence": dependence,
        "distinct_top1_classes": classes,
        "machine": machine(),
        "fold_seconds": {"auto": fold_times[0], "dense": fold_times[1], "split": fold_times[2]},
        "cli_fold": cli,
        "auto_layouts": auto_report.layouts,
        "auto_is_split": same_as_split,
        "errors": errors,
        "eager_latency": latency,
        "block_layouts": blocks,
    })
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


def block_layouts(iterations: int) -> list[dict]:
    """Check the auto cost model where it matters: one stage-3 block (256 ch, 14x14), dilation 1 and 2."""
    rows = []
    x = torch.randn(1, 256, 14, 14, generator=torch.Generator().manual_seed(2))
    for dilation in (1, 2):
        block = randomize_batchnorm(XVolution(256, 256, dilation=dilation), seed=dilation).eval()
        forms = {layout: fold_xvolution(block, layout) for layout in ("dense", "split")}
        auto, reason = choose_layout(block.config(), (14, 14))

        def runner(m):
            def run():
                with torch.inference_mode():
                    m(x)
            return run

        t = time_interleaved({k: runner(m) for k, m in forms.items()}, 5 * iterations)
        faster = min(t, key=lambda k: t[k]["median_ms"])
        rows.append({"dilation": dilation, "dense_ms": t["dense"]["median_ms"], "split_ms": t["split"]["median_ms"],
                     "auto": auto, "auto_reason": reason, "measured_faster": faster})
    return rows


def time_cli(model, inputs: torch.Tensor) -> dict:
    """`xvol fold --data` on a saved checkpoint and ``inputs``, as a fresh process (imports included).

    Real inputs, like the error figures, not the default random normal ones: on noise the
    calibrated network runs far out of its range (logits about 30 times larger)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "xvol_resnet50.pth"
        save_checkpoint(model, source)
        data = Path(tmp) / "inputs.npz"
        np.savez(data, input=inputs.numpy())
        command = [sys.executable, "-m", "xvol_export", "fold", str(source), "-o", str(Path(tmp) / "deploy.pth"),
                   "--data", str(data), "--json", str(Path(tmp) / "report.json")]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
        wall = time.perf_counter() - start
        import json

        report = json.loads((Path(tmp) / "report.json").read_text()) if done.returncode == 0 else {}
    if done.returncode != 0:
        raise SystemExit(f"xvol fold failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return {"wall_s": wall, "exit_code": done.returncode, "stages_s": report.get("timings_s"),
            "rel_l2": report["verification"]["output"]["rel_l2"],
            "verify_inputs": f"--data: {len(inputs)} held-out photo crops (the default batch is 2)"}


if __name__ == "__main__":
    main()
