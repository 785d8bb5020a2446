"""Deterministic photo crops for calibrating BatchNorm and checking models on real images.

The two photos that ship inside scikit-learn (``sklearn.datasets.load_sample_images()``:
china.jpg and flower.jpg, 427x640 RGB; reading them needs Pillow) are cut into square crops at
seeded random positions and scales, resized with ``F.interpolate(mode="bilinear",
antialias=True)``, rounded to uint8 pixels as an image file would hold them, and normalized with
the ImageNet mean and std. Two disjoint splits: ``calib`` crops lie in the left half of each photo
(columns 0..319) and ``holdout`` crops in the right half (columns 320..639), so no held-out pixel
was ever seen by calibration. Crop ``i`` of a split does not depend on ``count``: the first 8
crops of 64 are the 8 crops of 8.

    python samples/make_photo_crops.py            # writes tests/data/photo_crops.npz
    python samples/make_photo_crops.py --out FILE --size 64 --count 64

Benchmarks import :func:`photo_crops`; the tests read the small committed file this writes.
"""

from __future__ import annotations

import argparse
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # ImageNet, RGB
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SPLITS = ("calib", "holdout")
# A crop's side is uniform in [MIN_SIDE, 1] times the half-photo's short side (320 px).
MIN_SIDE = 0.3
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "photo_crops.npz"


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The two sample photos as uint8 (427, 640, 3) arrays: china.jpg, flower.jpg."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("photo crops need scikit-learn and Pillow: pip install -e '.[samples]'") from err
    data = load_sample_images()
    by_name = {Path(name).name: image for name, image in zip(data.filenames, data.images, strict=True)}
    return tuple(np.array(by_name[name], dtype=np.uint8, order="C") for name in ("china.jpg", "flower.jpg"))


def photo_crops_uint8(size: int, count: int, split: str, seed: int = 0) -> np.ndarray:
    """``count`` crops of ``split`` as uint8 RGB pixels, shape ``(count, 3, size, size)``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if size < 1 or count < 0:
        raise ValueError(f"size must be positive and count non-negative, got size={size}, count={count}")
    photos = _photos()
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    out = np.empty((count, 3, size, size), dtype=np.uint8)
    for i in range(count):
        photo = photos[i % len(photos)]  # alternate the photos: half the crops from each
        height, width, _ = photo.shape
        half = width // 2
        left = 0 if split == "calib" else half
        short = min(height, half)
        u_side, u_top, u_left = rng.random(3)  # a fixed number of draws per crop keeps crops count-independent
        side = int(round(short * (MIN_SIDE + (1.0 - MIN_SIDE) * u_side)))
        top = int(u_top * (height - side + 1))
        col = left + int(u_left * (half - side + 1))
        crop = torch.from_numpy(photo[top:top + side, col:col + side]).permute(2, 0, 1)[None].float() / 255.0
        resized = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i] = (resized[0] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 3, H, W)`` pixels to float32 inputs: ``(pixel / 255 - mean) / std`` per channel."""
    x = pixels.astype(np.float32) / 255.0
    return ((x - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32)


def photo_crops(size: int, count: int, split: str, seed: int = 0) -> np.ndarray:
    """``count`` normalized crops of ``split`` ("calib" or "holdout"), float32 ``(count, 3, size, size)``."""
    return normalize(photo_crops_uint8(size, count, split, seed))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=64, help="crops per split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    arrays = {f"{split}_uint8": photo_crops_uint8(args.size, args.count, split, args.seed) for split in SPLITS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays, mean=MEAN, std=STD, seed=np.int64(args.seed))
    tmp.replace(args.out)
    out = args.out.resolve()
    shown = out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out
    print(f"wrote {shown}: {args.count} calib + {args.count} holdout crops at {args.size}x{args.size}, "
          f"{args.out.stat().st_size / 1024:.0f} KiB", file=sys.stderr)


if __name__ == "__main__":
    main()
