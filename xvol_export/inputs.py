"""Input shapes (trtexec, Polygraphy and plain spellings) and input data (seeded random or .npz)."""

from __future__ import annotations

import os
import re
import secrets
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xvol_export.errors import XvolError
from xvol_export.limits import check_fits, check_input_file, check_seed, format_bytes, tensor_bytes

if TYPE_CHECKING:
    import torch

_SHAPE = re.compile(
    r"^\s*(?:(?P<name>[A-Za-z_][\w./-]*)\s*:)?\s*(?:\[(?P<bracketed>[^\[\]]*)\]|(?P<plain>[^\[\]]*))\s*$"
)


@dataclass(frozen=True)
class InputShape:
    dims: tuple[int, ...]
    name: str | None = None

    def __str__(self) -> str:
        text = "x".join(str(d) for d in self.dims)
        return f"{self.name}:{text}" if self.name else text


def parse_shape(text: str) -> InputShape:
    """Parse ``1x3x224x224``, ``[1,3,224,224]`` or ``1,3,224,224``, each with an optional ``name:``."""
    match = _SHAPE.match(text or "")
    dims = (match.group("bracketed") if match.group("bracketed") is not None else match.group("plain")) if match else ""
    separators = set(re.findall(r"[x,]", dims))
    parts = [p.strip() for p in re.split(r"[x,]", dims)]
    if (
        not match
        or len(separators) > 1
        or not all(re.fullmatch(r"[0-9]+", p) and int(p) > 0 for p in parts)
    ):
        raise XvolError(
            f"Cannot read the shape '{text}'. Write positive integers as 1x3x224x224, [1,3,224,224] or "
            "1,3,224,224, optionally prefixed by an input name, as in input:1x3x224x224."
        )
    return InputShape(tuple(int(p) for p in parts), match.group("name"))


# Input values beyond this (2**64, about the square root of float32's largest value) overflow float32 as soon
# as the model multiplies two activations (the attention's q.k); real, preprocessed inputs are of order 1.
MAX_INPUT_MAGNITUDE = 2.0**64


def fresh_seed() -> int:
    return secrets.randbelow(2**31)


def random_inputs(shape: tuple[int, ...], seed: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard-normal inputs from a seeded generator (reproducible across runs and machines), float32 unless
    ``dtype`` says otherwise.

    :class:`XvolError` for a seed outside 0..2**32-1 and for a shape whose inputs cannot fit in memory."""
    import torch

    dtype = dtype or torch.float32
    check_seed(seed)
    check_fits(tensor_bytes(shape, 8 + torch.empty(0, dtype=dtype).element_size()),
               f"random inputs of shape {'x'.join(map(str, shape))}", "Give a smaller --input-shape or batch.")
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


@dataclass
class InputData:
    """Inputs (and optional labels) with where they came from; ``synthetic``: made up (random), not real data."""

    inputs: torch.Tensor
    labels: torch.Tensor | None
    source: str
    synthetic: bool = False


def load_npz(path: str | os.PathLike) -> InputData:
    """Read inputs from ``.npz``: the array ``input`` (or the only non-label array) and optional ``labels``."""
    path = check_input_file(path, ".npz file")  # a named pipe would block for ever
    if not path.is_file():
        raise XvolError(f"{path}: no such file. Give an .npz file with an 'input' array (and optional 'labels').")
    try:
        _check_members(path)  # declared sizes, before numpy allocates them
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not an .npz archive")
        with data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise XvolError(
            f"{path}: is not a readable .npz file ({err or type(err).__name__}). It may be truncated; "
            "save inputs with numpy.savez(path, input=array, labels=labels)."
        ) from None
    not_arrays = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
    if not_arrays:
        raise XvolError(f"{path}: member(s) {', '.join(not_arrays)} hold raw bytes, not numpy arrays (a pickle or "
                        "another file format stored under an .npy name). Save inputs with "
                        "numpy.savez(path, input=array, labels=labels).")
    labels = arrays.pop("labels", None)
    if "input" in arrays:
        inputs = arrays["input"]
    elif len(arrays) == 1:
        inputs = next(iter(arrays.values()))
    else:
        raise XvolError(
            f"{path}: holds arrays {sorted(arrays)}; name the model input 'input' (labels, if any, 'labels')."
        )
    if inputs.dtype.kind != "f" or inputs.ndim < 2:
        raise XvolError(f"{path}: the input array must be floating point with a batch axis, got {inputs.dtype} "
                        f"of shape {inputs.shape}.")
    if len(inputs) == 0:
        raise XvolError(f"{path}: the input array holds no inputs (shape {inputs.shape}); give at least one, "
                        "ideally a few hundred held-out examples.")
    if 0 in inputs.shape:
        raise XvolError(f"{path}: the input array has a dimension of size 0 (shape {inputs.shape}): its inputs hold "
                        "no values. Save images of N x C x H x W with every size at least 1.")
    if not np.isfinite(inputs).all():
        raise XvolError(f"{path}: the input array holds NaN or Inf values ({int((~np.isfinite(inputs)).sum())} of "
                        f"{inputs.size}); verification needs finite inputs, preprocessed like the model's.")
    largest = float(np.abs(inputs).max())
    if largest > MAX_INPUT_MAGNITUDE:
        beyond = "beyond float32's range, " if largest > float(np.finfo(np.float32).max) else ""
        raise XvolError(f"{path}: the input array holds values as large as {largest:.3g} ({beyond}more than "
                        f"{MAX_INPUT_MAGNITUDE:.3g}): the model's float32 arithmetic overflows on them (attention "
                        "multiplies activations together). Preprocess the inputs like the model's (values of "
                        "order 1, or raw pixels up to 255).")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(inputs) or labels.dtype.kind not in "iu"):
        raise XvolError(f"{path}: 'labels' must be integers, one per input ({len(inputs)}), got shape {labels.shape}.")
    import torch

    return InputData(
        torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)),
        None if labels is None else torch.from_numpy(labels.astype(np.int64)),
        str(path),
    )


def _check_members(path: Path) -> None:
    """Read each ``.npy`` member's header (not its data) and refuse, before numpy allocates anything, a member
    whose declared array is larger than the member (damaged) or than this machine's memory (with a float32 copy)."""
    if not zipfile.is_zipfile(path):
        return  # np.load says what the file is not
    declared = 0.0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = reader(member)
                except (ValueError, EOFError, OSError):
                    raise XvolError(f"{path}: member '{name}' is not a numpy array ({info.file_size} bytes that numpy "
                                    "cannot read as one: a pickle, or another file format). Save inputs with "
                                    "numpy.savez(path, input=array, labels=labels).") from None
                if dtype.hasobject:
                    continue  # np.load refuses object arrays without unpickling anything
                size = tensor_bytes(shape, dtype.itemsize)
                if size > info.file_size:
                    raise XvolError(f"{path}: member '{name}' declares an array of shape {tuple(shape)} "
                                    f"({format_bytes(size)}) but holds only {format_bytes(info.file_size)}. The file "
                                    "is truncated or damaged; save it again.")
                declared += size + tensor_bytes(shape, 4)  # the array, and the float32 copy xvol feeds
    check_fits(declared, f"{path}: its arrays", "Use fewer inputs (a few hundred are enough to verify).")


def save_npz(path: str | os.PathLike, **arrays) -> None:
    from xvol_export.io import atomic_write

    with atomic_write(path, force=True) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **{k: _numpy(v) for k, v in arrays.items()})


