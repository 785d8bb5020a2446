"""Train ``xvol_resnet_tiny`` on scikit-learn's handwritten digits: a small, real, reproducible sample.

Data: ``sklearn.datasets.load_digits`` (1,797 real 8x8 grayscale images, values 0..16, ten classes),
which ships inside scikit-learn, so nothing is downloaded. Preprocessing: scale to [0, 1], normalize
with one mean/std computed on the training split, upsample to 32x32 (bilinear, align_corners=False).
Split: stratified, 20 % held out, ``train_test_split(random_state=0)``.

Writes, next to this script unless ``--out-dir`` says otherwise:

* ``digits_xvol_resnet_tiny.pth``: the trained training-form checkpoint (eval mode, trained
  BatchNorm statistics), with the dataset, split, preprocessing and accuracy in its metadata;
* ``digits_holdout.npz``: the preprocessed held-out images, ``input`` float32 ``(N, 1, 32, 32)``
  and ``labels`` int64 ``(N,)``: the file to pass as ``--data`` to ``xvol fold``;
* ``digits_calib.npz``: the first 256 preprocessed training images, for ``--calib`` of an int8
  export (calibration never sees the held-out images).

Usage: ``python samples/train_digits.py [--epochs 12] [--out-dir DIR] [--data-only]``
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import xvol_export
from xvol_export.checkpoint import save_checkpoint
from xvol_export.env import cpu_name
from xvol_export.inputs import save_npz

HERE = Path(__file__).resolve().parent
ARCH = "xvol_resnet_tiny"
MODEL_CONFIG = {"in_chans": 1, "num_classes": 10, "stages": (2, 3)}
CHECKPOINT_NAME = "digits_xvol_resnet_tiny.pth"
HOLDOUT_NAME = "digits_holdout.npz"
CALIB_NAME = "digits_calib.npz"  # int8 calibration images: taken from the training split, never the held-out one
CALIB_COUNT = 256
SPLIT_SEED = 0
HOLDOUT_FRACTION = 0.2
TORCH_SEED = 0
SIZE = 32
MAX_SHIFT = 2  # augmentation: random translations of up to +-2 px (at 32x32)


def load_split():
    """The fixed stratified split of the raw digits, scaled to [0, 1]: (x_train, x_test, y_train, y_test)."""
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # (1797, 8, 8), values 0..16 -> [0, 1]
    labels = digits.target.astype(np.int64)
    return train_test_split(images, labels, test_size=HOLDOUT_FRACTION, random_state=SPLIT_SEED,
                            stratify=labels)


def preprocess(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """[0, 1] images (N, 8, 8) -> normalized float32 tensor (N, 1, 32, 32)."""
    x = (torch.from_numpy(images).float() - mean) / std
    x = F.interpolate(x.unsqueeze(1), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x.contiguous()


def random_shift(x: torch.Tensor, fill: float, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random (dy, dx) in [-MAX_SHIFT, MAX_SHIFT], filling with ``fill``."""
    n, _, h, w = x.shape
    padded = F.pad(x, (MAX_SHIFT,) * 4, value=fill)
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch])
        loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
    return loss / len(x), correct / len(x)


