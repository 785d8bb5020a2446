"""The MobileOne family: the fold of a :class:`MobileOneBlock` against its eval-mode training form, the deploy
config round trip, and MobileOne-S0 against the official code's key list and outputs (``tests/data``)."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from xvol_export.fold import fold
from xvol_export.fold.families import mobileone as mobileone_family
from xvol_export.fold.family import FoldContext, deploy_family, get_family, training_family
from xvol_export.layers.mobileone import MobileOneBlock, MobileOneBlockDeploy
from xvol_export.models import create_model, model_size
from xvol_export.models.mobileone import MobileOne, mobileone_s0

from helpers import (
    DATA,
    assert_unchanged,
    fill_seeded,
    init_params,
    keys_of,
    make_generator,
    official_keys,
    randomize_bn,
    rel_l2,
    snapshot,
)

FAMILY = mobileone_family.FAMILY
CONTEXT = FoldContext(layout="")
TOL = 1e-12


pytestmark = pytest.mark.usefixtures("one_thread")  # small float64 convs: one thread is faster


def make_block(seed: int, *args, **kwargs) -> MobileOneBlock:
    """A float64, eval-mode block with random weights and BatchNorm statistics."""
    gen = make_generator(seed)
    block = MobileOneBlock(*args, **kwargs)
    init_params(block, gen)
    branches = block.num_conv_branches + (block.rbr_scale is not None) + (block.rbr_skip is not None)
    assert randomize_bn(block, gen) == branches
    return block.double().eval()


def run_with_preactivation(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's output and the input of its final ReLU."""
    seen = []
    handle = block.activation.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    try:
        with torch.no_grad():
            out = block(x)
    finally:
        handle.remove()
    return out, seen[0]


def check_fold(block: nn.Module, hw: tuple[int, int], seed: int = 0) -> MobileOneBlockDeploy:
    """Fold ``block``; the result is a new deploy block equal to it, and ``block`` is unchanged."""
    before = snapshot(block)
    deploy = FAMILY.fold(block, CONTEXT)
    assert_unchanged(block, before)
    assert type(deploy) is MobileOneBlockDeploy and not deploy.training
    x = torch.randn(2, block.in_channels, *hw, generator=make_generator(seed), dtype=torch.float64)
    (expected, expected_pre), (got, got_pre) = run_with_preactivation(block, x), run_with_preactivation(deploy, x)
    assert expected_pre.abs().max() > 0
    assert rel_l2(got_pre, expected_pre) <= TOL  # before the ReLU, which could hide a difference
    assert rel_l2(got, expected) <= TOL
    return deploy


CASES = {
    # name: (constructor arguments, input size)
    "identity": (dict(in_channels=4, out_channels=4, kernel_size=3, padding=1), (7, 9)),
    "stride2": (dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=1, num_conv_branches=2), (7, 9)),
    "widen_1x1_input": (dict(in_channels=3, out_channels=5, kernel_size=3, padding=1, num_conv_branches=3), (1, 1)),
    "groups2": (dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=2, num_conv_branches=4), (5, 5)),
    "groups2_stride2": (dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2), (9, 7)),
    "depthwise": (dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8, num_conv_branches=4),
                  (7, 9)),
    "depthwise_stride2_1x1": (dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=1, groups=8,
                                   num_conv_branches=4), (1, 1)),
    "pointwise_identity": (dict(in_channels=6, out_channels=6, kernel_size=1, num_conv_branches=4), (7, 9)),
    "pointwise_widen": (dict(in_channels=6, out_channels=10, kernel_size=1, num_conv_branches=2), (1, 1)),
    "no_identity": (dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, num_conv_branches=2,
                         use_identity=False), (7, 9)),
    "se": (dict(in_channels=16, out_channels=16, kernel_size=3, padding=1, use_se=True, num_conv_branches=3), (7, 9)),
    "se_depthwise_stride2": (dict(in_channels=32, out_channels=32, kernel_size=3, stride=2, padding=1, groups=32,
                                  use_se=True, num_conv_branches=4), (9, 7)),
    "se_pointwise": (dict(in_channels=16, out_channels=32, kernel_size=1, use_se=True, num_conv_branches=2), (5, 3)),
    "kernel5_dilation2": (dict(in_channels=4, out_channels=4, kernel_size=5, padding=4, dilation=2,
                               num_conv_branches=2), (7, 9)),
    "wide_padding": (dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, num_conv_branches=3), (5, 6)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fold_equals_training_block(name):
    kwargs, hw = CASES[name]
    block = make_block(len(name), **kwargs)
    deploy = check_fold(block, hw)
    assert (block.rbr_skip is not None) == (
        kwargs.get("use_identity", True) and kwargs["in_channels"] == kwargs["out_channels"]
        and kwargs.get("stride", 1) == 1
    )
    assert (block.rbr_scale is not None) == (kwargs["kernel_size"] > 1)
    assert deploy.config() == {k: v for k, v in block.config().items() if k not in ("use_identity",
                                                                                    "num_conv_branches")}


