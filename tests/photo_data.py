"""Real photo crops for tests: ``from photo_data import photo_crops, write_npz``.

``tests/data/photo_crops.npz`` holds 64 ``calib`` and 64 ``holdout`` 64x64 RGB crops of the two
photos that ship with scikit-learn, as uint8 pixels; ``samples/make_photo_crops.py`` made it
(see ``samples/README.md``). Calibration crops come from the left half of each photo, held-out
ones from the right half, so the two never overlap. Reading the file needs only numpy.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

PHOTO_CROPS = Path(__file__).resolve().parent / "data" / "photo_crops.npz"
SPLITS = ("calib", "holdout")


@lru_cache(maxsize=None)
def _normalized(split: str) -> np.ndarray:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    with np.load(PHOTO_CROPS) as data:
        pixels, mean, std = data[f"{split}_uint8"], data["mean"], data["std"]
    x = pixels.astype(np.float32) / 255.0
    out = ((x - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    out.setflags(write=False)
    return out


def photo_crops(split: str) -> np.ndarray:
    """The 64 crops of ``split`` ("calib" or "holdout"), ImageNet-normalized float32 ``(64, 3, 64, 64)``."""
    return _normalized(split).copy()


def write_npz(tmp_path, split: str, count: int | None = None) -> Path:
    """Write the first ``count`` (default all) crops of ``split`` as ``TMP/photo_SPLIT.npz`` with an
    ``input`` array, the form ``xvol --data`` and ``--calib`` read; return its path."""
    path = Path(tmp_path) / f"photo_{split}.npz"
    np.savez(path, input=photo_crops(split)[:count])
    return path