def _numpy(value):
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


DEFAULT_VERIFY_BATCH = 2


def check_input_shape(input_shape: InputShape, input_size: tuple[int, ...] | None, label: str) -> tuple[int, ...]:
    """The dims of ``input_shape`` (``--input-shape``) when it can feed the model: four of them, N x C x H x W, with
    the model's channel count (``input_size`` is its ``(C, H, W)``, None if unknown; ``label`` names it);
    :class:`XvolError` with an example that fits otherwise."""
    dims = input_shape.dims
    expected = tuple(input_size or ())
    example = f"1x{'x'.join(map(str, expected))}" if len(expected) == 3 else "1x3x224x224"
    if len(dims) != 4:
        raise XvolError(f"Input shape {input_shape} must have four dimensions, NxCxHxW (e.g. --input-shape "
                        f"{example}).")
    if expected and dims[1] != expected[0]:
        raise XvolError(f"Input shape {input_shape} has {dims[1]} channel(s) but {label} takes {expected[0]} (e.g. "
                        f"--input-shape {example}).")
    return dims


def prepare_inputs(input_size: tuple[int, ...] | None, label: str, data: str | os.PathLike | None = None,
                   input_shape: InputShape | None = None, seed: int | None = None) -> tuple[InputData, int | None]:
    """Inputs for verification: an ``.npz`` file, or seeded random ones (a fresh seed unless given).

    ``input_size`` is the model's ``(C, H, W)`` (None if unknown); ``label`` names it in messages.
    """
    expected = tuple(input_size or ())
    if seed is not None:
        check_seed(seed)
    if data is not None:
        loaded = load_npz(data)
        if loaded.inputs.ndim != 4:
            raise XvolError(
                f"{data}: the input array has {loaded.inputs.ndim} dimensions (shape {tuple(loaded.inputs.shape)}), "
                "but models take images of N x C x H x W (4 dimensions). Save the images with that shape."
            )
        if expected and tuple(loaded.inputs.shape[1:2]) != expected[:1]:
            raise XvolError(
                f"{data}: inputs of shape {tuple(loaded.inputs.shape)} have {loaded.inputs.shape[1]} channel(s), "
                f"but {label} takes {expected[0]} (input size {'x'.join(map(str, expected))})."
            )
        return loaded, None
    if input_shape is None:
        if not expected:
            raise XvolError(f"{label}: the model has no default input size. Pass --input-shape, e.g. 1x3x224x224.")
        dims = (DEFAULT_VERIFY_BATCH, *expected)
    else:
        dims = check_input_shape(input_shape, expected, label)
    seed = fresh_seed() if seed is None else seed
    shape_text = "x".join(map(str, dims))
    return InputData(random_inputs(dims, seed), None, f"random normal {shape_text}, seed {seed}", synthetic=True), seed