def test_fold_with_affine_free_batchnorm():
    block = MobileOneBlock(6, 6, 3, padding=1, groups=6, num_conv_branches=2)
    block.rbr_conv[1].bn = nn.BatchNorm2d(6, affine=False)
    block.rbr_skip = nn.BatchNorm2d(6, affine=False)
    gen = make_generator(3)
    init_params(block, gen)
    assert randomize_bn(block, gen) == 4
    check_fold(block.double().eval(), (5, 7))


@st.composite
def block_args(draw) -> dict:
    mode = draw(st.sampled_from(["one", "divisor", "depthwise"]))
    if mode == "one":
        groups, cin, cout = 1, draw(st.integers(1, 6)), draw(st.integers(1, 6))
    elif mode == "divisor":
        groups = draw(st.integers(2, 3))
        cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 3))
    else:
        cin = cout = groups = draw(st.integers(2, 6))
    kernel, dilation = draw(st.sampled_from([1, 3, 5])), draw(st.integers(1, 2))
    return {"in_channels": cin, "out_channels": cout, "kernel_size": kernel, "stride": draw(st.sampled_from([1, 2])),
            "padding": dilation * (kernel // 2) + draw(st.sampled_from([0, 0, 1])), "dilation": dilation,
            "groups": groups, "num_conv_branches": draw(st.integers(1, 4)),
            "use_identity": draw(st.sampled_from([None, False]))}


@settings(max_examples=100)
@given(args=block_args(), hw=st.tuples(st.integers(1, 9), st.integers(1, 9)), seed=st.integers(0, 2**16))
def test_fold_property(args, hw, seed):
    if args["use_identity"] is None and args["padding"] != args["dilation"] * (args["kernel_size"] // 2):
        args["use_identity"] = False
    check_fold(make_block(seed, **args), hw, seed)


def test_deploy_config_round_trip():
    block = make_block(7, 16, 16, 3, padding=1, groups=16, use_se=True, num_conv_branches=4)
    deploy = FAMILY.fold(block, CONTEXT)
    config = FAMILY.deploy_config(deploy)
    plain = json.loads(json.dumps(config))
    assert plain == config and all(isinstance(v, (int, bool, str, list)) for v in plain.values())
    rebuilt = FAMILY.build_deploy(plain)
    assert type(rebuilt) is MobileOneBlockDeploy
    rebuilt = rebuilt.double().eval()
    rebuilt.load_state_dict(deploy.state_dict(), strict=True)
    x = torch.randn(2, 16, 7, 9, generator=make_generator(2), dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), deploy(x))
        assert rel_l2(rebuilt(x), block(x)) <= TOL
    with pytest.raises(ValueError, match="unknown \\['num_conv_branches'\\]"):
        FAMILY.build_deploy({**plain, "num_conv_branches": 4})


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        (dict(in_channels=4, out_channels=6, kernel_size=1), "in_channels=4 differs from out_channels=6"),
        (dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=1, groups=4), "stride=2 is not 1"),
        (dict(in_channels=4, out_channels=4, kernel_size=1, padding=1), "padding=1 changes the spatial size"),
    ],
)
def test_impossible_identity_is_refused(kwargs, why):
    with pytest.raises(ValueError, match=why):
        MobileOneBlock(**kwargs, use_identity=True)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_conv_branches must be an integer of at least 1"):
        MobileOneBlock(4, 4, 3, padding=1, num_conv_branches=0)
    with pytest.raises(ValueError, match="padding=0 is less than"):
        MobileOneBlock(4, 6, 3)
    with pytest.raises(ValueError, match="groups=4 must divide"):
        MobileOneBlock(4, 6, 3, padding=1, groups=4)


