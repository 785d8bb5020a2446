"""The dilated-reparam family (UniRepLKNet's Dilated Reparam Block): the deploy block equals the eval-mode
training block in float64, the fold leaves its input alone, the deploy config rebuilds the block, and the
state-dict names are the official UniRepLKNet ones."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from xvol_export.fold.families.dilated_reparam import FAMILY
from xvol_export.fold.family import FoldContext, deploy_family, training_family
from xvol_export.layers.dilated_reparam import DilatedReparamBlock, DilatedReparamBlockDeploy

from helpers import assert_unchanged, init_params, make_generator, randomize_bn, rel_l2, snapshot

TOL = 1e-12
F64 = torch.float64

# The official tables (unireplknet.py, DilatedReparamBlock.__init__): kernel size -> (kernel sizes, dilations).
OFFICIAL_TABLES = {
    17: ([5, 9, 3, 3, 3], [1, 2, 4, 5, 7]),
    15: ([5, 7, 3, 3, 3], [1, 2, 3, 5, 7]),
    13: ([5, 7, 3, 3, 3], [1, 2, 3, 4, 5]),
    11: ([5, 5, 3, 3, 3], [1, 2, 3, 4, 5]),
    9: ([5, 5, 3, 3], [1, 2, 3, 4]),
    7: ([5, 3, 3], [1, 2, 3]),
    5: ([3, 3], [1, 2]),
}


def make_block(cfg: dict, seed: int) -> DilatedReparamBlock:
    gen = make_generator(seed)
    block = DilatedReparamBlock(**cfg)
    init_params(block, gen)
    assert randomize_bn(block, gen) == 1 + len(block.kernel_sizes)
    return block.to(F64).eval()


def fold(block: DilatedReparamBlock) -> DilatedReparamBlockDeploy:
    deploy = FAMILY.fold(block, FoldContext(layout=""))
    assert type(deploy) is DilatedReparamBlockDeploy and not deploy.training
    return deploy


def check_equal(cfg: dict, seed: int, hw=(7, 9), batch: int = 2) -> DilatedReparamBlockDeploy:
    block = make_block(cfg, seed)
    x = torch.randn(batch, cfg["channels"], *hw, generator=make_generator(seed + 1), dtype=F64)
    deploy = fold(block)
    with torch.no_grad():
        ref, out = block(x), deploy(x)
    assert out.shape == ref.shape
    assert rel_l2(out, ref) <= TOL
    return deploy


@pytest.mark.parametrize("kernel_size", sorted(OFFICIAL_TABLES))
@pytest.mark.parametrize("stride", [1, 2])
def test_fold_equals_training_block_official_tables(kernel_size, stride):
    deploy = check_equal(dict(channels=4, kernel_size=kernel_size, stride=stride), kernel_size + stride, hw=(19, 21))
    conv = deploy.lk_origin
    assert conv.weight.shape == (4, 1, kernel_size, kernel_size) and conv.groups == 4 and conv.bias is not None


@pytest.mark.parametrize(
    "cfg",
    [
        dict(channels=4, kernel_size=7, groups=2),  # grouped
        dict(channels=3, kernel_size=9, groups=1, stride=2),  # dense
        dict(channels=6, kernel_size=13, use_affine=False),
        dict(channels=2, kernel_size=3, kernel_sizes=[1], dilates=[1]),
        dict(channels=4, kernel_size=11, kernel_sizes=[3, 5, 3], dilates=[5, 1, 2], groups=2, stride=2),
        dict(channels=1, kernel_size=5),
    ],
    ids=range(6),
)
@pytest.mark.parametrize("hw", [(1, 1), (7, 9), (3, 12)])
def test_fold_groups_custom_branches_odd_shapes(cfg, hw):
    check_equal(cfg, 30 + len(str(cfg)), hw=hw)


@settings(max_examples=25, deadline=None)
@given(
    groups=st.integers(1, 3),
    per_group=st.integers(1, 2),
    kernel_size=st.sampled_from([3, 5, 7, 9]),
    branches=st.lists(st.tuples(st.sampled_from([1, 3, 5]), st.integers(1, 4)), max_size=4, unique=True),
    stride=st.integers(1, 2),
    affine=st.booleans(),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_fold_property(groups, per_group, kernel_size, branches, stride, affine, h, w, seed):
    branches = [(k, r) for k, r in branches if r * (k - 1) + 1 <= kernel_size]
    cfg = dict(channels=groups * per_group, kernel_size=kernel_size, stride=stride, groups=groups,
               kernel_sizes=[k for k, _ in branches], dilates=[r for _, r in branches], use_affine=affine)
    check_equal(cfg, seed, hw=(h, w))


def test_training_block_equals_direct_computation():
    """The training block is ``BN(large conv) + sum BN(dilated conv)``, each conv centred (against F.conv2d)."""
    block = make_block(dict(channels=3, kernel_size=7, stride=2), 40)
    x = torch.randn(2, 3, 9, 8, generator=make_generator(41), dtype=F64)
    with torch.no_grad():
        ref = block.origin_bn(F.conv2d(x, block.lk_origin.weight, stride=2, padding=3, groups=3))
        for k, r in zip([5, 3, 3], [1, 2, 3], strict=True):
            conv = getattr(block, f"dil_conv_k{k}_{r}")
            ref = ref + getattr(block, f"dil_bn_k{k}_{r}")(
                F.conv2d(x, conv.weight, stride=2, padding=r * (k // 2), dilation=r, groups=3))
        assert rel_l2(block(x), ref) <= TOL


def test_fold_does_not_modify_the_block():
    block = make_block(dict(channels=4, kernel_size=13, stride=2), 5)
    snap = snapshot(block)
    fold(block)
    assert_unchanged(block, snap)


def test_fold_keeps_a_conv_bias():
    """Official UniRepLKNet fuse_bn keeps a conv bias; so does this fold (a block given one after construction)."""
    block = make_block(dict(channels=3, kernel_size=5), 6)
    gen = make_generator(7)
    for conv in (block.lk_origin, block.dil_conv_k3_2):
        conv.bias = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=F64))
    x = torch.randn(1, 3, 6, 7, generator=gen, dtype=F64)
    with torch.no_grad():
        assert rel_l2(fold(block)(x), block(x)) <= TOL


def test_fold_float32_block_gives_float32_deploy():
    block = make_block(dict(channels=3, kernel_size=9), 6)
    x = torch.randn(2, 3, 11, 9, generator=make_generator(7), dtype=F64)
    deploy = FAMILY.fold(block.float(), FoldContext())
    assert deploy.lk_origin.weight.dtype == torch.float32
    with torch.no_grad():
        assert rel_l2(deploy(x.float()), block.double()(x)) <= 1e-5


@pytest.mark.parametrize("cfg", [dict(channels=4, kernel_size=13), dict(channels=4, kernel_size=7, groups=2,
                                                                          stride=2)], ids=range(2))
def test_deploy_config_round_trip(cfg):
    deploy = fold(make_block(cfg, 8))
    config = FAMILY.deploy_config(deploy)
    assert json.loads(json.dumps(config)) == config  # JSON-plain
    rebuilt = FAMILY.build_deploy(json.loads(json.dumps(config))).to(F64).eval()
    assert type(rebuilt) is DilatedReparamBlockDeploy and FAMILY.deploy_config(rebuilt) == config
    rebuilt.load_state_dict(deploy.state_dict(), strict=True)
    x = torch.randn(2, 4, 15, 9, generator=make_generator(9), dtype=F64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), deploy(x))


def test_family_record():
    block = make_block(dict(channels=4, kernel_size=7), 11)
    deploy = fold(block)
    assert FAMILY.name == "dilated_reparam" and "\n" not in FAMILY.description
    assert training_family(block) is FAMILY and deploy_family(deploy) is FAMILY
    assert FAMILY.describe_training(block) == "dwconv7x7+BN + dwconv5x5+BN + dwconv3x3/d2+BN + dwconv3x3/d3+BN"
    assert FAMILY.describe_deploy(deploy) == "dwconv7x7"
    grouped = make_block(dict(channels=4, kernel_size=5, groups=2, stride=2), 11)
    assert FAMILY.describe_training(grouped) == "conv5x5/g2/s2+BN + conv3x3/g2/s2+BN + conv3x3/g2/d2/s2+BN"
    assert FAMILY.describe_deploy(fold(grouped)) == "conv5x5/g2/s2"


@pytest.mark.parametrize("config", ["x", {"channels": 2}, {**DilatedReparamBlockDeploy(2, 5).config(), "bias": 1}])
def test_build_deploy_refuses_a_bad_config(config):
    with pytest.raises(ValueError, match="dilated_reparam deploy config"):
        FAMILY.build_deploy(config)


def test_training_block_config_rebuilds_it():
    block = DilatedReparamBlock(4, 11, stride=2, groups=2, use_affine=False)
    again = DilatedReparamBlock(**block.config())
    again.load_state_dict(block.state_dict(), strict=True)
    assert json.loads(json.dumps(block.config())) == block.config()


# --------------------------------------------------------------------------------------------
# the official names (AILab-CVC/UniRepLKNet, unireplknet.py, DilatedReparamBlock)
# --------------------------------------------------------------------------------------------

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def official_keys(kernel_size: int) -> list[str]:
    """lk_origin (bias=deploy, so none in training), origin_bn, then per (k, r) dil_conv_k{k}_{r}, dil_bn_k{k}_{r}."""
    keys = ["lk_origin.weight", *(f"origin_bn.{b}" for b in BN)]
    for k, r in zip(*OFFICIAL_TABLES[kernel_size], strict=True):
        keys += [f"dil_conv_k{k}_{r}.weight", *(f"dil_bn_k{k}_{r}.{b}" for b in BN)]
    return keys


@pytest.mark.parametrize("kernel_size", sorted(OFFICIAL_TABLES))
def test_state_dict_keys_are_the_official_names(kernel_size):
    block = DilatedReparamBlock(8, kernel_size)
    assert list(block.state_dict()) == official_keys(kernel_size)
    assert (list(block.kernel_sizes), list(block.dilates)) == OFFICIAL_TABLES[kernel_size]
    assert list(DilatedReparamBlockDeploy(8, kernel_size).state_dict()) == ["lk_origin.weight", "lk_origin.bias"]


def test_spelled_out_keys_for_kernel_17():
    assert official_keys(17)[::6] == ["lk_origin.weight", "dil_conv_k5_1.weight", "dil_conv_k9_2.weight",
                                      "dil_conv_k3_4.weight", "dil_conv_k3_5.weight", "dil_conv_k3_7.weight"]


def test_official_shaped_checkpoint_loads_strictly():
    """A state dict with the official names and depthwise shapes (kernel 13) loads with strict=True and folds."""
    gen = make_generator(50)
    state = {}
    for key in official_keys(13):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith(".weight") and "conv" in key or key == "lk_origin.weight":
            k = 13 if key == "lk_origin.weight" else int(key.split("_k")[1].split("_")[0])
            state[key] = torch.randn(6, 1, k, k, generator=gen)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(6, generator=gen)
        else:
            state[key] = torch.randn(6, generator=gen)
    block = DilatedReparamBlock(6, 13)
    block.load_state_dict(state, strict=True)
    block = block.to(F64).eval()
    x = torch.randn(1, 6, 15, 16, generator=gen, dtype=F64)
    with torch.no_grad():
        assert rel_l2(fold(block)(x), block(x)) <= TOL


# --------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(channels=4, kernel_size=19), "no default dilated branches"),
        (dict(channels=4, kernel_size=3), "no default dilated branches"),
        (dict(channels=4, kernel_size=8, kernel_sizes=[3], dilates=[1]), "odd size"),
        (dict(channels=4, kernel_size=7, kernel_sizes=[3], dilates=[4]), "dilated size"),
        (dict(channels=4, kernel_size=7, kernel_sizes=[4], dilates=[1]), "odd k"),
        (dict(channels=4, kernel_size=7, kernel_sizes=[3, 3], dilates=[2, 2]), "duplicate"),
        (dict(channels=4, kernel_size=7, kernel_sizes=[3, 3], dilates=[2]), "same length"),
        (dict(channels=4, kernel_size=7, kernel_sizes=[3]), "together"),
        (dict(channels=4, kernel_size=7, groups=3), "groups"),
        (dict(channels=4, kernel_size=7, stride=0), "stride"),
    ],
)
def test_bad_geometry_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DilatedReparamBlock(**kwargs)
