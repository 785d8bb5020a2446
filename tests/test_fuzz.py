"""Fuzzing what a user can hand xvol: argument text, checkpoint bytes and dicts, .npz inputs. Each case must end in
a result or in XvolError (exit 2 at the command line), never in another exception, and leave no file behind.

The CI share runs a few hundred cases per target; ``XVOL_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py`` runs more.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xvol_cli import options as opt
from xvol_export.checkpoint import LoadOptions
from xvol_export.errors import XvolError
from xvol_export.inputs import load_npz, parse_shape

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "digits_xvol_resnet_tiny.pth"
EXAMPLES = int(os.environ.get("XVOL_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])
TEXT = st.one_of(st.text(max_size=40), st.from_regex(r"[a-z]{0,6}:?\[?[0-9x, .e+-]{0,30}\]?", fullmatch=True))
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none())


def _refused_or_fine(call, *args) -> None:
    try:
        call(*args)
    except XvolError as err:
        assert str(err), "an XvolError must say what is wrong"


@FUZZ
@given(TEXT)
def test_argument_text_is_parsed_or_refused(text):
    for parse in (parse_shape, opt.imgsz_option, opt.shape_option, opt.name_list_option):
        _refused_or_fine(parse, text)
    for parse in (opt.int_list_option, opt.float_list_option):
        _refused_or_fine(parse, text, "--batch")


@FUZZ
@given(NUMBERS, NUMBERS, st.sampled_from([None, "median", "mean", "max", "elemwise", "p99", ""]),
       st.sampled_from(["fp32", "fp16", "bf16", "int8", "fp64", "x"]))
def test_tolerances_are_finite_or_refused(atol, rtol, stat, precision):
    try:
        tolerance = opt.tolerance_option(atol, rtol, stat, precision)
    except XvolError:
        return
    if tolerance is not None:  # a tolerance that was accepted can switch nothing off
        for value in (tolerance.atol, tolerance.rtol):
            assert value is None or (np.isfinite(value) and value >= 0)


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    cut = st.integers(0, len(data)).map(lambda n: data[:n])
    flip = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda edits: bytes(_edit(bytearray(data), edits)))
    return st.one_of(cut, flip, st.binary(max_size=512))


def _edit(data: bytearray, edits) -> bytearray:
    for index, value in edits:
        data[index] = value
    return data


@FUZZ
@given(data=_mutations(SAMPLE.read_bytes()), suffix=st.sampled_from([".pth", ".pt", ".safetensors", ".SAFETENSORS"]))
def test_damaged_checkpoint_bytes_are_refused_with_the_file_named(tmp_path_factory, data, suffix):
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / f"model{suffix}"
    path.write_bytes(data)
    try:
        LoadOptions().load(path)
    except XvolError as err:
        assert str(path) in str(err) or path.name in str(err), str(err)
    assert [p.name for p in folder.iterdir()] == [path.name]


HEADER_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12),
                          st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                   st.integers(), max_size=3))


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(["format", "format_version", "architecture", "config", "folded",
                                                "layouts", "metadata", "state_dict", "xvol_version"]),
                               HEADER_VALUES, min_size=1, max_size=4))
def test_checkpoint_dicts_with_odd_headers_are_loaded_or_refused(tmp_path_factory, changes):
    original = torch.load(SAMPLE, weights_only=True)
    path = tmp_path_factory.mktemp("dict") / "model.pth"
    torch.save({**original, **changes}, path)
    _refused_or_fine(LoadOptions().load, path)


ARRAYS = st.tuples(
    st.lists(st.integers(0, 5), min_size=0, max_size=5),
    st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_, np.complex64]),
    st.sampled_from([0.0, 1.0, np.nan, np.inf, 3.3e38, -1e300]),
)


@FUZZ
@given(ARRAYS, st.sampled_from(["input", "x", "labels"]), st.booleans())
def test_npz_inputs_are_loaded_or_refused(tmp_path_factory, array, key, raw_member):
    shape, dtype, fill = array
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    if raw_member:  # a member that is not an array at all
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"{key}.npy", b"\x80\x04not an array")
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            values = np.full(shape, fill).astype(dtype)
        buffer = io.BytesIO()
        np.savez(buffer, **{key: values})
        path.write_bytes(buffer.getvalue())
    _refused_or_fine(load_npz, path)


@pytest.mark.parametrize("kind", ["fifo"])
def test_a_pipe_is_refused_not_waited_on(tmp_path, kind):
    pipe = tmp_path / "model.pth"
    os.mkfifo(pipe)
    with pytest.raises(XvolError):
        LoadOptions().load(pipe)