def test_forms_and_registry():
    block = MobileOneBlock(4, 4, 3, 1, 1, 1, 4, True)  # inference_mode=True, positionally, as in the official code
    assert type(block) is MobileOneBlockDeploy and block.inference_mode
    training = make_block(1, 4, 4, 3, padding=1, groups=4, num_conv_branches=4)
    for clone in (copy.deepcopy(training), pickle.loads(pickle.dumps(training))):
        assert type(clone) is MobileOneBlock
        assert clone.state_dict().keys() == training.state_dict().keys()
    assert training_family(training) is FAMILY and deploy_family(training) is None
    assert deploy_family(block) is FAMILY and training_family(block) is None
    assert get_family("mobileone") is FAMILY
    assert FAMILY.describe_training(training) == "4x dwconv3x3+BN + dwconv1x1+BN + BN(identity)"
    assert FAMILY.describe_deploy(FAMILY.fold(training, CONTEXT)) == "dwconv3x3"
    pointwise = MobileOneBlock(16, 32, 1, use_se=True)
    assert FAMILY.describe_training(pointwise) == "conv1x1+BN -> SE"
    assert FAMILY.graph_convs(MobileOneBlockDeploy(16, 32, 1, use_se=True)) == 3
    assert "\n" not in FAMILY.description


# ---------------------------------------------------------------------------------- MobileOne-S0 and the official


@pytest.mark.parametrize("deploy", [False, True])
def test_state_dict_matches_official(deploy):
    with torch.device("meta"):
        model = mobileone_s0(deploy=deploy)
    assert keys_of(model) == official_keys(f"mobileone_s0_{'deploy' if deploy else 'train'}")


@pytest.mark.parametrize("deploy", [False, True])
def test_outputs_match_official(deploy):
    reference = json.loads((DATA / "mobileone_s0_outputs.json").read_text())
    model = mobileone_s0(num_classes=10, deploy=deploy).double().eval()
    fill_seeded(model, 1234)
    x = torch.randn(2, 3, 64, 64, generator=make_generator(7), dtype=torch.float64)
    with torch.no_grad():
        got = model(x)
    assert rel_l2(got, torch.tensor(reference["deploy" if deploy else "train"], dtype=torch.float64)) <= TOL


def test_network_folds_block_by_block():
    gen = make_generator(11)
    model = mobileone_s0(num_classes=10)
    init_params(model, gen)
    # stem: 1 conv + scale; 21 depthwise: 4 convs + scale (+ skip: 17, all but the strided); 21 pointwise: 4 convs
    # (+ skip: 18, all but the widening ones of stages 2-4, stage 1 keeping 48 channels)
    assert randomize_bn(model, gen) == 2 + 21 * 5 + 17 + 21 * 4 + 18
    model = model.double().eval()
    before = snapshot(model)
    folded, report = fold(model)  # the walker, which finds every block through the registry
    assert [b.family for b in report.blocks] == ["mobileone"] * 43 and not report.fused and not report.left
    assert_unchanged(model, before)
    assert sum(isinstance(m, MobileOneBlockDeploy) for m in folded.modules()) == 43
    assert not any(isinstance(m, (MobileOneBlock, nn.BatchNorm2d)) for m in folded.modules())
    x = torch.randn(1, 3, 64, 64, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        assert rel_l2(folded(x), expected) <= TOL
        direct = mobileone_s0(num_classes=10, deploy=True).double().eval()
        direct.load_state_dict(folded.state_dict(), strict=True)
        assert rel_l2(direct(x), expected) <= TOL


def test_registered_model_and_size():
    model = create_model("mobileone_s0", num_classes=10, xvol_layout="dense")
    assert isinstance(model, MobileOne) and model.input_size == (3, 224, 224)
    assert model.xvol_arch == {"name": "mobileone_s0", "config": {"num_classes": 10}}
    for deploy in (False, True):
        with torch.device("meta"):
            built = mobileone_s0(num_classes=10, deploy=deploy)
        values = sum(v.numel() for v in built.state_dict().values())
        assert model_size("mobileone_s0", {"num_classes": 10}, deploy).values == values
    with pytest.raises(ValueError, match="num_classes must be an integer"):
        model_size("mobileone_s0", {"num_classes": "ten"})


def test_se_network_matches_size_rule():
    """``use_se`` puts SE on the last half of stage 3's pairs and on all of stage 4's, as the official code does."""
    from xvol_export.models.mobileone import mobileone_size

    with torch.device("meta"):
        model = MobileOne((1, 2, 4, 1), 10, (0.5, 0.5, 0.5, 0.5), use_se=True, num_conv_branches=2)
    se_blocks = [name for name, m in model.named_modules() if getattr(m, "use_se", False)]
    assert se_blocks == ["stage3.4", "stage3.5", "stage3.6", "stage3.7", "stage4.0", "stage4.1"]
    values = sum(v.numel() for v in model.state_dict().values())
    assert mobileone_size((1, 2, 4, 1), (0.5, 0.5, 0.5, 0.5), 2, 10, True, False).values == values
