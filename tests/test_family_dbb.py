"""The DBB family: the deploy block equals the eval-mode training block in float64, the fold leaves its input
alone, the deploy config rebuilds the block, and the state-dict names are the official DiverseBranchBlock ones."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from xvol_export.fold.families.dbb import FAMILY
from xvol_export.fold.family import FoldContext, deploy_family, training_family
from xvol_export.layers.dbb import BNAndPadLayer, DiverseBranchBlock, DiverseBranchBlockDeploy, IdentityBasedConv1x1

from helpers import assert_unchanged, init_params, make_generator, randomize_bn, rel_l2, snapshot

TOL = 1e-12
F64 = torch.float64


def make_block(cfg: dict, seed: int) -> DiverseBranchBlock:
    gen = make_generator(seed)
    block = DiverseBranchBlock(**cfg)
    init_params(block, gen)  # also gives idconv1 a non-zero weight on top of its identity
    expected = 6 if hasattr(block, "dbb_1x1") else 4
    assert randomize_bn(block, gen) == expected
    return block.to(F64).eval()


def fold(block: DiverseBranchBlock) -> DiverseBranchBlockDeploy:
    deploy = FAMILY.fold(block, FoldContext(layout=""))
    assert type(deploy) is DiverseBranchBlockDeploy and not deploy.training
    return deploy


def check_equal(cfg: dict, seed: int, hw=(7, 9), batch: int = 2) -> DiverseBranchBlockDeploy:
    block = make_block(cfg, seed)
    x = torch.randn(batch, cfg["in_channels"], *hw, generator=make_generator(seed + 1), dtype=F64)
    deploy = fold(block)
    with torch.no_grad():
        ref, out = block(x), deploy(x)
    assert out.shape == ref.shape
    assert rel_l2(out, ref) <= TOL
    return deploy


CONFIGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3),  # idconv1 (internal == in)
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, groups=2),
    dict(in_channels=4, out_channels=6, kernel_size=3, internal_channels_1x1_3x3=8),  # conv1
    dict(in_channels=4, out_channels=4, kernel_size=3, groups=4),  # depthwise: avg-only branch, 2x internal
    dict(in_channels=4, out_channels=4, kernel_size=5, groups=4, stride=2),
    dict(in_channels=4, out_channels=8, kernel_size=3, groups=4),  # depthwise multiplier 2: groups < out
    dict(in_channels=6, out_channels=6, kernel_size=5, groups=3, internal_channels_1x1_3x3=9, stride=2),
    dict(in_channels=3, out_channels=5, kernel_size=5, stride=2, use_affine=False),
    dict(in_channels=2, out_channels=2, kernel_size=7, groups=2, use_affine=False),
    dict(in_channels=3, out_channels=3, kernel_size=1),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k[:3]}{v}" for k, v in c.items()))
def test_fold_equals_training_block(cfg):
    seed = len(str(cfg)) * 7 + sum(v for v in cfg.values() if isinstance(v, int))
    deploy = check_equal(cfg, seed)
    k = cfg["kernel_size"]
    assert deploy.dbb_reparam.weight.shape[-2:] == (k, k) and deploy.dbb_reparam.padding == (k // 2, k // 2)


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 9), (4, 11)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 4])
def test_fold_odd_input_shapes(hw, stride, groups):
    cfg = dict(in_channels=4, out_channels=4, kernel_size=3, stride=stride, groups=groups)
    check_equal(cfg, 20 + stride + groups, hw=hw, batch=1)


@settings(max_examples=25, deadline=None)
@given(
    groups=st.integers(1, 3),
    cin_per=st.integers(1, 2),
    cout_per=st.integers(1, 2),
    internal_per=st.one_of(st.none(), st.integers(1, 3)),
    kernel_size=st.sampled_from([1, 3, 5]),
    stride=st.integers(1, 2),
    affine=st.booleans(),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_fold_property(groups, cin_per, cout_per, internal_per, kernel_size, stride, affine, h, w, seed):
    cin, cout = groups * cin_per, groups * cout_per
    if groups == cout and cin != cout:
        cout = cin = groups  # the average branch without a 1x1 conv needs in == out
    internal = None if internal_per is None else groups * internal_per
    cfg = dict(in_channels=cin, out_channels=cout, kernel_size=kernel_size, stride=stride, groups=groups,
               internal_channels_1x1_3x3=internal, use_affine=affine)
    check_equal(cfg, seed, hw=(h, w))


def test_fold_does_not_modify_the_block():
    for cfg in (CONFIGS[1], CONFIGS[3]):
        block = make_block(cfg, 5)
        snap = snapshot(block)
        fold(block)
        assert_unchanged(block, snap)


def test_fold_float32_block_gives_float32_deploy():
    block = make_block(dict(in_channels=3, out_channels=4, kernel_size=3), 6)
    x = torch.randn(2, 3, 7, 9, generator=make_generator(7), dtype=F64)
    deploy = FAMILY.fold(block.float(), FoldContext())
    assert deploy.dbb_reparam.weight.dtype == torch.float32
    with torch.no_grad():
        assert rel_l2(deploy(x.float()), block.double()(x)) <= 1e-5


@pytest.mark.parametrize("cfg", CONFIGS[:6], ids=range(6))
def test_deploy_config_round_trip(cfg):
    deploy = fold(make_block(cfg, 8))
    config = FAMILY.deploy_config(deploy)
    assert json.loads(json.dumps(config)) == config  # JSON-plain
    rebuilt = FAMILY.build_deploy(json.loads(json.dumps(config))).to(F64).eval()
    assert type(rebuilt) is DiverseBranchBlockDeploy and FAMILY.deploy_config(rebuilt) == config
    rebuilt.load_state_dict(deploy.state_dict(), strict=True)
    x = torch.randn(2, cfg["in_channels"], 7, 9, generator=make_generator(9), dtype=F64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), deploy(x))


def test_family_record():
    block = make_block(CONFIGS[0], 11)
    deploy = fold(block)
    assert FAMILY.name == "dbb" and "\n" not in FAMILY.description
    assert training_family(block) is FAMILY and deploy_family(deploy) is FAMILY
    assert FAMILY.describe_training(block) == \
        "conv3x3+BN + conv1x1+BN + conv1x1+BN+avg3x3+BN + conv1x1+BN+conv3x3+BN"
    assert FAMILY.describe_deploy(deploy) == "conv3x3"
    depthwise = make_block(CONFIGS[3], 11)
    assert FAMILY.describe_training(depthwise) == "dwconv3x3+BN + avg3x3+BN + dwconv1x1+BN+conv3x3/g4+BN"
    assert FAMILY.describe_deploy(fold(depthwise)) == "dwconv3x3"
    strided = make_block(CONFIGS[1], 11)
    assert FAMILY.describe_training(strided) == \
        "conv3x3/g2/s2+BN + conv1x1/g2/s2+BN + conv1x1/g2+BN+avg3x3/s2+BN + conv1x1/g2+BN+conv3x3/g2/s2+BN"
    assert FAMILY.describe_deploy(fold(strided)) == "conv3x3/g2/s2"


@pytest.mark.parametrize("config", [None, {"in_channels": 2}, {**DiverseBranchBlockDeploy(2, 2, 3).config(), "x": 1}])
def test_build_deploy_refuses_a_bad_config(config):
    with pytest.raises(ValueError, match="dbb deploy config"):
        FAMILY.build_deploy(config)


def test_training_block_config_rebuilds_it():
    block = DiverseBranchBlock(4, 6, 3, stride=2, groups=2, internal_channels_1x1_3x3=8, use_affine=False)
    again = DiverseBranchBlock(**block.config())
    again.load_state_dict(block.state_dict(), strict=True)


# --------------------------------------------------------------------------------------------
# the pieces: BN-and-pad and the identity-based 1x1
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("pad", [0, 1, 2])
def test_bn_and_pad_equals_bn_of_zero_padded_input_in_eval(affine, pad):
    """Eval BN is affine per channel, so padding its output with BN(0) is BN of the zero-padded input."""
    gen = make_generator(30 + pad + int(affine))
    layer = BNAndPadLayer(pad, 5, affine=affine).to(F64)
    randomize_bn(layer, gen)
    layer.eval()
    x = torch.randn(2, 5, 4, 3, generator=gen, dtype=F64)
    with torch.no_grad():
        assert rel_l2(layer(x), layer.bn(F.pad(x, [pad] * 4))) <= TOL


def test_bn_and_pad_in_training_pads_with_the_running_statistics_value():
    gen = make_generator(33)
    layer = BNAndPadLayer(1, 3).to(F64)
    randomize_bn(layer, gen)
    layer.train()
    x = torch.randn(4, 3, 5, 5, generator=gen, dtype=F64)
    out = layer(x)
    # As the official layer: the value comes from the running statistics just updated by this batch.
    bn = layer.bn
    expected_pad = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert out.shape == (4, 3, 7, 7)
    border = torch.ones(7, 7, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert rel_l2(out[:, :, border], expected_pad.detach().reshape(1, 3, 1).expand(4, 3, 24)) <= TOL
    out.sum().backward()  # gradients flow through the interior
    assert layer.bn.weight.grad is not None


def test_identity_based_conv1x1():
    conv = IdentityBasedConv1x1(6, groups=2).to(F64)
    assert list(conv.state_dict()) == ["weight"] and torch.count_nonzero(conv.weight) == 0
    x = torch.randn(2, 6, 3, 4, generator=make_generator(34), dtype=F64)
    assert torch.equal(conv(x), x)  # zero weight: the identity
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=make_generator(35), dtype=F64))
    assert rel_l2(conv(x), x + F.conv2d(x, conv.weight, groups=2)) <= TOL


# --------------------------------------------------------------------------------------------
# the official names (DingXiaoH/DiverseBranchBlock, diversebranchblock.py, DiverseBranchBlock)
# --------------------------------------------------------------------------------------------

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def bn(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in BN]


# groups < out_channels, internal == in_channels: dbb_origin (conv_bn), dbb_avg (conv, BNAndPadLayer, avg, avgbn),
# dbb_1x1 (conv_bn), dbb_1x1_kxk (idconv1, bn1 = BNAndPadLayer, conv2, bn2).
OFFICIAL_WITH_IDCONV = [
    "dbb_origin.conv.weight", *bn("dbb_origin.bn"),
    "dbb_avg.conv.weight", *bn("dbb_avg.bn.bn"), *bn("dbb_avg.avgbn"),
    "dbb_1x1.conv.weight", *bn("dbb_1x1.bn"),
    "dbb_1x1_kxk.idconv1.weight", *bn("dbb_1x1_kxk.bn1.bn"), "dbb_1x1_kxk.conv2.weight", *bn("dbb_1x1_kxk.bn2"),
]
# internal != in_channels: conv1 instead of idconv1.
OFFICIAL_WITH_CONV1 = [key.replace("idconv1", "conv1") for key in OFFICIAL_WITH_IDCONV]
# groups == out_channels: dbb_avg is avg (padded) + avgbn only, no dbb_1x1; internal = 2 * in -> conv1.
OFFICIAL_DEPTHWISE = [
    "dbb_origin.conv.weight", *bn("dbb_origin.bn"),
    *bn("dbb_avg.avgbn"),
    "dbb_1x1_kxk.conv1.weight", *bn("dbb_1x1_kxk.bn1.bn"), "dbb_1x1_kxk.conv2.weight", *bn("dbb_1x1_kxk.bn2"),
]


def test_state_dict_keys_are_the_official_names():
    assert list(DiverseBranchBlock(4, 6, 3, groups=2).state_dict()) == OFFICIAL_WITH_IDCONV
    assert list(DiverseBranchBlock(4, 6, 3, internal_channels_1x1_3x3=8).state_dict()) == OFFICIAL_WITH_CONV1
    depthwise = DiverseBranchBlock(4, 4, 3, groups=4)
    assert list(depthwise.state_dict()) == OFFICIAL_DEPTHWISE
    assert depthwise.dbb_1x1_kxk.conv1.out_channels == 8  # the official 2x internal channels
    assert list(DiverseBranchBlockDeploy(4, 6, 3).state_dict()) == ["dbb_reparam.weight", "dbb_reparam.bias"]


def official_state(keys: list[str], shapes: dict[str, tuple[int, ...]], gen: torch.Generator) -> dict:
    state = {}
    for key in keys:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key in shapes:
            state[key] = torch.randn(shapes[key], generator=gen)
        else:  # a BN vector: its channels are the conv before it
            channels = 4 if "bn1" in key else 6
            state[key] = (0.5 + torch.rand(channels, generator=gen)) if "running_var" in key else \
                torch.randn(channels, generator=gen)
    return state


def test_official_shaped_checkpoint_loads_strictly():
    """A state dict with the official names and shapes (in 4, out 6, groups 2, 3x3) loads with strict=True."""
    gen = make_generator(40)
    shapes = {"dbb_origin.conv.weight": (6, 2, 3, 3), "dbb_avg.conv.weight": (6, 2, 1, 1),
              "dbb_1x1.conv.weight": (6, 2, 1, 1), "dbb_1x1_kxk.idconv1.weight": (4, 2, 1, 1),
              "dbb_1x1_kxk.conv2.weight": (6, 2, 3, 3)}
    block = DiverseBranchBlock(4, 6, 3, groups=2)
    block.load_state_dict(official_state(OFFICIAL_WITH_IDCONV, shapes, gen), strict=True)
    block = block.to(F64).eval()
    x = torch.randn(1, 4, 5, 7, generator=gen, dtype=F64)
    with torch.no_grad():
        assert rel_l2(fold(block)(x), block(x)) <= TOL


# --------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=8, out_channels=4, kernel_size=3, groups=4), "in_channels must equal out_channels"),
        (dict(in_channels=4, out_channels=6, kernel_size=4), "odd kernel"),
        (dict(in_channels=4, out_channels=6, kernel_size=3, padding=0), "padding"),
        (dict(in_channels=4, out_channels=6, kernel_size=3, groups=4), "groups"),
        (dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, internal_channels_1x1_3x3=5), "internal"),
        (dict(in_channels=4, out_channels=6, kernel_size=3, stride=0), "stride"),
    ],
)
def test_bad_geometry_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiverseBranchBlock(**kwargs)


def test_fold_refuses_batchnorm_without_running_statistics():
    block = make_block(CONFIGS[0], 41)
    block.dbb_1x1.bn = nn.BatchNorm2d(6, track_running_stats=False).to(F64).eval()
    with pytest.raises(ValueError, match="running statistics"):
        fold(block)


def test_a_large_batchnorm_bias_before_the_kxk_needs_bias_padding():
    """The 1x1 -> kxk branch's intermediate is padded with its BatchNorm's bias value. With that bias large, a
    fold that assumed zero padding (as a plain 1x1 then padded kxk would) is off by far more than rounding at
    the border, and the family's fold is exact."""
    block = make_block({"in_channels": 4, "out_channels": 4, "kernel_size": 3}, seed=5)
    with torch.no_grad():
        block.dbb_1x1_kxk.bn1.bn.bias.fill_(10.0)
    x = torch.randn(2, 4, 7, 9, generator=make_generator(6), dtype=torch.float64)
    deploy = fold(block)
    with torch.no_grad():
        expected = block(x)
        assert rel_l2(deploy(x), expected) <= 1e-12
        zero_padded = block.dbb_1x1_kxk.bn1
        zero_padded.pad_values = lambda: torch.zeros(4, dtype=torch.float64)  # what a zero-padding fold computes
        assert rel_l2(block(x), expected) > 1e-2
