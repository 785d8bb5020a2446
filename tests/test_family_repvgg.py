"""The RepVGG family: the fold of a :class:`RepVGGBlock` against its eval-mode training form, the deploy config
round trip, and RepVGG-A0 against the official code's key list and outputs (``tests/data``)."""

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
from xvol_export.fold.families import repvgg as repvgg_family
from xvol_export.fold.family import FoldContext, deploy_family, get_family, training_family
from xvol_export.layers.repvgg import RepVGGBlock, RepVGGBlockDeploy
from xvol_export.models import create_model, model_size
from xvol_export.models.repvgg import RepVGG, repvgg_a0

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

FAMILY = repvgg_family.FAMILY
CONTEXT = FoldContext(layout="")
TOL = 1e-12


pytestmark = pytest.mark.usefixtures("one_thread")  # small float64 convs: one thread is faster


def make_block(seed: int, *args, **kwargs) -> RepVGGBlock:
    """A float64, eval-mode block with random weights and BatchNorm statistics."""
    gen = make_generator(seed)
    block = RepVGGBlock(*args, **kwargs)
    init_params(block, gen)
    assert randomize_bn(block, gen) == 2 + (block.rbr_identity is not None)
    return block.double().eval()


def check_fold(block: nn.Module, hw: tuple[int, int], seed: int = 0) -> RepVGGBlockDeploy:
    """Fold ``block``; the result is a new deploy block equal to it, and ``block`` is unchanged."""
    before = snapshot(block)
    deploy = FAMILY.fold(block, CONTEXT)
    assert_unchanged(block, before)
    assert type(deploy) is RepVGGBlockDeploy and not deploy.training
    x = torch.randn(2, block.in_channels, *hw, generator=make_generator(seed), dtype=torch.float64)
    (expected, expected_pre), (got, got_pre) = run_with_preactivation(block, x), run_with_preactivation(deploy, x)
    assert expected_pre.abs().max() > 0
    assert rel_l2(got_pre, expected_pre) <= TOL  # before the ReLU, which could hide a difference
    assert rel_l2(got, expected) <= TOL
    return deploy


def run_with_preactivation(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's output and the input of its final ReLU."""
    seen = []
    handle = block.nonlinearity.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    try:
        with torch.no_grad():
            out = block(x)
    finally:
        handle.remove()
    return out, seen[0]


CASES = {
    # name: (constructor arguments, input size)
    "identity": (dict(in_channels=4, out_channels=4, kernel_size=3, padding=1), (7, 9)),
    "stride2": (dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=1), (7, 9)),
    "widen_1x1_input": (dict(in_channels=3, out_channels=5, kernel_size=3, padding=1), (1, 1)),
    "groups2": (dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=2), (5, 5)),
    "groups2_stride2": (dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2), (9, 7)),
    "depthwise": (dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8), (7, 9)),
    "depthwise_stride2_1x1": (dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=1, groups=8),
                              (1, 1)),
    "no_identity": (dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, use_identity=False), (7, 9)),
    "se": (dict(in_channels=16, out_channels=16, kernel_size=3, padding=1, use_se=True), (7, 9)),
    "se_groups4_stride2": (dict(in_channels=16, out_channels=32, kernel_size=3, stride=2, padding=1, groups=4,
                                use_se=True), (9, 7)),
    "kernel5": (dict(in_channels=4, out_channels=4, kernel_size=5, padding=2), (7, 9)),
    "kernel1": (dict(in_channels=4, out_channels=4, kernel_size=1), (3, 2)),
    "dilation2": (dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, dilation=2), (7, 9)),
    "wide_padding": (dict(in_channels=4, out_channels=6, kernel_size=3, padding=2), (5, 6)),
    "reflect": (dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"), (7, 9)),
    "circular_wide_dilated": (dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=3, dilation=2,
                                   padding_mode="circular"), (7, 9)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fold_equals_training_block(name):
    kwargs, hw = CASES[name]
    block = make_block(len(name), **kwargs)
    deploy = check_fold(block, hw)
    assert (block.rbr_identity is not None) == (
        kwargs.get("use_identity", True) and kwargs["in_channels"] == kwargs["out_channels"]
        and kwargs.get("stride", 1) == 1
    )
    assert deploy.config() == {k: v for k, v in block.config().items() if k != "use_identity"}


def test_fold_with_affine_free_batchnorm():
    block = RepVGGBlock(6, 6, 3, padding=1, groups=3)
    block.rbr_dense.bn = nn.BatchNorm2d(6, affine=False)
    block.rbr_identity = nn.BatchNorm2d(6, affine=False)
    gen = make_generator(3)
    init_params(block, gen)
    assert randomize_bn(block, gen) == 3
    check_fold(block.double().eval(), (5, 7))


def test_fold_keeps_float32():
    block = make_block(5, 8, 8, 3, padding=1, groups=2).float()
    deploy = FAMILY.fold(block, CONTEXT)
    assert deploy.rbr_reparam.weight.dtype == torch.float32
    x = torch.randn(1, 8, 6, 6, generator=make_generator(1))
    with torch.no_grad():
        assert rel_l2(deploy(x), block(x)) <= 1e-5


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
            "groups": groups, "padding_mode": draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate"])),
            "use_identity": draw(st.sampled_from([None, False]))}


