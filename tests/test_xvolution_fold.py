"""The X-volution block: deploy form (``fold_xvolution``) vs the eval-mode training form, and the
training form itself vs an independent reference of the spec (design note, section 1)."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from xvol_export import XVolution, XVolutionDeploy, pssa_aggregate
from xvol_export.fold import fold_xvolution
from xvol_export.layers import PixelShiftAttention, pssa_aggregate_by_convs, shift_offsets, shifted_copies
from xvol_export.layers.phase_conv import PhaseConv2d

from helpers import assert_unchanged, init_params, make_generator, randomize_bn, rel_l2, snapshot

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
# q/k weights a bit larger than the default init so that the attention logits are O(1) and the
# softmax is far from uniform: a misplaced 1/sqrt(A) or a wrong offset then shows.
QK_GAIN = 1.5


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------


def make_block(cfg: dict, seed: int, dtype=torch.float32, train: bool = False) -> XVolution:
    gen = make_generator(seed)
    block = XVolution(**cfg)
    init_params(block, gen)
    if block.attention:
        init_params(block.attn.q, gen, gain=QK_GAIN)
        init_params(block.attn.k, gen, gain=QK_GAIN)
    assert randomize_bn(block, gen) == 1 + int(block.dilated_branch) + int(block.attention)
    return block.to(dtype).train(train)


def out_size(n: int, stride: int) -> int:
    return (n - 1) // stride + 1


@st.composite
def block_configs(draw) -> dict:
    mode = draw(st.sampled_from(["one", "divisor", "depthwise"]))
    if mode == "one":
        groups, cin, cout = 1, draw(st.integers(1, 8)), draw(st.integers(1, 8))
    elif mode == "divisor":
        groups = draw(st.integers(2, 4))
        cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    else:
        cin = cout = groups = draw(st.integers(1, 8))
    return {
        "in_channels": cin,
        "out_channels": cout,
        "stride": draw(st.sampled_from([1, 2])),
        "groups": groups,
        "dilation": draw(st.integers(1, 3)),
        "shift": draw(st.integers(1, 3)),
        "attn_channels": draw(st.one_of(st.none(), st.integers(1, 6))),
        "attention": draw(st.booleans()),
        "dilated_branch": draw(st.booleans()),
    }


@st.composite
def fold_cases(draw) -> dict:
    return {
        "cfg": draw(block_configs()),
        "layout": draw(st.sampled_from(["dense", "split"])),
        "dilated_conv": draw(st.sampled_from(["direct", "phases"])),
        "aggregate": draw(st.sampled_from(["slices", "convs"])),
        "batch": draw(st.integers(1, 3)),
        "height": draw(st.integers(1, 13)),
        "width": draw(st.integers(1, 13)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def check_fold(case: dict, dtype: torch.dtype) -> None:
    cfg = case["cfg"]
    block = make_block(cfg, case["seed"], dtype)
    deploy = fold_xvolution(block, case["layout"], case["dilated_conv"], case["aggregate"])

    assert isinstance(deploy, XVolutionDeploy)
    assert isinstance(getattr(deploy, "dconv", None), PhaseConv2d) == (
        deploy.layout == "split" and case["dilated_conv"] == "phases")
    assert deploy.aggregate == case["aggregate"]
    assert not any(isinstance(m, (_BatchNorm, XVolution)) for m in deploy.modules())
    assert all(p.dtype == dtype for p in deploy.parameters())
    assert deploy.layout == (case["layout"] if cfg["dilated_branch"] else "dense")
    assert hasattr(deploy, "proj") == cfg["attention"]

    gen = make_generator(case["seed"] + 1)
    x = torch.randn(case["batch"], cfg["in_channels"], case["height"], case["width"], generator=gen, dtype=dtype)
    with torch.no_grad():
        ref = block(x)
        out = deploy(x)
    expected = (case["batch"], cfg["out_channels"], out_size(case["height"], cfg["stride"]),
                out_size(case["width"], cfg["stride"]))
    assert tuple(ref.shape) == expected
    assert tuple(out.shape) == expected
    assert out.dtype == dtype
    err = rel_l2(out, ref)
    assert err <= TOL[dtype], f"rel L2 {err:.3e} > {TOL[dtype]:.0e} for {case}"


# --------------------------------------------------------------------------------------------
# property-based equivalence
# --------------------------------------------------------------------------------------------


@settings(max_examples=120)
@given(case=fold_cases())
def test_fold_matches_eval_form_float32(case):
    check_fold(case, torch.float32)


@settings(max_examples=120)
@given(case=fold_cases())
def test_fold_matches_eval_form_float64(case):
    check_fold(case, torch.float64)


@pytest.mark.parametrize("layout", ["dense", "split"])
@pytest.mark.parametrize("attention,dilated_branch", list(itertools.product([True, False], repeat=2)))
def test_fold_with_non_affine_batchnorms(layout, attention, dilated_branch):
    """BatchNorms with ``affine=False`` (gamma 1, beta 0) fold too."""
    cfg = dict(in_channels=6, out_channels=4, stride=2, groups=2, dilation=2, shift=1,
               attention=attention, dilated_branch=dilated_branch)
    block = make_block(cfg, 11, torch.float64)
    gen = make_generator(12)
    for name in ("conv_bn", "dconv_bn", "attn_bn"):
        if hasattr(block, name):
            bn = nn.BatchNorm2d(4, affine=False).double()
            randomize_bn(bn, gen)
            setattr(block, name, bn)
    block.eval()
    deploy = fold_xvolution(block, layout)
    x = torch.randn(2, 6, 9, 7, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        assert rel_l2(deploy(x), block(x)) <= 1e-12


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_deploy_structure_per_layout(dilation):
    cfg = dict(in_channels=4, out_channels=6, stride=2, groups=2, dilation=dilation, shift=2, attn_channels=3)
    block = make_block(cfg, 21)
    dense = fold_xvolution(block, "dense")
    assert isinstance(dense.static, nn.Conv2d)
    size = 4 * dilation + 1
    assert dense.static.kernel_size == (size, size)
    assert dense.static.padding == (2 * dilation, 2 * dilation)
    assert dense.static.stride == (2, 2) and dense.static.groups == 2 and dense.static.bias is not None
    assert not hasattr(dense, "conv") and not hasattr(dense, "dconv")

    split = fold_xvolution(block, "split")
    assert split.conv.kernel_size == (3, 3) and split.conv.padding == (1, 1) and split.conv.bias is not None
    assert split.dconv.kernel_size == (5, 5) and split.dconv.dilation == (dilation, dilation)
    assert split.dconv.padding == (2 * dilation, 2 * dilation)
    assert not hasattr(split, "static")

    for deploy in (dense, split):
        assert deploy.proj.kernel_size == (1, 1) and deploy.proj.stride == (2, 2)
        assert deploy.proj.out_channels == 2 * 3 + 6 and deploy.proj.bias is None


@pytest.mark.parametrize("layout", ["dense", "split"])
@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (1, 4), (2, 2)])
def test_no_attention_no_dilated_branch_is_one_conv(layout, stride, groups):
    cfg = dict(in_channels=4, out_channels=8, stride=stride, groups=groups, attention=False, dilated_branch=False)
    block = make_block(cfg, 31)
    deploy = fold_xvolution(block, layout)
    children = dict(deploy.named_children())
    assert list(children) == ["static"]
    static = children["static"]
    assert type(static) is nn.Conv2d
    assert static.kernel_size == (3, 3) and static.padding == (1, 1)
    assert static.stride == (stride, stride) and static.groups == groups and static.bias is not None
    assert not hasattr(deploy, "proj")
    assert deploy.layout == "dense"
    x = torch.randn(2, 4, 9, 8, generator=make_generator(32))
    with torch.no_grad():
        ref = block(x)
        assert torch.equal(deploy(x), static(x))  # literally the one conv
    assert rel_l2(deploy(x).detach(), ref) <= 1e-5


# --------------------------------------------------------------------------------------------
# PSSA against an independent naive reference
# --------------------------------------------------------------------------------------------


def naive_pssa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shift: int) -> torch.Tensor:
    """Explicit loops over pixels and the nine offsets; zero fill; softmax over offsets; / sqrt(A)."""
    n_batch, attn_channels, height, width = q.shape
    out = torch.zeros(n_batch, v.shape[1], height, width, dtype=q.dtype)
    offsets = [(shift * i, shift * j) for i in (-1, 0, 1) for j in (-1, 0, 1)]
    for n in range(n_batch):
        for y in range(height):
            for x in range(width):
                logits, values = [], []
                for u, w in offsets:
                    yy, xx = y + u, x + w
                    inside = 0 <= yy < height and 0 <= xx < width
                    kk = k[n, :, yy, xx] if inside else torch.zeros(attn_channels, dtype=q.dtype)
                    vv = v[n, :, yy, xx] if inside else torch.zeros(v.shape[1], dtype=q.dtype)
                    logits.append(float((q[n, :, y, x] * kk).sum()) / math.sqrt(attn_channels))
                    values.append(vv)
                top = max(logits)
                exps = [math.exp(logit - top) for logit in logits]
                total = sum(exps)
                for e, vv in zip(exps, values, strict=True):
                    out[n, :, y, x] += (e / total) * vv
    return out


@pytest.mark.parametrize("shift", [1, 2, 3])
@pytest.mark.parametrize("height,width", [(5, 4), (1, 3), (2, 2)])
def test_pssa_aggregate_matches_naive_reference(shift, height, width):
    gen = make_generator(40 + shift * 10 + height + width)
    a, o = 3, 4
    q = 1.5 * torch.randn(2, a, height, width, generator=gen, dtype=torch.float64)
    k = 1.5 * torch.randn(2, a, height, width, generator=gen, dtype=torch.float64)
    v = torch.randn(2, o, height, width, generator=gen, dtype=torch.float64)
    ref = naive_pssa(q, k, v, shift)
    for aggregate in (pssa_aggregate, pssa_aggregate_by_convs):
        out = aggregate(q, k, v, shift, 1.0 / math.sqrt(a))
        assert out.shape == ref.shape
        assert rel_l2(out, ref) <= 1e-12
        # The scale matters: without it the result differs (the reference is sensitive to it).
        assert rel_l2(aggregate(q, k, v, shift), ref) > 1e-6


@settings(max_examples=60)
@given(channels=st.integers(1, 6), shift=st.integers(1, 4), height=st.integers(1, 11), width=st.integers(1, 11),
       seed=st.integers(0, 2**31 - 1))
def test_shifted_copies_are_exact_shifts(channels, shift, height, width, seed):
    """The one-hot grouped conv copies pixels bit for bit, in the order of ``shift_offsets``, zeros outside."""
    t = torch.randn(2, channels, height, width, generator=make_generator(seed))
    copies = shifted_copies(t, shift)
    assert copies.shape == (2, channels, 9, height, width)
    padded = F.pad(t, (shift,) * 4)
    for index, (u, w) in enumerate(shift_offsets(shift)):
        expected = padded[:, :, shift + u: shift + u + height, shift + w: shift + w + width]
        assert torch.equal(copies[:, :, index], expected), (index, u, w)


@pytest.mark.parametrize("stride", [1, 2])
def test_pixel_shift_attention_module_matches_naive_reference(stride):
    gen = make_generator(50 + stride)
    attn = PixelShiftAttention(5, 4, 3, stride=stride, shift=1).double()
    init_params(attn, gen, gain=QK_GAIN)
    x = torch.randn(2, 5, 7, 6, generator=gen, dtype=torch.float64)
    xs = x[:, :, ::stride, ::stride]

    def proj(weight):
        return torch.einsum("oc,nchw->nohw", weight[:, :, 0, 0], xs)

    ref = naive_pssa(proj(attn.q.weight.detach()), proj(attn.k.weight.detach()), proj(attn.v.weight.detach()), 1)
    with torch.no_grad():
        out = attn(x)
    assert rel_l2(out, ref) <= 1e-12


def spec_xvolution(block: XVolution, x: torch.Tensor) -> torch.Tensor:
    """The eval-mode training form written from the design note, with the naive PSSA."""

    def bn(z, m):
        a = (m.weight if m.weight is not None else 1.0) / torch.sqrt(m.running_var + m.eps)
        c = (m.bias if m.bias is not None else 0.0) - m.running_mean * a
        return a.reshape(1, -1, 1, 1) * z + c.reshape(1, -1, 1, 1)

    s, g, d = block.stride, block.groups, block.dilation
    y = bn(F.conv2d(x, block.conv.weight, stride=s, padding=1, groups=g), block.conv_bn)
    if block.dilated_branch:
        y = y + bn(F.conv2d(x, block.dconv.weight, stride=s, padding=2 * d, dilation=d, groups=g), block.dconv_bn)
    if block.attention:
        xs = x[:, :, ::s, ::s]
        projections = (block.attn.q, block.attn.k, block.attn.v)
        q, k, v = (torch.einsum("oc,nchw->nohw", m.weight[:, :, 0, 0], xs) for m in projections)
        y = y + bn(naive_pssa(q, k, v, block.shift), block.attn_bn)
    return y


@pytest.mark.parametrize(
    "cfg",
    [
        dict(in_channels=4, out_channels=4),
        dict(in_channels=4, out_channels=6, stride=2, groups=2, dilation=3, shift=2, attn_channels=2),
        dict(in_channels=3, out_channels=3, groups=3, dilation=1, shift=3, dilated_branch=False),
        dict(in_channels=2, out_channels=5, stride=2, attention=False),
    ],
)
def test_training_form_matches_spec(cfg):
    block = make_block(cfg, 60, torch.float64).eval()
    x = torch.randn(2, cfg["in_channels"], 7, 6, generator=make_generator(61), dtype=torch.float64)
    with torch.no_grad():
        assert rel_l2(block(x), spec_xvolution(block, x)) <= 1e-12


# --------------------------------------------------------------------------------------------
# fold leaves its input alone; config round trip; checkpoint names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("layout", ["dense", "split"])
def test_fold_does_not_mutate_block(train, layout):
    cfg = dict(in_channels=4, out_channels=4, stride=1, dilation=2, shift=1)
    block = make_block(cfg, 70, train=train)
    snap = snapshot(block)
    deploy = fold_xvolution(block, layout)
    assert_unchanged(block, snap)
    assert block.training is train
    assert all(m.training is train for m in block.modules())
    # The fold uses running statistics whatever the mode: it equals the eval form.
    block.eval()
    x = torch.randn(2, 4, 8, 9, generator=make_generator(71))
    with torch.no_grad():
        assert rel_l2(deploy(x), block(x)) <= 1e-5
    # Deploy parameters are fresh tensors, not views of the block's.
    block_ptrs = {p.data_ptr() for p in block.parameters()}
    assert not any(p.data_ptr() in block_ptrs for p in deploy.parameters())


CONFIGS = [
    dict(in_channels=4, out_channels=4),
    dict(in_channels=6, out_channels=3, stride=2, groups=3, dilation=3, shift=2, attn_channels=5),
    dict(in_channels=8, out_channels=8, groups=8, dilation=1, attention=False),
    dict(in_channels=3, out_channels=7, dilated_branch=False),
    dict(in_channels=5, out_channels=2, attention=False, dilated_branch=False),
]


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("cfg", CONFIGS)
def test_config_rebuilds_identical_state_dict(cfg):
    block = make_block(cfg, 80)
    config = block.config()
    assert set(config) == {"in_channels", "out_channels", "stride", "groups", "dilation", "shift",
                           "attn_channels", "attention", "dilated_branch"}
    for key, value in cfg.items():
        assert config[key] == value
    rebuilt = XVolution(**config)
    assert list(rebuilt.state_dict()) == list(block.state_dict())
    assert shapes(rebuilt) == shapes(block)
    rebuilt.load_state_dict(block.state_dict())
    block.eval(), rebuilt.eval()
    x = torch.randn(1, cfg["in_channels"], 6, 5, generator=make_generator(81))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), block(x))
    # The repr carries every constructor argument.
    for key, value in config.items():
        assert f"{key}={value}" in block.extra_repr()


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("layout,dilated_conv,aggregate", [
    ("dense", "direct", "slices"), ("split", "direct", "slices"), ("split", "phases", "convs")])
def test_deploy_config_rebuilds_identical_state_dict(cfg, layout, dilated_conv, aggregate):
    deploy = fold_xvolution(make_block(cfg, 82), layout, dilated_conv, aggregate)
    rebuilt = XVolutionDeploy(**deploy.config())
    assert rebuilt.config() == deploy.config()
    assert shapes(rebuilt) == shapes(deploy)
    rebuilt.load_state_dict(deploy.state_dict())
    x = torch.randn(1, cfg["in_channels"], 6, 5, generator=make_generator(83))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), deploy(x))


def test_checkpoint_contract_names():
    block = XVolution(8, 8)
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = (
        ["conv.weight"] + [f"conv_bn.{s}" for s in bn]
        + ["dconv.weight"] + [f"dconv_bn.{s}" for s in bn]
        + ["attn.q.weight", "attn.k.weight", "attn.v.weight"] + [f"attn_bn.{s}" for s in bn]
    )
    assert sorted(block.state_dict()) == sorted(expected)
    assert block.attn_channels == 4  # max(4, C // 4)
    assert XVolution(32, 8).attn_channels == 8
    assert sorted(XVolution(8, 8, attention=False, dilated_branch=False).state_dict()) == sorted(
        ["conv.weight"] + [f"conv_bn.{s}" for s in bn]
    )


# --------------------------------------------------------------------------------------------
# negative controls: the checks can fail
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dense", "split"])
@pytest.mark.parametrize("target", ["static", "proj"])
def test_perturbed_deploy_weight_fails_tolerance(layout, target):
    cfg = dict(in_channels=4, out_channels=4, stride=1, dilation=2, shift=1)
    block = make_block(cfg, 90).eval()
    deploy = fold_xvolution(block, layout)
    x = torch.randn(2, 4, 9, 7, generator=make_generator(91))
    with torch.no_grad():
        ref = block(x)
        assert rel_l2(deploy(x), ref) <= 1e-5
        if target == "static":
            weight = (deploy.static if layout == "dense" else deploy.conv).weight
            weight[0, 0, weight.shape[-2] // 2, weight.shape[-1] // 2] += 0.01
        else:
            deploy.proj.weight[0, 0, 0, 0] += 0.05  # one q row entry: only moves the softmax
        err = rel_l2(deploy(x), ref)
    assert err > 1e-5, f"perturbation went unnoticed (rel L2 {err:.2e})"


def test_randomized_batchnorm_exposes_fold_bugs():
    """A fold that ignores running_mean is exact under default BN statistics and wrong under random ones."""
    cfg = dict(in_channels=4, out_channels=4)

    def buggy_fold(block):
        broken = copy.deepcopy(block)
        for m in broken.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.zero_()
        return fold_xvolution(broken, "dense")

    x = torch.randn(2, 4, 7, 7, generator=make_generator(101))
    default = XVolution(**cfg).eval()
    randomized = make_block(cfg, 100).eval()
    with torch.no_grad():
        assert rel_l2(buggy_fold(default)(x), default(x)) <= 1e-5
        assert rel_l2(buggy_fold(randomized)(x), randomized(x)) > 1e-3
