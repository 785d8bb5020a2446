"""Checkpoints in fp16, bf16, fp32 and fp64: loaded and built in their dtype, folded in float64, saved
in any dtype; tensors of the wrong kind, mixed dtypes and re-folds with another layout refused.

Everything runs on the bundled digits sample, written to real files in ``tmp_path``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from xvol_export import XVolution, XVolutionDeploy, create_model
from xvol_export.checkpoint import (
    DTYPES,
    WEIGHTS_HASH,
    check_refold,
    dtype_name,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from xvol_export.errors import XvolError
from xvol_export.fold import fold, fold_conv_bn, fold_xvolution, set_runtime_options

from helpers import assert_unchanged, randomize_bn, rel_l2, snapshot

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "digits_xvol_resnet_tiny.pth"
HOLDOUT = ROOT / "samples" / "digits_holdout.npz"
NAMES = ["fp16", "bf16", "fp32", "fp64"]
SUFFIXES = [".pth", ".safetensors"]
BLOCKS = ["layer2.0.conv1", "layer2.1.conv1", "layer3.0.conv1", "layer3.1.conv1"]
WEIGHT = "layer2.0.conv1.conv.weight"  # a float weight inside an X-volution block
# rel L2 of the deploy model in its own dtype against the training form in float64, on the holdout digits
OWN_DTYPE_TOL = {"fp16": 1e-2, "bf16": 5e-2, "fp32": 1e-5, "fp64": 1e-12}


@pytest.fixture(scope="module")
def sample() -> nn.Module:
    model, ckpt = load_model(SAMPLE)
    assert ckpt.dtype == "fp32"
    return model


@pytest.fixture(scope="module")
def holdout() -> torch.Tensor:
    with np.load(HOLDOUT) as data:
        x = torch.from_numpy(data["input"][::3].copy())  # 120 of the 360: fp16 convs take the slow path on CPUs
    assert x.shape == (120, 1, 32, 32)
    return x


def _cast(model: nn.Module, name: str) -> nn.Module:
    return copy.deepcopy(model).to(DTYPES[name])


def _floats(model: nn.Module) -> list[torch.Tensor]:
    return [t for t in model.state_dict().values() if t.is_floating_point()]


def _save_and_edit(tmp_path: Path, model: nn.Module, edit, name: str = "edited.pth") -> Path:
    """Save ``model``, edit the plain dict of the file, torch.save it again, without the weights' hash (a hash left
    stale by the edit is refused as damage, test_checkpoint.py: here the loader's words on the weights are tested)."""
    good = save_checkpoint(model, tmp_path / f"good.{name}")
    obj = torch.load(good, weights_only=True)
    del obj[WEIGHTS_HASH]
    edit(obj["state_dict"])
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _error(path: Path, *words: str) -> str:
    with pytest.raises(XvolError) as info:
        load_model(path)
    message = str(info.value)
    for word in (str(path), *words):
        assert word in message, message
    return message


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


# ------------------------------------------------------------------------------ the dtype mapping

def test_dtype_names_are_one_mapping():
    assert DTYPES == {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
    assert [dtype_name(d) for d in DTYPES.values()] == NAMES
    for bad in (torch.int64, torch.complex64, torch.float8_e4m3fn):
        with pytest.raises(ValueError, match="fp16"):
            dtype_name(bad)


# ------------------------------------------------------------------------------ load and save

@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_keeps_the_dtype_and_every_bit(tmp_path, sample, name, suffix):
    source = _cast(sample, name)
    path = save_checkpoint(source, tmp_path / f"digits{suffix}")
    model, ckpt = load_model(path)
    assert ckpt.dtype == name
    assert all(p.dtype == DTYPES[name] for p in model.parameters())
    for key, value in source.state_dict().items():
        loaded = model.state_dict()[key]
        assert loaded.dtype == value.dtype, key  # num_batches_tracked stays int64
        assert torch.equal(loaded, value), key
    assert {b.dtype for b in model.buffers()} == {DTYPES[name], torch.int64}
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3)).to(DTYPES[name])
    assert torch.equal(_out(model, x), _out(source, x))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_save_in_another_dtype(tmp_path, sample, suffix):
    path = save_checkpoint(sample, tmp_path / f"digits.fp16{suffix}", dtype="fp16")
    if suffix == ".pth":
        raw = torch.load(path, weights_only=True)["state_dict"]
    else:
        from safetensors.torch import load_file

        raw = load_file(str(path))
    expected = sample.state_dict()
    assert set(raw) == set(expected)
    for key, value in raw.items():
        if expected[key].is_floating_point():
            assert value.dtype == torch.float16, key
            assert torch.equal(value, expected[key].half()), key
        else:
            assert value.dtype == torch.int64 and torch.equal(value, expected[key]), key
    model, ckpt = load_model(path)
    assert ckpt.dtype == "fp16" and all(p.dtype == torch.float16 for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in sample.parameters())  # the saved model is left alone


