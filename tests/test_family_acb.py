"""The ACB family: the deploy block equals the eval-mode training block in float64, the fold leaves its input
alone, the deploy config rebuilds the block, and the state-dict names are the official ACNet ones."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from xvol_export.fold.families.acb import FAMILY
from xvol_export.fold.family import FoldContext, deploy_family, training_family
from xvol_export.layers.acb import ACBlock, ACBlockDeploy

from helpers import assert_unchanged, init_params, make_generator, randomize_bn, rel_l2, snapshot

TOL = 1e-12
F64 = torch.float64


def make_block(cfg: dict, seed: int) -> ACBlock:
    gen = make_generator(seed)
    block = ACBlock(**cfg)
    init_params(block, gen)
    assert randomize_bn(block, gen) == 3
    return block.to(F64).eval()


def fold(block: ACBlock) -> ACBlockDeploy:
    deploy = FAMILY.fold(block, FoldContext(layout=""))
    assert type(deploy) is ACBlockDeploy and not deploy.training
    return deploy


def check_equal(cfg: dict, seed: int, hw=(7, 9), batch: int = 2) -> ACBlockDeploy:
    block = make_block(cfg, seed)
    x = torch.randn(batch, cfg["in_channels"], *hw, generator=make_generator(seed + 1), dtype=F64)
    deploy = fold(block)
    with torch.no_grad():
        ref, out = block(x), deploy(x)
    assert out.shape == ref.shape
    assert rel_l2(out, ref) <= TOL
    return deploy


CONFIGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, stride=2),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2),
    dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6, stride=2),  # depthwise
    dict(in_channels=6, out_channels=12, kernel_size=5, padding=2, groups=6),  # depthwise multiplier 2
    dict(in_channels=3, out_channels=5, kernel_size=5, padding=2, stride=2, use_affine=False),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=2, bias=True),  # conv bias kept
    dict(in_channels=4, out_channels=2, kernel_size=3, padding=0),  # negative padding: the official crop
    dict(in_channels=4, out_channels=2, kernel_size=5, padding=1, stride=2),  # crop 1
    dict(in_channels=2, out_channels=4, kernel_size=3, padding=2),  # padding > k // 2
    dict(in_channels=2, out_channels=4, kernel_size=3, padding=2, dilation=2, stride=2),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding=1, dilation=2),  # dilated and cropped
    dict(in_channels=1, out_channels=1, kernel_size=1),
    dict(in_channels=3, out_channels=3, kernel_size=3, padding=1, padding_mode="reflect", bias=True),
    dict(in_channels=3, out_channels=3, kernel_size=3, padding=1, padding_mode="circular", stride=2),
    dict(in_channels=3, out_channels=3, kernel_size=3, padding=2, padding_mode="replicate", groups=3),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k[:3]}{v}" for k, v in c.items()))
def test_fold_equals_training_block(cfg):
    seed = len(str(cfg)) * 7 + sum(v for v in cfg.values() if isinstance(v, int))
    deploy = check_equal(cfg, seed)
    assert deploy.fused_conv.bias is not None
    assert deploy.fused_conv.weight.shape[-2:] == (cfg["kernel_size"], cfg["kernel_size"])


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 9), (10, 5)])
@pytest.mark.parametrize("stride", [1, 2])
def test_fold_odd_input_shapes(hw, stride):
    cfg = dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, stride=stride, groups=2)
    check_equal(cfg, 10 + stride, hw=hw, batch=1)


def test_conv_bias_is_kept_and_matters():
    block = make_block(dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, bias=True), 3)
    assert all(getattr(block, f"{b}_conv").bias is not None for b in ("square", "ver", "hor"))
    x = torch.randn(1, 3, 6, 6, generator=make_generator(4), dtype=F64)
    without = make_block(dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, bias=False), 3)
    without.load_state_dict({k: v for k, v in block.state_dict().items() if not k.endswith("conv.bias")})
    with torch.no_grad():
        assert rel_l2(fold(block)(x), block(x)) <= TOL
        assert rel_l2(fold(without)(x), block(x)) > 1e-3  # the bias is not negligible in this check


@settings(max_examples=25, deadline=None)
@given(
    groups=st.integers(1, 3),
    cin_per=st.integers(1, 2),
    cout_per=st.integers(1, 2),
    kernel_size=st.sampled_from([1, 3, 5]),
    padding_delta=st.integers(-1, 1),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    affine=st.booleans(),
    bias=st.booleans(),
    h=st.integers(5, 10),
    w=st.integers(5, 10),
    seed=st.integers(0, 2**16),
)
def test_fold_property(groups, cin_per, cout_per, kernel_size, padding_delta, stride, dilation, affine, bias, h, w,
                       seed):
    padding = max(0, dilation * (kernel_size // 2) + padding_delta)
    cfg = dict(in_channels=groups * cin_per, out_channels=groups * cout_per, kernel_size=kernel_size,
               stride=stride, padding=padding, dilation=dilation, groups=groups, use_affine=affine, bias=bias)
    check_equal(cfg, seed, hw=(h, w))


def test_fold_does_not_modify_the_block():
    block = make_block(dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2, bias=True), 5)
    snap = snapshot(block)
    fold(block)
    assert_unchanged(block, snap)


def test_fold_float32_block_gives_float32_deploy():
    block = make_block(dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), 6)
    x = torch.randn(2, 3, 7, 9, generator=make_generator(7), dtype=F64)
    deploy = FAMILY.fold(block.float(), FoldContext())
    assert deploy.fused_conv.weight.dtype == torch.float32
    with torch.no_grad():
        assert rel_l2(deploy(x.float()), block.double()(x)) <= 1e-5


@pytest.mark.parametrize("cfg", CONFIGS[:8], ids=range(8))
def test_deploy_config_round_trip(cfg):
    block = make_block(cfg, 8)
    deploy = fold(block)
    config = FAMILY.deploy_config(deploy)
    assert json.loads(json.dumps(config)) == config  # JSON-plain
    rebuilt = FAMILY.build_deploy(json.loads(json.dumps(config))).to(F64).eval()
    assert type(rebuilt) is ACBlockDeploy and FAMILY.deploy_config(rebuilt) == config
    rebuilt.load_state_dict(deploy.state_dict(), strict=True)
    x = torch.randn(2, cfg["in_channels"], 7, 9, generator=make_generator(9), dtype=F64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), deploy(x))


def test_family_record():
    block = make_block(dict(in_channels=2, out_channels=2, kernel_size=3, padding=1), 11)
    deploy = fold(block)
    assert FAMILY.name == "acb" and "\n" not in FAMILY.description
    assert training_family(block) is FAMILY and deploy_family(deploy) is FAMILY
    assert FAMILY.describe_training(block) == "conv3x3+BN + conv3x1+BN + conv1x3+BN"
    assert FAMILY.describe_deploy(deploy) == "conv3x3"
    big = make_block(dict(in_channels=2, out_channels=2, kernel_size=5, padding=2), 11)
    assert FAMILY.describe_training(big) == "conv5x5+BN + conv5x1+BN + conv1x5+BN"
    assert FAMILY.describe_deploy(fold(big)) == "conv5x5"
    strided = make_block(dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, stride=2, dilation=2,
                              groups=2), 11)
    assert FAMILY.describe_training(strided) == "conv3x3/g2/d2/s2+BN + conv3x1/g2/d2/s2+BN + conv1x3/g2/d2/s2+BN"
    depthwise = make_block(dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4), 11)
    assert FAMILY.describe_deploy(fold(depthwise)) == "dwconv3x3"


@pytest.mark.parametrize("config", [[], {"in_channels": 2}, {**ACBlockDeploy(2, 2, 3).config(), "bias": True}])
def test_build_deploy_refuses_a_bad_config(config):
    with pytest.raises(ValueError, match="acb deploy config"):
        FAMILY.build_deploy(config)


def test_training_block_config_rebuilds_it():
    block = ACBlock(4, 6, 3, stride=2, padding=1, groups=2, use_affine=False, bias=True)
    again = ACBlock(**block.config())
    assert list(again.state_dict()) == list(block.state_dict())
    again.load_state_dict(block.state_dict(), strict=True)


# --------------------------------------------------------------------------------------------
# the official names (DingXiaoH/ACNet, acnet/acb.py, ACBlock)
# --------------------------------------------------------------------------------------------

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")

# ACBlock.__init__ registers square_conv, square_bn, ver_conv, hor_conv, ver_bn, hor_bn in this order; the
# convs have bias=False; the BNs are BatchNorm2d(out_channels, affine=use_affine).
OFFICIAL_KEYS = [
    "square_conv.weight",
    *(f"square_bn.{k}" for k in BN_KEYS),
    "ver_conv.weight",
    "hor_conv.weight",
    *(f"ver_bn.{k}" for k in BN_KEYS),
    *(f"hor_bn.{k}" for k in BN_KEYS),
]
OFFICIAL_KEYS_NO_AFFINE = [
    "square_conv.weight",
    *(f"square_bn.{k}" for k in BN_STATS),
    "ver_conv.weight",
    "hor_conv.weight",
    *(f"ver_bn.{k}" for k in BN_STATS),
    *(f"hor_bn.{k}" for k in BN_STATS),
]


def test_state_dict_keys_are_the_official_names():
    assert list(ACBlock(4, 6, 3, padding=1).state_dict()) == OFFICIAL_KEYS
    assert list(ACBlock(4, 6, 3, padding=1, use_affine=False).state_dict()) == OFFICIAL_KEYS_NO_AFFINE
    assert list(ACBlockDeploy(4, 6, 3, padding=1).state_dict()) == ["fused_conv.weight", "fused_conv.bias"]


def test_official_shaped_checkpoint_loads_strictly():
    """A state dict with the official names and shapes (groups 2, 3x3) loads with strict=True and folds."""
    gen = make_generator(12)
    shapes = {"square_conv.weight": (6, 2, 3, 3), "ver_conv.weight": (6, 2, 3, 1), "hor_conv.weight": (6, 2, 1, 3)}
    state = {}
    for key in OFFICIAL_KEYS:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(6, generator=gen)
        else:
            state[key] = torch.randn(shapes.get(key, (6,)), generator=gen)
    block = ACBlock(4, 6, 3, padding=1, groups=2)
    block.load_state_dict(state, strict=True)
    block = block.to(F64).eval()
    x = torch.randn(1, 4, 5, 7, generator=gen, dtype=F64)
    with torch.no_grad():
        assert rel_l2(fold(block)(x), block(x)) <= TOL


def test_branches_align_as_the_paper():
    """The k x 1 and 1 x k branches read the square kernel's centre column and row (checked against F.conv2d)."""
    block = make_block(dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), 13)
    x = torch.randn(1, 2, 6, 5, generator=make_generator(14), dtype=F64)
    with torch.no_grad():
        ver = F.conv2d(x, block.ver_conv.weight, padding=(1, 0))
        hor = F.conv2d(x, block.hor_conv.weight, padding=(0, 1))
        assert rel_l2(block.ver_conv(x), ver) <= TOL and rel_l2(block.hor_conv(x), hor) <= TOL


# --------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=4, out_channels=6, kernel_size=4, padding=2), "odd kernel"),
        (dict(in_channels=4, out_channels=6, kernel_size=3, groups=4), "groups"),
        (dict(in_channels=4, out_channels=6, kernel_size=3, stride=0), "stride"),
        (dict(in_channels=4, out_channels=6, kernel_size=3, padding=-1), "padding"),
        (dict(in_channels=4, out_channels=6, kernel_size=3, padding_mode="mirror"), "padding_mode"),
        (dict(in_channels=0, out_channels=6, kernel_size=3), "positive"),
    ],
)
def test_bad_geometry_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ACBlock(**kwargs)
    with pytest.raises(ValueError, match=match):
        ACBlockDeploy(**kwargs)
