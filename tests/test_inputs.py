"""xvol_export.inputs: shape spellings, seeded random inputs, .npz input files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xvol_export.errors import XvolError
from xvol_export.inputs import InputShape, load_npz, parse_shape, random_inputs, save_npz

# ----------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "text",
    [
        "1x3x224x224",  # trtexec
        "[1,3,224,224]",  # Polygraphy
        "1,3,224,224",
        " 1x3x224x224 ",
        "1 x 3 x 224 x 224",
        "[1, 3, 224, 224]",
        "[ 1 , 3 , 224 , 224 ]",
        "1, 3, 224, 224",
    ],
)
def test_parse_shape_spellings(text):
    shape = parse_shape(text)
    assert shape == InputShape((1, 3, 224, 224), None)
    assert str(shape) == "1x3x224x224"


@pytest.mark.parametrize(
    "text, name",
    [
        ("input:1x3x224x224", "input"),
        ("input:[1,3,224,224]", "input"),
        ("images:1,3,224,224", "images"),
        ("input : [1, 3, 224, 224]", "input"),
        ("x.1:1x3x224x224", "x.1"),
    ],
)
def test_parse_shape_with_name(text, name):
    shape = parse_shape(text)
    assert shape.dims == (1, 3, 224, 224)
    assert shape.name == name
    assert str(shape) == f"{name}:1x3x224x224"


@pytest.mark.parametrize("text, dims", [("7", (7,)), ("2x5", (2, 5)), ("[16,3,32,32]", (16, 3, 32, 32)),
                                        ("1x1x1x1x1", (1, 1, 1, 1, 1))])
def test_parse_shape_ranks(text, dims):
    assert parse_shape(text).dims == dims
    assert all(type(d) is int for d in parse_shape(text).dims)


def test_canonical_form_round_trips():
    for text in ("1x3x224x224", "[8,3,32,32]", "input:2,3,64,64"):
        shape = parse_shape(text)
        assert parse_shape(str(shape)) == shape


@pytest.mark.parametrize(
    "text",
    ["", "   ", "1x", "ax3", "0x3", "-1x3", "1x3x", "x1x3", "1xx3", "1x3.5", "1;3", "[]", ":1x3", "1x3x224x224x",
     "1 3", "input:", "1x0x3"],
)
def test_parse_shape_rejects_malformed(text):
    with pytest.raises(XvolError) as info:
        parse_shape(text)
    message = str(info.value)
    assert f"'{text}'" in message
    assert "1x3x224x224" in message  # says how to write it


@pytest.mark.parametrize(
    "text",
    [
        "[1,3",
        "1,3]",
        "1x3,224",
        "\u0661x3",
    ],
)
def test_parse_shape_rejects_unbalanced_or_mixed_spellings(text):
    with pytest.raises(XvolError):
        parse_shape(text)


def test_parse_shape_rejects_none():
    with pytest.raises(XvolError):
        parse_shape(None)


# ------------------------------------------------------------------------------ random inputs

def test_random_inputs_reproducible_for_equal_seeds():
    a = random_inputs((2, 3, 8, 8), seed=1234)
    b = random_inputs((2, 3, 8, 8), seed=1234)
    assert a.shape == (2, 3, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)


def test_random_inputs_differ_for_different_seeds():
    a = random_inputs((2, 3, 8, 8), seed=1)
    b = random_inputs((2, 3, 8, 8), seed=2)
    assert not torch.equal(a, b)
    assert (a != b).float().mean() > 0.99


def test_random_inputs_do_not_depend_on_the_global_rng():
    torch.manual_seed(0)
    a = random_inputs((4, 5), seed=7)
    torch.manual_seed(99)
    torch.randn(10)
    b = random_inputs((4, 5), seed=7)
    assert torch.equal(a, b)


def test_random_inputs_are_standard_normal_and_dtype_follows():
    x = random_inputs((64, 3, 16, 16), seed=3)
    assert abs(x.mean().item()) < 0.05
    assert abs(x.std().item() - 1.0) < 0.05
    h = random_inputs((2, 3), seed=3, dtype=torch.float16)
    assert h.dtype == torch.float16
    # the same draw, rounded: the dtype does not change which numbers are drawn
    assert torch.equal(h, random_inputs((2, 3), seed=3, dtype=torch.float64).half())


# --------------------------------------------------------------------------------------- npz

def test_load_npz_input_and_labels(tmp_path):
    path = tmp_path / "data.npz"
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    np.savez(path, input=x, labels=np.array([0, 3, 1, 2], dtype=np.int32))
    data = load_npz(path)
    assert data.inputs.dtype == torch.float32
    assert np.array_equal(data.inputs.numpy(), x)
    assert data.labels.dtype == torch.int64
    assert data.labels.tolist() == [0, 3, 1, 2]
    assert data.source == str(path)


def test_load_npz_float64_inputs_become_float32(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, input=np.full((2, 3, 4, 4), 0.5))
    data = load_npz(path)
    assert data.inputs.dtype == torch.float32
    assert data.labels is None
    assert torch.all(data.inputs == 0.5)


def test_load_npz_single_unnamed_array(tmp_path):
    path = tmp_path / "one.npz"
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float16).reshape(2, 3, 4, 4)
    np.savez(path, x)  # stored as 'arr_0'
    data = load_npz(path)
    assert data.labels is None
    assert np.array_equal(data.inputs.numpy(), x.astype(np.float32))


def test_load_npz_single_unnamed_array_with_labels(tmp_path):
    path = tmp_path / "one.npz"
    np.savez(path, np.zeros((3, 3, 4, 4), np.float32), labels=np.array([1, 2, 3]))
    data = load_npz(path)
    assert tuple(data.inputs.shape) == (3, 3, 4, 4)
    assert data.labels.tolist() == [1, 2, 3]


def test_save_npz_then_load(tmp_path):
    path = tmp_path / "saved.npz"
    x = random_inputs((2, 3, 4, 4), seed=5)
    save_npz(path, input=x, labels=torch.tensor([4, 2]))
    data = load_npz(path)
    assert torch.equal(data.inputs, x)
    assert data.labels.tolist() == [4, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved.npz"]  # no temporary file left


def _expect_error(path, *words):
    with pytest.raises(XvolError) as info:
        load_npz(path)
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize(
    "labels",
    [
        np.zeros((2, 1), np.int64),  # not 1-D
        np.zeros((3,), np.int64),  # one too many
        np.zeros((1,), np.int64),  # one too few
        np.zeros((2,), np.float32),  # not integers
        np.zeros((), np.int64),  # a scalar
    ],
    ids=["2d", "too-many", "too-few", "float", "scalar"],
)
def test_load_npz_bad_labels(tmp_path, labels):
    path = tmp_path / "bad_labels.npz"
    np.savez(path, input=np.zeros((2, 3, 4, 4), np.float32), labels=labels)
    _expect_error(path, "labels")


@pytest.mark.parametrize("array", [np.zeros((2, 3, 4, 4), np.int64), np.zeros((2, 3, 4, 4), np.uint8),
                                   np.zeros((2, 3, 4, 4), bool), np.zeros((2, 3, 4, 4), np.complex64)],
                         ids=["int64", "uint8", "bool", "complex"])
def test_load_npz_non_float_inputs(tmp_path, array):
    path = tmp_path / "ints.npz"
    np.savez(path, input=array)
    _expect_error(path, "floating point")


def test_load_npz_inputs_without_batch_axis(tmp_path):
    path = tmp_path / "flat.npz"
    np.savez(path, input=np.zeros((5,), np.float32))
    _expect_error(path, "batch axis")


def test_load_npz_ambiguous_arrays(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=np.zeros((2, 3), np.float32), b=np.zeros((2, 3), np.float32))
    _expect_error(path, "'input'")


def test_load_npz_missing_file(tmp_path):
    _expect_error(tmp_path / "nothere.npz", "no such file")


def test_load_npz_folder(tmp_path):
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    _expect_error(folder)


def test_load_npz_text_file(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("hello world, these are not arrays\n")
    _expect_error(path, "not a readable .npz")


def test_load_npz_object_arrays_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, input=np.array([{"a": 1}], dtype=object))
    _expect_error(path)


def test_load_npz_truncated_file(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, input=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    data = good.read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path)


def test_load_npz_given_a_npy_file(tmp_path):
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros((2, 3, 4, 4), np.float32))
    path = tmp_path / "array.npz"
    npy.rename(path)
    _expect_error(path)


def test_load_npz_with_no_inputs_is_a_user_error(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, input=np.zeros((0, 3, 8, 8), np.float32))
    with pytest.raises(XvolError, match=r"empty\.npz.*no inputs.*\(0, 3, 8, 8\)"):
        load_npz(path)


def test_load_npz_with_non_finite_inputs_is_a_user_error(tmp_path):
    path = tmp_path / "nan.npz"
    x = np.zeros((2, 3, 4, 4), np.float32)
    x[1, 0, 0, 0] = np.nan
    np.savez(path, input=x)
    with pytest.raises(XvolError, match=r"nan\.npz.*NaN or Inf.*1 of 96"):
        load_npz(path)
