"""xvol's fold of timm's re-parameterizable models against timm's own ``reparameterize_model``.

For each model (random weights, BatchNorm statistics calibrated on photo crops as training sets them) and
each seed: the training form in float64 is the truth; xvol folds a float64 copy (blocks through their own
``reparameterize()``/``fuse()``, then every norm next to a conv or linear) and casts the result to fp32 once;
timm's ``reparameterize_model`` folds the fp32 model in fp32. Both deploy models and the fp32 training form
run the same held-out photo crops; the table gives each one's relative L2 error against the truth, and the
paired ratio xvol / timm with a bootstrap 95 % interval of its median over seeds. Also: xvol's float64 fold's
own error (exactness) and what it left unfolded. Needs timm (not part of xvol's test environment).

    python benchmarks/timm_reparam.py [--models repvgg_a0 mobileone_s0 ...] [--seeds 3] [--batch 4]
"""

from __future__ import annotations

import argparse
import collections
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xvol_export.fold import fold  # noqa: E402
from xvol_export.testing import realistic_batchnorm  # noqa: E402

from _common import bootstrap_median_ci, machine, photo_crops, write_json  # noqa: E402

MODELS = ["repvgg_a0", "mobileone_s0", "fastvit_t8", "repghostnet_050", "repvit_m0_9", "resnet18"]
SIZE = 224


def rel_l2(candidate: torch.Tensor, truth: torch.Tensor) -> float:
    return float((candidate.double() - truth).norm() / truth.norm())


def measure(timm, reparameterize_model, name: str, seed: int, inputs: torch.Tensor) -> dict:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    realistic_batchnorm(model, photo_crops(SIZE, 32, "calib", seed=seed), seed=seed).eval()
    model32 = copy.deepcopy(model)  # one copy per dtype: some timm models cache tensors of the dtype they ran in
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        truth = model64(inputs.double())
        deploy64, report = fold(model64, input_shape=(1, 3, SIZE, SIZE))
        exact = rel_l2(deploy64(inputs.double()), truth)
        ours = rel_l2(copy.deepcopy(deploy64).float()(inputs), truth)
        training = rel_l2(model32(inputs), truth)
        theirs = rel_l2(reparameterize_model(copy.deepcopy(model32))(inputs), truth)
    return {"model": name, "seed": seed, "float64_fold_rel_l2": exact, "fp32_training_rel_l2": training,
            "xvol_fp32_rel_l2": ours, "timm_fp32_rel_l2": theirs, "ratio_xvol_to_timm": ours / theirs,
            "blocks": dict(collections.Counter(b.family for b in report.blocks)),
            "fused": dict(collections.Counter(f["kind"] for f in report.fused)), "left": report.left,
            "params": [report.params_before, report.params_after]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    try:
        import timm
        from timm.utils.model import reparameterize_model
    except ImportError:
        sys.exit("needs timm (pip install timm: it brings a CUDA PyTorch unless torch is installed first)")
    inputs = torch.from_numpy(photo_crops(SIZE, args.batch, "holdout"))
    rows, summary = [], {}
    print(f"{'model':18} {'seed':>4} {'fp64 fold':>10} {'fp32 train':>11} {'xvol fp32':>10} {'timm fp32':>10} "
          f"{'xvol/timm':>9}  left")
    for name in args.models:
        for seed in range(args.seeds):
            row = measure(timm, reparameterize_model, name, seed, inputs)
            rows.append(row)
            print(f"{name:18} {seed:>4} {row['float64_fold_rel_l2']:10.2e} {row['fp32_training_rel_l2']:11.2e} "
                  f"{row['xvol_fp32_rel_l2']:10.2e} {row['timm_fp32_rel_l2']:10.2e} {row['ratio_xvol_to_timm']:9.3f}"
                  f"  {len(row['left'])}")
        ratios = [r["ratio_xvol_to_timm"] for r in rows if r["model"] == name]
        low, high = bootstrap_median_ci(ratios) if len(ratios) > 1 else (ratios[0], ratios[0])
        summary[name] = {"median_ratio_xvol_to_timm": statistics.median(ratios), "ci95": [low, high]}
        print(f"{name:18} median xvol/timm {statistics.median(ratios):.3f} (95 % CI {low:.3f} .. {high:.3f})")
    path = write_json("timm_reparam", {"timm": timm.__version__, "size": SIZE, "batch": args.batch,
                                       "machine": machine(), "rows": rows, "summary": summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