@settings(max_examples=100)
@given(args=block_args(), hw=st.tuples(st.integers(1, 9), st.integers(1, 9)), seed=st.integers(0, 2**16))
def test_fold_property(args, hw, seed):
    if args["padding_mode"] == "reflect" and args["padding"] >= min(hw):
        args["padding_mode"] = "zeros"  # reflection needs a map wider than the padding
    same = args["padding"] == args["dilation"] * (args["kernel_size"] // 2)
    if args["use_identity"] is None and not same:
        args["use_identity"] = False
    check_fold(make_block(seed, **args), hw, seed)


def test_deploy_config_round_trip():
    block = make_block(7, 16, 16, 3, padding=2, dilation=2, groups=4, padding_mode="replicate", use_se=True)
    deploy = FAMILY.fold(block, CONTEXT)
    config = FAMILY.deploy_config(deploy)
    plain = json.loads(json.dumps(config))
    assert plain == config and all(isinstance(v, (int, bool, str, list)) for v in plain.values())
    rebuilt = FAMILY.build_deploy(plain)
    assert type(rebuilt) is RepVGGBlockDeploy
    rebuilt = rebuilt.double().eval()
    rebuilt.load_state_dict(deploy.state_dict(), strict=True)
    x = torch.randn(2, 16, 7, 9, generator=make_generator(2), dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), deploy(x))
        assert rel_l2(rebuilt(x), block(x)) <= TOL
    with pytest.raises(ValueError, match="unknown \\['layout'\\]"):
        FAMILY.build_deploy({**plain, "layout": "dense"})
    with pytest.raises(ValueError, match="missing \\['use_se'\\]"):
        FAMILY.build_deploy({k: v for k, v in plain.items() if k != "use_se"})


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        (dict(in_channels=4, out_channels=6, kernel_size=3, padding=1), "in_channels=4 differs from out_channels=6"),
        (dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=1), "stride=2 is not 1"),
        (dict(in_channels=4, out_channels=4, kernel_size=3, padding=2), "padding=2 changes the spatial size"),
    ],
)
def test_impossible_identity_is_refused(kwargs, why):
    with pytest.raises(ValueError, match=why):
        RepVGGBlock(**kwargs, use_identity=True)


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError, match="padding=0 is less than"):
        RepVGGBlock(4, 4, 3)  # the official default padding=0 cannot hold a centred 1x1 branch
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        RepVGGBlock(4, 4, 2, padding=1)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        RepVGGBlock(4, 6, 3, padding=1, groups=3)
    with pytest.raises(ValueError, match="padding=2 changes the spatial size"):
        RepVGGBlock(4, 4, 3, padding=2)  # the official rule would add an identity of the wrong size