def fit(model: torch.nn.Module, batch_of: Callable[[torch.Tensor], torch.Tensor], y_train: torch.Tensor,
        x_test: torch.Tensor, y_test: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
        generator: torch.Generator) -> float:
    """Train ``model`` (SGD with Nesterov momentum, one epoch of linear warm-up, then cosine to zero) on the
    training images ``batch_of(indices)`` (augmented, normalized) and ``y_train``, shuffled by ``generator``;
    prints each epoch with the held-out loss and accuracy. Returns the last epoch's training loss."""
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    total_steps = epochs * steps_per_epoch
    warmup = steps_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / warmup if step < warmup
        else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup))),
    )
    start = time.perf_counter()
    train_loss = float("nan")
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        seen, loss_sum, correct = 0, 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb, yb = batch_of(idx), y_train[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        train_loss = loss_sum / seen
        test_loss, test_acc = evaluate(model, x_test, y_test)
        print(f"epoch {epoch:3d}/{epochs}  lr {scheduler.get_last_lr()[0]:.4f}  "
              f"train loss {train_loss:.4f} acc {correct / seen:.4f}  "
              f"held-out loss {test_loss:.4f} acc {test_acc:.4f}  ({time.perf_counter() - start:.1f} s)",
              flush=True)
    return train_loss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE, help="output folder (default: this script's folder)")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs (default: 12)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate (default: 0.1)")
    parser.add_argument("--data-only", action="store_true",
                        help="only write the held-out and calibration .npz files (no training)")
    args = parser.parse_args(argv)
    if not args.out_dir.is_dir():
        parser.error(f"--out-dir {args.out_dir}: no such folder")

    torch.manual_seed(TORCH_SEED)
    generator = torch.Generator().manual_seed(TORCH_SEED)

    x_train_raw, x_test_raw, y_train_np, y_test_np = load_split()
    mean, std = float(x_train_raw.mean()), float(x_train_raw.std())
    x_train, x_test = preprocess(x_train_raw, mean, std), preprocess(x_test_raw, mean, std)
    y_train, y_test = torch.from_numpy(y_train_np), torch.from_numpy(y_test_np)
    holdout_path, calib_path = args.out_dir / HOLDOUT_NAME, args.out_dir / CALIB_NAME
    save_npz(holdout_path, input=x_test.numpy().astype(np.float32), labels=y_test.numpy().astype(np.int64))
    save_npz(calib_path, input=x_train[:CALIB_COUNT].numpy().astype(np.float32),
             labels=y_train[:CALIB_COUNT].numpy().astype(np.int64))
    print(f"wrote {holdout_path} and {calib_path}")
    if args.data_only:
        return 0
    fill = (0.0 - mean) / std  # the normalized value of a blank pixel
    print(f"digits: {len(x_train)} train / {len(x_test)} held out; mean {mean:.6f}, std {std:.6f}")

    model = xvol_export.create_model(ARCH, **MODEL_CONFIG)
    start = time.perf_counter()
    fit(model, lambda idx: random_shift(x_train[idx], fill, generator), y_train, x_test, y_test, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, generator=generator)
    train_seconds = time.perf_counter() - start

    model.eval()
    _, test_acc = evaluate(model, x_test, y_test)
    correct = round(test_acc * len(x_test))
    metadata = {
        "dataset": "sklearn.datasets.load_digits",
        "dataset_note": "1,797 real 8x8 grayscale handwritten digits (values 0..16), ten classes",
        "split": {
            "method": "sklearn.model_selection.train_test_split(test_size=0.2, random_state=0, stratify=labels)",
            "seed": SPLIT_SEED,
            "holdout_fraction": HOLDOUT_FRACTION,
            "train_size": len(x_train),
            "holdout_size": len(x_test),
        },
        "preprocessing": {
            "scale": "pixel / 16 -> [0, 1]",
            "mean": mean,
            "std": std,
            "normalize": "(x - mean) / std, mean/std over all pixels of the training split",
            "resize": "torch.nn.functional.interpolate(mode='bilinear', align_corners=False), 8x8 -> 32x32",
            "size": SIZE,
            "channels": 1,
        },
        "augmentation": f"random translation of up to +-{MAX_SHIFT} px at 32x32, blank fill",
        "holdout_accuracy": test_acc,
        "holdout_correct": f"{correct}/{len(x_test)}",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"SGD(lr={args.lr}, momentum=0.9, nesterov, weight_decay=5e-4), 1-epoch warm-up + cosine",
        "seed": TORCH_SEED,
        "training_seconds": round(train_seconds, 1),
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "numpy_version": str(np.__version__),
        "sklearn_version": str(__import__("sklearn").__version__),
        "script": "samples/train_digits.py",
    }
    ckpt_path = save_checkpoint(model.eval(), args.out_dir / CHECKPOINT_NAME, metadata=metadata, force=True)
    print(f"held-out accuracy {test_acc:.4f} ({correct}/{len(x_test)}); trained in {train_seconds:.1f} s")
    print(f"wrote {ckpt_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