def test_save_a_checkpoint_object_in_fp64_and_back(tmp_path, sample):
    ckpt = load_checkpoint(save_checkpoint(_cast(sample, "bf16"), tmp_path / "bf16.pth"))
    path = save_checkpoint(ckpt, tmp_path / "fp64.pth", dtype=torch.float64)
    assert ckpt.dtype == "bf16"  # the object itself is not converted
    model, again = load_model(path)
    assert again.dtype == "fp64"
    for key, value in ckpt.state_dict.items():
        assert torch.equal(model.state_dict()[key], value.double() if value.is_floating_point() else value), key


def test_save_in_an_unknown_dtype_writes_nothing(tmp_path, sample):
    with pytest.raises(ValueError, match="fp16, bf16, fp32, fp64"):
        save_checkpoint(sample, tmp_path / "x.pth", dtype="fp8")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("name", NAMES)
def test_deploy_checkpoint_with_applied_layouts_keeps_the_dtype(tmp_path, sample, name, suffix):
    """A dense deploy file rebuilds its dense blocks, in its dtype (the default deploy build is split)."""
    deploy, _ = fold(_cast(sample, name), layout="dense")
    path = save_checkpoint(deploy, tmp_path / f"deploy{suffix}")
    model, ckpt = load_model(path)
    assert ckpt.folded and ckpt.dtype == name and set(ckpt.layouts.values()) == {"dense"}
    assert {n: m.layout for n, m in model.named_modules() if isinstance(m, XVolutionDeploy)} == ckpt.layouts
    assert {t.dtype for t in model.state_dict().values()} == {DTYPES[name]}
    for key, value in deploy.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_non_finite_and_negative_variance_refused_in_half_precision(tmp_path, sample, name):
    half = _cast(sample, name)

    def nan(sd):
        sd["fc.weight"][0, 0] = float("nan")

    _error(_save_and_edit(tmp_path, half, nan, "nan.pth"), "NaN or Inf", "fc.weight")

    def negative(sd):
        sd["layer3.0.conv1.attn_bn.running_var"][1] = -0.5

    _error(_save_and_edit(tmp_path, half, negative, "neg.pth"), "negative", "layer3.0.conv1.attn_bn.running_var")


# ------------------------------------------------------------------------- wrong kinds and mixes

@pytest.mark.parametrize("name", ["fp16", "fp32"])
@pytest.mark.parametrize("bad", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64],
                         ids=["int64", "int32", "uint8", "bool", "complex64"])
def test_non_float_tensor_in_place_of_a_weight(tmp_path, sample, name, bad):
    def edit(sd):
        sd[WEIGHT] = torch.ones_like(sd[WEIGHT], dtype=bad)

    path = _save_and_edit(tmp_path, _cast(sample, name), edit)
    message = _error(path, WEIGHT, str(bad).removeprefix("torch."), "floating-point",
                     "damaged or not this architecture's weights")
    assert "1 tensor(s)" in message


def test_every_wrong_kind_is_named(tmp_path, sample):
    def edit(sd):
        sd["fc.bias"] = sd["fc.bias"].long()
        sd["conv1.weight"] = sd["conv1.weight"] > 0

    _error(_save_and_edit(tmp_path, sample, edit), "2 tensor(s)", "fc.bias (int64", "conv1.weight (bool")


@pytest.mark.parametrize("found", [torch.float32, torch.float16])
def test_float_in_place_of_an_integer_buffer(tmp_path, sample, found):
    key = "layer2.0.bn2.num_batches_tracked"

    def edit(sd):
        sd[key] = sd[key].to(found)

    _error(_save_and_edit(tmp_path, sample, edit), key, dtype_name(found), "an integer",
           "damaged or not this architecture's weights")


def test_integer_buffer_of_another_integer_dtype_loads(tmp_path, sample):
    key = "bn1.num_batches_tracked"

    def edit(sd):
        sd[key] = sd[key].int()

    model, ckpt = load_model(_save_and_edit(tmp_path, _cast(sample, "bf16"), edit))
    assert ckpt.dtype == "bf16" and model.bn1.num_batches_tracked == sample.bn1.num_batches_tracked


