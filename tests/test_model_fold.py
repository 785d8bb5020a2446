"""Whole-model fold (``xvol_export.fold``) on the reference ResNets, randomized BatchNorm everywhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from xvol_export import XVolution, XVolutionDeploy, create_model, fold
from xvol_export.fold import set_runtime_options
from xvol_export.fold.cost import choose_layout
from xvol_export.fold.profile import profile_model

from helpers import assert_unchanged, count_instances, init_params, make_generator, randomize_bn, rel_l2, snapshot

TOL = 1e-5

# (id, architecture, config, input shape): odd / non-square sizes, batch > 1.
CASES = [
    ("tiny", "xvol_resnet_tiny", {}, (2, 3, 33, 27)),
    ("tiny-all-stages", "xvol_resnet_tiny", {"stages": (1, 2, 3)}, (2, 3, 32, 32)),
    ("tiny-all-stages-d1", "xvol_resnet_tiny", {"stages": (1, 2, 3), "xvol_kwargs": {"dilation": 1}}, (3, 3, 21, 34)),
    ("tiny-shift2", "xvol_resnet_tiny", {"xvol_kwargs": {"shift": 2}}, (2, 3, 31, 29)),
    ("tiny-stage2-d3-shift3", "xvol_resnet_tiny", {"stages": (2,), "xvol_kwargs": {"dilation": 3, "shift": 3}},
     (2, 3, 35, 30)),
    ("tiny-plain-conv", "xvol_resnet_tiny", {"xvol_kwargs": {"attention": False, "dilated_branch": False}},
     (2, 3, 25, 33)),
    ("tiny-no-attention", "xvol_resnet_tiny", {"stages": (1, 3), "xvol_kwargs": {"attention": False}}, (2, 3, 32, 24)),
    ("resnet18", "xvol_resnet18", {}, (2, 3, 64, 48)),
    ("resnet18-odd-d1", "xvol_resnet18", {"stages": (2, 3), "xvol_kwargs": {"dilation": 1}}, (2, 3, 65, 47)),
]
CASE_IDS = [c[0] for c in CASES]


def build(arch: str, config: dict, seed: int = 0, train: bool = False) -> nn.Module:
    gen = make_generator(seed)
    model = create_model(arch, **config)
    init_params(model, gen)
    n_bn = randomize_bn(model, gen)
    assert n_bn == count_instances(model, _BatchNorm) > 0
    return model.train(train)


def inputs(shape, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=make_generator(seed))


def xvol_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, XVolution)]


def bn_outside_xvolution(model: nn.Module) -> list[str]:
    blocks = xvol_names(model)
    return [
        name for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and not any(name.startswith(b + ".") for b in blocks)
    ]


def expected_auto(model: nn.Module, block_name: str) -> str:
    dilated = model.get_submodule(block_name).dilated_branch
    d = model.get_submodule(block_name).dilation
    return "dense" if not dilated or d == 1 else "split"


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# equivalence and structure
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dense", "split", "auto"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fold_equivalence_and_structure(case, layout):
    _, arch, config, shape = case
    model = build(arch, config).eval()
    deploy, report = fold(model, layout)
    x = inputs(shape)
    with torch.no_grad():
        ref = model(x)
        out = deploy(x)

    # Same function: relative L2 and top-1 agreement.
    assert out.shape == ref.shape
    err = rel_l2(out, ref)
    assert err <= TOL, f"rel L2 {err:.3e}"
    assert torch.equal(out.argmax(1), ref.argmax(1))

    # Deploy structure: no BatchNorm, no training-form block, one deploy block per XVolution.
    blocks = xvol_names(model)
    assert blocks, "the case must contain X-volution blocks"
    assert count_instances(deploy, _BatchNorm) == 0
    assert count_instances(deploy, XVolution) == 0
    assert [n for n, m in deploy.named_modules() if isinstance(m, XVolutionDeploy)] == blocks
    assert deploy.training is False and not any(m.training for m in deploy.modules())

    # Report: every block, with the layout the deploy module really has.
    assert report.layout == layout
    assert [b.name for b in report.blocks] == blocks
    for block in report.blocks:
        module = deploy.get_submodule(block.name)
        assert block.layout == module.layout
        if layout == "auto":
            assert block.layout == expected_auto(model, block.name), block.reason
        elif model.get_submodule(block.name).dilated_branch:
            assert block.layout == layout
        else:
            assert block.layout == "dense"
        assert block.reason
    assert report.layouts == {b.name: deploy.get_submodule(b.name).layout for b in report.blocks}

    # Every BatchNorm outside the blocks follows a conv and was fused into it.
    outside = bn_outside_xvolution(model)
    assert len(report.fused_conv_bn) == len(outside)
    assert sorted(bn for _, bn in report.fused_conv_bn) == sorted(outside)
    for conv_name, bn_name in report.fused_conv_bn:
        assert isinstance(model.get_submodule(conv_name), nn.Conv2d)
        fused = deploy.get_submodule(conv_name)
        assert type(fused) is nn.Conv2d and fused.bias is not None
        assert isinstance(deploy.get_submodule(bn_name), nn.Identity)
    assert report.remaining_batchnorms == []
    assert report.forced_eval is False
    assert report.params_before == sum(p.numel() for p in model.parameters())
    assert report.params_after == sum(p.numel() for p in deploy.parameters())


@pytest.mark.parametrize("dilation,expected", [(1, "dense"), (2, "split"), (3, "split")])
def test_auto_layout_follows_cost_model(dilation, expected):
    model = build("xvol_resnet_tiny", {"stages": (1, 2, 3), "xvol_kwargs": {"dilation": dilation}}).eval()
    prof = profile_model(model, (1, *model.input_size))
    _, report = fold(model, "auto")
    assert len(report.blocks) == 6
    for block in report.blocks:
        cfg = model.get_submodule(block.name).config()
        chosen, reason = choose_layout(cfg, tuple(prof.output_shapes[block.name][-2:]))
        assert block.layout == chosen == expected
        assert block.reason == reason
        assert block.macs_before is not None and block.macs_after is not None
        # BatchNorm is not counted: split keeps the same multiply-adds; dense (d=1) drops the 3x3 taps
        # into the 5x5 one (25 instead of 9 + 25 taps).
        if block.layout == "split":
            assert block.macs_after == block.macs_before
        else:
            assert block.macs_after < block.macs_before


def test_auto_layout_without_dilated_branch_is_dense():
    model = build("xvol_resnet_tiny", {"xvol_kwargs": {"dilated_branch": False}}).eval()
    deploy, report = fold(model, "auto")
    assert report.layouts and set(report.layouts.values()) == {"dense"}
    for name in report.layouts:
        assert deploy.get_submodule(name).static.kernel_size == (3, 3)


@pytest.mark.parametrize("layout", ["dense", "split"])
def test_fold_float64_model_is_exact(layout):
    """In float64 the whole-model fold is exact to rounding (1e-12), and keeps the dtype."""
    model = build("xvol_resnet_tiny", {"stages": (1, 2, 3), "xvol_kwargs": {"shift": 2}}).double().eval()
    deploy, _ = fold(model, layout)
    assert all(p.dtype == torch.float64 for p in deploy.parameters())
    x = inputs((2, 3, 27, 22)).double()
    with torch.no_grad():
        ref, out = model(x), deploy(x)
    assert out.dtype == torch.float64
    assert rel_l2(out, ref) <= 1e-12


# --------------------------------------------------------------------------------------------
# the input model is left alone; folding is idempotent
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("arch,config,shape", [
    ("xvol_resnet_tiny", {"stages": (1, 2, 3)}, (2, 3, 31, 26)),
    ("xvol_resnet18", {}, (2, 3, 64, 48)),
], ids=["tiny", "resnet18"])
def test_fold_does_not_mutate_input(arch, config, shape, train):
    model = build(arch, config, train=train)
    snap = snapshot(model)
    deploy, report = fold(model, "auto")
    assert_unchanged(model, snap)
    assert model.training is train
    assert report.forced_eval is train
    # A note explains the forced eval mode, and only then.
    assert any("training mode" in n for n in report.notes) is train
    # Nothing is shared between the input and the deploy copy.
    ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert not any(t.data_ptr() in ptrs for t in deploy.state_dict().values())
    # Folding used the running statistics: the deploy model equals the eval-mode input.
    model.eval()
    x = inputs(shape)
    with torch.no_grad():
        assert rel_l2(deploy(x), model(x)) <= TOL
    assert_unchanged(model, (snap[0], {k: False for k in snap[1]}))


@pytest.mark.parametrize("layout", ["dense", "split", "auto"])
def test_fold_of_folded_model_is_noop(layout):
    model = build("xvol_resnet_tiny", {"stages": (2, 3)}).eval()
    deploy, _ = fold(model, layout)
    snap = snapshot(deploy)
    again, report = fold(deploy, layout)
    assert_unchanged(deploy, snap)
    assert report.blocks == [] and report.fused_conv_bn == [] and report.remaining_batchnorms == []
    assert report.forced_eval is False
    assert list(again.state_dict()) == list(deploy.state_dict())
    for key, value in deploy.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert [type(m) for m in again.modules()] == [type(m) for m in deploy.modules()]
    x = inputs((2, 3, 29, 30))
    with torch.no_grad():
        assert torch.equal(again(x), deploy(x))


# --------------------------------------------------------------------------------------------
# create_model(deploy=True) is the same architecture as fold's output
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dense", "split"])
@pytest.mark.parametrize("arch,config,shape", [
    ("xvol_resnet_tiny", {}, (2, 3, 32, 32)),
    ("xvol_resnet_tiny", {"stages": (1, 2, 3), "xvol_kwargs": {"dilation": 3, "shift": 2}}, (1, 3, 27, 31)),
    ("xvol_resnet_tiny", {"xvol_kwargs": {"attention": False, "dilated_branch": False}}, (2, 3, 32, 30)),
    ("xvol_resnet18", {"stages": (2, 3)}, (2, 3, 64, 48)),
], ids=["tiny", "tiny-all-d3", "tiny-plain", "resnet18"])
def test_create_model_deploy_matches_fold(arch, config, shape, layout):
    model = build(arch, config).eval()
    folded, _ = fold(model, layout)
    direct = create_model(arch, deploy=True, xvol_layout=layout, **config)
    assert list(direct.state_dict()) == list(folded.state_dict())
    assert shapes(direct) == shapes(folded)
    assert count_instances(direct, _BatchNorm) == 0
    # Same wiring, not just the same names: fold's weights in the direct build give fold's output.
    direct.load_state_dict(folded.state_dict())
    direct.eval()
    x = inputs(shape)
    with torch.no_grad():
        assert torch.equal(direct(x), folded(x))
        assert rel_l2(direct(x), model(x)) <= TOL


# --------------------------------------------------------------------------------------------
# ResNet-50 (structure at a small input), negative control, known limitation
# --------------------------------------------------------------------------------------------


def test_resnet50_fold_small_input():
    # in float64: through 50 layers of random statistics, fp32 rounding alone reaches 1e-5
    model = build("xvol_resnet50", {}).eval().double()
    deploy, report = fold(model, "auto", input_shape=(1, 3, 64, 64))
    assert count_instances(deploy, _BatchNorm) == 0
    assert count_instances(deploy, XVolution) == 0
    blocks = xvol_names(model)
    assert blocks == [f"layer3.{i}.conv2" for i in range(6)]
    assert [b.name for b in report.blocks] == blocks
    assert count_instances(deploy, XVolutionDeploy) == 6
    assert len(report.fused_conv_bn) == len(bn_outside_xvolution(model)) == 47
    assert report.remaining_batchnorms == []
    x = inputs((1, 3, 64, 64)).double()
    with torch.no_grad():
        ref, out = model(x), deploy(x)
    assert rel_l2(out, ref) <= 1e-12
    assert torch.equal(out.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("target", ["fused_conv", "xvol_proj"])
def test_perturbed_deploy_model_fails_tolerance(target):
    """Negative control: one changed deploy parameter is far above the tolerance."""
    model = build("xvol_resnet_tiny", {}).eval()
    deploy, report = fold(model, "split")
    x = inputs((2, 3, 32, 32))
    with torch.no_grad():
        ref = model(x)
        assert rel_l2(deploy(x), ref) <= TOL
        if target == "fused_conv":
            conv_name = report.fused_conv_bn[-1][0]
            deploy.get_submodule(conv_name).bias[0] += 0.05
        else:
            deploy.get_submodule(report.blocks[0].name).proj.weight[-1, 0, 0, 0] += 0.05
        err = rel_l2(deploy(x), ref)
    assert err > TOL, f"perturbation went unnoticed (rel L2 {err:.2e})"


def test_fold_rejects_unknown_layout():
    with pytest.raises(ValueError):
        fold(build("xvol_resnet_tiny", {}), "fastest")


def test_fold_of_bare_xvolution_block():
    """``fold`` promises that every XVolution becomes an XVolutionDeploy; a root block is one too."""
    block = XVolution(4, 4)
    randomize_bn(block, make_generator(5))
    block.eval()
    deploy, report = fold(block, "split")
    assert len(report.blocks) == 1
    assert isinstance(deploy, XVolutionDeploy)
    assert count_instances(deploy, _BatchNorm) == 0


@pytest.mark.parametrize("arch,config,shape", [
    ("xvol_resnet_tiny", {"stages": (1, 2, 3), "xvol_kwargs": {"dilation": 3}}, (2, 3, 31, 26)),
    ("xvol_resnet18", {"stages": (2, 3)}, (1, 3, 65, 47)),
], ids=["tiny-d3", "resnet18-odd"])
@pytest.mark.parametrize("options", [{"dilated_conv": "phases"}, {"aggregate": "convs"},
                                     {"dilated_conv": "phases", "aggregate": "convs"}], ids=["phases", "convs", "both"])
def test_runtime_options_keep_the_model(arch, config, shape, options):
    model = build(arch, config).eval()
    plain, _ = fold(model, "split")
    fast, report = fold(model, "split", **options)
    assert all(b.layout == "split" for b in report.blocks)
    blocks = [m for m in fast.modules() if isinstance(m, XVolutionDeploy)]
    assert blocks and all(b.config().items() >= options.items() for b in blocks)
    assert {k: torch.equal(v, plain.state_dict()[k]) for k, v in fast.state_dict().items()} == {
        k: True for k in plain.state_dict()}
    x = inputs(shape)
    with torch.no_grad():
        ref = model(x)
        assert rel_l2(fast(x), ref) <= TOL
        assert rel_l2(fast(x), plain(x)) <= TOL
    # The MAC count sees the same convs either way.
    assert profile_model(fast, shape).total_macs == profile_model(plain, shape).total_macs

    # Switching back keeps the weights; the input is untouched unless asked.
    back = set_runtime_options(fast, dilated_conv="direct", aggregate="slices")
    assert all(b.config().items() >= options.items() for b in blocks)
    assert all((m.dilated_conv, m.aggregate) == ("direct", "slices")
               for m in back.modules() if isinstance(m, XVolutionDeploy))
    with torch.no_grad():
        assert torch.equal(back(x), plain(x))
    assert set_runtime_options(back, **options, inplace=True) is back
    assert all(m.config().items() >= options.items() for m in back.modules() if isinstance(m, XVolutionDeploy))


def test_unknown_runtime_options_are_refused():
    model = build("xvol_resnet_tiny", {}).eval()
    deploy, _ = fold(model, "split")
    with pytest.raises(ValueError, match="dilated_conv"):
        set_runtime_options(deploy, dilated_conv="winograd")
    with pytest.raises(ValueError, match="aggregate"):
        set_runtime_options(deploy, aggregate="einsum")
    with pytest.raises(ValueError, match="dilated_conv"):
        fold(model, "split", dilated_conv="winograd")
    with pytest.raises(ValueError, match="aggregate"):
        fold(model, "split", aggregate="einsum")