def test_forms_and_registry():
    block = RepVGGBlock(4, 4, 3, 1, 1, 1, 1, "zeros", True)  # deploy=True, positionally, as in the official code
    assert type(block) is RepVGGBlockDeploy and block.deploy
    assert type(RepVGGBlock(4, 4, 3, padding=1, deploy=False)) is RepVGGBlock
    training = make_block(1, 4, 4, 3, padding=1)
    for clone in (copy.deepcopy(training), pickle.loads(pickle.dumps(training))):
        assert type(clone) is RepVGGBlock
        assert clone.state_dict().keys() == training.state_dict().keys()
    assert training_family(training) is FAMILY and deploy_family(training) is None
    assert deploy_family(block) is FAMILY and training_family(block) is None
    assert get_family("repvgg") is FAMILY
    assert FAMILY.describe_training(training) == "conv3x3+BN + conv1x1+BN + BN(identity)"
    assert FAMILY.describe_deploy(FAMILY.fold(training, CONTEXT)) == "conv3x3"
    strided = RepVGGBlock(8, 16, 3, 2, 1, groups=8, use_se=True)
    assert FAMILY.describe_training(strided) == "dwconv3x3/s2+BN + dwconv1x1/s2+BN -> SE"
    assert FAMILY.graph_convs(RepVGGBlockDeploy(16, 16, 3, padding=1, use_se=True)) == 3
    assert "\n" not in FAMILY.description


# ------------------------------------------------------------------------------------- RepVGG-A0 and the official


@pytest.mark.parametrize("deploy", [False, True])
def test_state_dict_matches_official(deploy):
    with torch.device("meta"):
        model = repvgg_a0(deploy=deploy)
    assert keys_of(model) == official_keys(f"repvgg_a0_{'deploy' if deploy else 'train'}")


@pytest.mark.parametrize("deploy", [False, True])
def test_outputs_match_official(deploy):
    reference = json.loads((DATA / "repvgg_a0_outputs.json").read_text())
    model = repvgg_a0(num_classes=10, deploy=deploy).double().eval()
    fill_seeded(model, 1234)
    x = torch.randn(2, 3, 64, 64, generator=make_generator(7), dtype=torch.float64)
    with torch.no_grad():
        got = model(x)
    assert rel_l2(got, torch.tensor(reference["deploy" if deploy else "train"], dtype=torch.float64)) <= TOL


def test_network_folds_block_by_block():
    gen = make_generator(11)
    model = repvgg_a0(num_classes=10)
    init_params(model, gen)
    assert randomize_bn(model, gen) == 22 * 2 + 17  # every block's two branches, and 17 identities
    model = model.double().eval()
    before = snapshot(model)
    folded, report = fold(model)  # the walker, which finds every block through the registry
    assert [b.family for b in report.blocks] == ["repvgg"] * 22 and not report.fused and not report.left
    assert_unchanged(model, before)
    assert sum(isinstance(m, RepVGGBlockDeploy) for m in folded.modules()) == 22
    assert not any(isinstance(m, (RepVGGBlock, nn.BatchNorm2d)) for m in folded.modules())
    x = torch.randn(1, 3, 64, 64, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        assert rel_l2(folded(x), expected) <= TOL
        direct = repvgg_a0(num_classes=10, deploy=True).double().eval()
        direct.load_state_dict(folded.state_dict(), strict=True)
        assert rel_l2(direct(x), expected) <= TOL


def test_registered_model_and_size():
    model = create_model("repvgg_a0", num_classes=10, xvol_layout="dense")
    assert isinstance(model, RepVGG) and model.input_size == (3, 224, 224)
    assert model.xvol_arch == {"name": "repvgg_a0", "config": {"num_classes": 10}}
    for deploy in (False, True):
        with torch.device("meta"):
            built = repvgg_a0(num_classes=10, deploy=deploy)
        values = sum(v.numel() for v in built.state_dict().values())
        assert model_size("repvgg_a0", {"num_classes": 10}, deploy).values == values
    with pytest.raises(ValueError, match="num_classes must be at least 1"):
        model_size("repvgg_a0", {"num_classes": 0})