@pytest.mark.parametrize("other", ["fp16", "bf16", "fp64"])
def test_mixed_float_dtypes_refused_naming_two_keys(tmp_path, sample, other):
    def edit(sd):
        sd["layer3.1.conv2.weight"] = sd["layer3.1.conv2.weight"].to(DTYPES[other])

    path = _save_and_edit(tmp_path, sample, edit)
    message = _error(path, "mixes floating dtypes", "conv1.weight is fp32", f"layer3.1.conv2.weight is {other}")
    assert "num_batches_tracked" not in message
    ckpt = load_checkpoint(path)
    with pytest.raises(XvolError, match="mixes floating dtypes"):
        ckpt.dtype  # noqa: B018 - the property checks


def test_unsupported_float_dtype_refused(tmp_path, sample):
    def edit(sd):
        for key, value in sd.items():
            if value.is_floating_point():
                sd[key] = value.to(torch.float8_e4m3fn)

    _error(_save_and_edit(tmp_path, sample, edit), "float8_e4m3fn", "conv1.weight", "fp16, bf16, fp32, fp64")


# ------------------------------------------------------------------------------------- the fold

@pytest.mark.parametrize("name", NAMES)
def test_fold_keeps_the_dtype_and_the_input(tmp_path, sample, name):
    model, _ = load_model(save_checkpoint(_cast(sample, name), tmp_path / "m.pth"))
    snap = snapshot(model)
    deploy, report = fold(model, layout="auto")
    assert_unchanged(model, snap)  # bit-identical, dtype included
    assert {t.dtype for t in deploy.state_dict().values()} == {DTYPES[name]}
    assert report.source_dtype == report.deploy_dtype == name
    assert report.to_dict()["source_dtype"] == name and report.to_dict()["deploy_dtype"] == name
    assert report.layouts == dict.fromkeys(BLOCKS, "split")
    assert report.macs_before and report.macs_after  # profiled (in float64)


@pytest.mark.parametrize("name", ["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["dense", "split"])
def test_half_precision_fold_is_the_float64_fold_rounded_once(sample, name, layout):
    half = _cast(sample, name)
    deploy, _ = fold(half, layout=layout)
    exact, report64 = fold(copy.deepcopy(half).double(), layout=layout)
    assert report64.deploy_dtype == "fp64"
    rounded = exact.to(DTYPES[name])
    assert list(deploy.state_dict()) == list(rounded.state_dict())
    for key, value in rounded.state_dict().items():
        assert deploy.state_dict()[key].dtype == value.dtype, key
        assert torch.equal(deploy.state_dict()[key], value), key
    # and the dtype argument gives the same from the float64 model
    direct, report = fold(copy.deepcopy(half).double(), layout=layout, dtype=name)
    assert (report.source_dtype, report.deploy_dtype) == ("fp64", name)
    assert all(torch.equal(direct.state_dict()[k], v) for k, v in rounded.state_dict().items())


@pytest.mark.parametrize("layout", ["dense", "split"])
def test_fp32_fold_is_unchanged(sample, layout):
    """Each block and each conv + BN of an fp32 fold equals the per-module folds applied directly."""
    snap = snapshot(sample)
    deploy, report = fold(sample, layout=layout)
    assert (report.source_dtype, report.deploy_dtype) == ("fp32", "fp32")
    for name in BLOCKS:
        block = sample.get_submodule(name)
        assert isinstance(block, XVolution)
        expected = fold_xvolution(block, layout).state_dict()
        got = deploy.get_submodule(name).state_dict()
        assert list(got) == list(expected)
        for key, value in expected.items():
            assert got[key].dtype == torch.float32 and torch.equal(got[key], value), f"{name}.{key}"
    assert report.fused_conv_bn
    for conv_name, bn_name in report.fused_conv_bn:
        expected = fold_conv_bn(sample.get_submodule(conv_name), sample.get_submodule(bn_name))
        fused = deploy.get_submodule(conv_name)
        assert torch.equal(fused.weight, expected.weight) and torch.equal(fused.bias, expected.bias), conv_name
    for key, value in deploy.state_dict().items():  # everything else: the fp32 tensors themselves
        owners = [c for c, _ in report.fused_conv_bn] + BLOCKS
        if key in sample.state_dict() and not any(key.startswith(o + ".") for o in owners):
            assert torch.equal(value, sample.state_dict()[key]), key
    assert_unchanged(sample, snap)


def test_fold_to_another_dtype(sample):
    deploy, report = fold(sample, layout="split", dtype=torch.bfloat16)
    assert (report.source_dtype, report.deploy_dtype) == ("fp32", "bf16")
    exact, _ = fold(copy.deepcopy(sample).double(), layout="split")
    for key, value in exact.to(torch.bfloat16).state_dict().items():
        assert torch.equal(deploy.state_dict()[key], value), key
    with pytest.raises(ValueError, match="dtype"):
        fold(sample, dtype="int8")


@pytest.fixture(scope="module")
def references(sample, holdout) -> Callable[[str], torch.Tensor]:
    """The training form in float64 on the holdout digits, per source dtype (fp32 and fp64 weights are the same)."""
    cache: dict[str, torch.Tensor] = {}

    def reference(name: str) -> torch.Tensor:
        key = "fp64" if name == "fp32" else name
        if key not in cache:
            cache[key] = _out(_cast(sample, name).double(), holdout.double())
        return cache[key]

    return reference


@pytest.mark.parametrize("name", NAMES)
def test_deploy_agrees_with_the_float64_training_form(tmp_path, holdout, sample, references, name):
    """On 120 held-out digits: exact to rounding in float64, within the dtype's precision in its own."""
    model, _ = load_model(save_checkpoint(_cast(sample, name), tmp_path / "m.safetensors"))
    reference = references(name)  # the file's own function, computed in float64
    deploy, _ = fold(model)
    own = _out(deploy, holdout.to(DTYPES[name]))  # for fp64 this is the float64 deploy output
    assert own.dtype == DTYPES[name]
    err = rel_l2(own, reference)
    assert err < OWN_DTYPE_TOL[name], f"{name}: rel L2 {err:.2e}"
    agree = (own.double().argmax(1) == reference.argmax(1)).double().mean().item()
    assert agree >= 0.99, agree


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp64"])
def test_runtime_options_keep_the_dtype(sample, name):
    deploy, _ = fold(_cast(sample, name), layout="split")
    fast = set_runtime_options(deploy, dilated_conv="phases", aggregate="convs")
    assert {t.dtype for t in [*fast.parameters(), *fast.buffers()]} == {DTYPES[name]}  # the one-hot shift buffers too
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4)).to(DTYPES[name])
    assert rel_l2(_out(fast, x), _out(deploy, x)) < OWN_DTYPE_TOL[name]


# ---------------------------------------------------------------------------- refolding layouts

@pytest.fixture(scope="module")
def split_deploy(sample) -> nn.Module:
    return fold(sample, layout="split")[0]


def test_refold_with_another_layout_refused(tmp_path, split_deploy):
    ckpt = load_checkpoint(save_checkpoint(split_deploy, tmp_path / "deploy.pth"))
    with pytest.raises(XvolError) as info:
        check_refold(ckpt, "dense")
    message = str(info.value)
    for word in (str(tmp_path / "deploy.pth"), "folded with split for 4 block(s)", "layout='dense'",
                 "Fold the training checkpoint again with layout='dense'", "cannot change its layout"):
        assert word in message, message
    check_refold(ckpt, "split")
    check_refold(ckpt, "auto")


def test_refold_of_a_mixed_deploy_checkpoint(tmp_path, sample, split_deploy):
    mixed = copy.deepcopy(split_deploy)
    mixed.layer3[1].conv1 = fold(sample, layout="dense")[0].layer3[1].conv1
    ckpt = load_checkpoint(save_checkpoint(mixed, tmp_path / "mixed.safetensors"))
    for layout in ("dense", "split"):
        with pytest.raises(XvolError, match=r"split for 3 block\(s\) and dense for 1 block\(s\)"):
            check_refold(ckpt, layout)
    check_refold(ckpt, "auto")


def test_refold_of_a_training_checkpoint_is_allowed(sample):
    ckpt = load_checkpoint(SAMPLE)
    for layout in ("dense", "split", "auto"):
        check_refold(ckpt, layout)
    with pytest.raises(ValueError, match="layout"):
        check_refold(ckpt, "fastest")


def test_blocks_with_a_single_deploy_form_match_any_layout(tmp_path):
    """Without a dilated branch a block is one 3x3 conv: 'dense' in the file, whatever was asked."""
    model = create_model("xvol_resnet_tiny", stages=(2, 3), xvol_kwargs={"dilated_branch": False})
    randomize_bn(model, torch.Generator().manual_seed(2))
    deploy, report = fold(model.eval(), layout="split")
    assert set(report.layouts.values()) == {"dense"}
    ckpt = load_checkpoint(save_checkpoint(deploy, tmp_path / "plain.pth"))
    for layout in ("dense", "split", "auto"):
        check_refold(ckpt, layout)
